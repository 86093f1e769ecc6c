"""Hostile manifests and command lines: each gets one positioned message and exit 1 (2 for
usage), never a traceback or 'internal error'."""
from __future__ import annotations


from conftest import aamctl

MODEL = "apiVersion: aam/v1alpha1\nkind: Model\nmetadata: {name: %s}\nspec: %s\n"


def _clean(p, code=1):
    assert p.returncode == code, (p.returncode, p.stdout, p.stderr)
    assert "internal error" not in p.stderr and "Traceback" not in p.stderr


def test_deep_nesting_is_positioned_and_other_files_still_validated(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "a-flow.yaml").write_text(MODEL % ("a", "{embeddingDim: " + "[" * 10000 + "]" * 10000 + "}"))
    (folder / "b-block.yaml").write_text("a:\n" + "".join("  " * i + "- \n" for i in range(1, 300)))
    (folder / "c-anchors.yaml").write_text("x0: &a0 [1]\n" + "".join(f"x{i}: &a{i} [*a{i - 1}]\n" for i in range(1, 300)))
    (folder / "d-other.yaml").write_text(MODEL % ("d", "{embeddingDim: 12.5}"))
    p = aamctl(tmp_path, "validate", "-f", str(folder), check=False)
    _clean(p)
    lines = p.stderr.strip().splitlines()
    assert any(l.startswith(f"{folder / 'a-flow.yaml'}:4:") and "nested more than 64 levels" in l for l in lines), lines
    assert any(l.startswith(f"{folder / 'b-block.yaml'}:") and "nested more than 64 levels" in l for l in lines)
    assert any(l.startswith(f"{folder / 'c-anchors.yaml'}:") and "nested more than 64 levels" in l for l in lines)
    # the healthy-looking file is still validated, and its own problem reported
    assert any(l.startswith(f"{folder / 'd-other.yaml'}:4:") and "expected an integer" in l for l in lines), lines


def test_time_limits_explain_yaml_base_60_and_the_forms(tmp_path):
    f = tmp_path / "hw.yaml"
    f.write_text("apiVersion: aam/v1alpha1\nkind: HardwareProfile\nmetadata: {name: h}\nspec:\n  accelerator: cpu\n"
                 "  slurm:\n    defaultTimeLimit: 12:00:00\n    maxTimeLimit: 2 days\n")
    p = aamctl(tmp_path, "validate", "-f", str(f), check=False)
    _clean(p)
    first, second = p.stderr.strip().splitlines()
    assert first.startswith(f"{f}:7:") and "found number 43200" in first and "'12:00:00'" in first
    assert "HH:MM:SS" in first and "base 60" in first
    assert second.startswith(f"{f}:8:") and "spec.slurm.maxTimeLimit:" in second and "found string '2 days'" in second
    assert "maxTimeLimit.spec" not in second and "null" not in second


def test_run_time_limit_either_or_reports_the_real_expectation(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("apiVersion: aam/v1alpha1\nkind: Run\nmetadata: {name: r}\nspec:\n  stage: pretrain\n"
                 "  datasetRef: d\n  modelRef: m\n  executor:\n    type: slurm\n    slurm: {timeLimit: 90:00}\n")
    p = aamctl(tmp_path, "validate", "-f", str(f), check=False)
    _clean(p)
    assert "spec.executor.slurm.timeLimit: expected a SLURM time limit as a quoted string" in p.stderr
    assert "'90:00'" in p.stderr


def test_non_utf8_stdin_is_the_same_clean_message_as_a_file(tmp_path):
    raw = b"apiVersion: aam/v1alpha1\nkind: Model\nmetadata: {name: m\xff}\nspec: {}\n"
    f = tmp_path / "latin1.yaml"
    f.write_bytes(raw)
    import subprocess

    from conftest import AAMCTL
    p_stdin = subprocess.run([*AAMCTL, "--home", str(tmp_path), "validate", "-f", "-"], input=raw, capture_output=True)
    p_file = subprocess.run([*AAMCTL, "--home", str(tmp_path), "validate", "-f", str(f)], capture_output=True)
    for p, label in ((p_stdin, "<stdin>"), (p_file, str(f))):
        err = p.stderr.decode()
        assert p.returncode == 1 and "internal error" not in err and "Traceback" not in err, err
        assert err.startswith(f"{label}:3: not UTF-8 text (byte 0xff"), err


def test_a_reference_to_an_object_of_another_kind_says_which(tmp_path):
    f = tmp_path / "m.yaml"
    f.write_text("apiVersion: aam/v1alpha1\nkind: Dataset\nmetadata: {name: oral}\nspec: {table: t.biom}\n---\n"
                 "apiVersion: aam/v1alpha1\nkind: Run\nmetadata: {name: r}\n"
                 "spec: {stage: pretrain, datasetRef: oral, modelRef: oral}\n")
    p = aamctl(tmp_path, "validate", "-f", str(f), check=False)
    _clean(p)
    assert f"{f}:9:" in p.stderr and "Model 'oral' not found; 'oral' is a Dataset" in p.stderr


def test_name_with_a_trailing_newline_is_refused_before_anything_is_created(tmp_path):
    f = tmp_path / "m.yaml"
    f.write_text(MODEL % ('"r-nl\\n"', "{}"))
    p = aamctl(tmp_path / "home", "apply", "-f", str(f), check=False)
    _clean(p)
    assert "is not a valid name" in p.stderr
    assert not (tmp_path / "home" / "runs").exists()


def test_bad_selectors_and_tail_are_usage_errors(tmp_path):
    f = tmp_path / "m.yaml"
    f.write_text(MODEL % ("m", "{}"))
    aamctl(tmp_path, "apply", "-f", str(f))
    for selector in ("===", "a=b=c", "!a=b", ",", "a,,b", "k=v w"):
        for args in (["get", "models", "-l", selector], ["get", "runs", "-l", selector]):
            p = aamctl(tmp_path, *args, check=False)
            _clean(p, 2)
            assert "invalid label selector" in p.stderr, (selector, p.stderr)
    for good in ("a", "!a", "a=b", "a==b", "a!=b", "team=oral,stage!=x"):
        aamctl(tmp_path, "get", "models", "-l", good)
    p = aamctl(tmp_path, "logs", "anything", "--tail", "-5", check=False)
    _clean(p, 2)
    assert "--tail" in p.stderr


def test_applying_a_dataset_alone_checks_its_files(tmp_path):
    (tmp_path / "a-folder").mkdir()
    f = tmp_path / "ds.yaml"
    f.write_text("apiVersion: aam/v1alpha1\nkind: Dataset\nmetadata: {name: d}\n"
                 "spec:\n  table: a-folder\n  tree: missing/tree.nwk\n")
    p = aamctl(tmp_path / "home", "apply", "-f", str(f), check=False)
    _clean(p)
    lines = p.stderr.strip().splitlines()
    assert lines[0].startswith(f"{f}:5:") and "is a folder, not a file" in lines[0]
    assert lines[1].startswith(f"{f}:6:") and "no such file" in lines[1]
    assert "No datasets" in aamctl(tmp_path / "home", "get", "datasets").stdout
