"""Manifest API: every bad manifest gives one clear message at the right line; good ones resolve."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from aamctl.errors import AamError
from aamctl.parse import load_paths, parse_text
from aamctl.resolve import MemoryStore
from aamctl.validate import validate
from aamctl.schema import explain

ROOT = Path(__file__).resolve().parent.parent
BAD = sorted((ROOT / "tests" / "bad_manifests").glob("*.yaml"))
from conftest import AAMCTL  # noqa: E402


def _expectation(path: Path):
    text = path.read_text()
    line = re.search(r"# expect-line: (\S+)", text)
    msg = re.search(r"# expect: (.*)", text)
    return (line.group(1) if line else "none"), (msg.group(1) if msg else "holds no YAML document")


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_bad_manifest_message_and_line(path):
    want_line, want = _expectation(path)
    with pytest.raises(AamError) as info:
        validate(load_paths([str(path)]))
    diags = info.value.diagnostics
    rendered = [d.render() for d in diags]
    assert any(want in r for r in rendered), rendered
    hit = next(d for d in diags if want in d.render())
    if want_line.isdigit():
        assert hit.line == int(want_line), rendered
    elif want_line == "none":
        assert hit.line is None
    assert all(r.startswith(str(path)) for r in rendered)


@pytest.mark.parametrize("path", BAD[:12] + BAD[-6:], ids=[p.stem for p in BAD[:12] + BAD[-6:]])
def test_cli_validate_bad_exits_1_without_traceback(path, tmp_path):
    p = subprocess.run([*AAMCTL, "--home", str(tmp_path), "validate", "-f", str(path)],
                       capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 1
    assert "Traceback" not in p.stderr
    assert p.stderr.strip()
    # one line per problem, each naming the file
    for line in p.stderr.strip().splitlines():
        assert line.startswith(str(path)), line


def test_all_errors_of_a_file_reported_at_once(tmp_path):
    f = tmp_path / "two.yaml"
    f.write_text("apiVersion: aam/v1alpha1\nkind: Model\nmetadata:\n  name: m\nspec:\n"
                 "  embeddingDim: wide\n  dropout: 2\n  layerz: 3\n")
    with pytest.raises(AamError) as info:
        validate(load_paths([str(f)]))
    lines = sorted(d.line for d in info.value.diagnostics)
    assert lines == [6, 7, 8]


def test_usage_error_exit_2(tmp_path):
    p = subprocess.run([*AAMCTL, "validate"], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 2
    p = subprocess.run([*AAMCTL, "get", "widgets"], capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, "AAM_HOME": str(tmp_path)})
    assert p.returncode == 2 and "unknown resource type" in p.stderr
    p = subprocess.run([*AAMCTL, "validate", "-f", str(tmp_path / "nope.yaml")], capture_output=True, text=True)
    assert p.returncode == 1 and "no such file" in p.stderr and "Traceback" not in p.stderr


def test_examples_and_manifests_validate():
    p = subprocess.run([*AAMCTL, "validate", "-f", "manifests/", "-f", "examples/"], capture_output=True,
                       text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    assert "run/oral-pretrain valid" in p.stdout
    assert "run/cosmos-pretrain valid" in p.stdout


def test_stdin_manifest():
    text = (ROOT / "examples" / "quickstart.yaml").read_text().replace("data/oral-age", str(ROOT / "examples/data/oral-age"))
    p = subprocess.run([*AAMCTL, "validate", "-f", "-"], input=text, capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    assert "run/quickstart-pretrain valid" in p.stdout


def test_controller_does_not_import_torch():
    code = "import sys, aamctl.cli, aamctl.apply, aamctl.plan, aamctl.reconcile; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_defaults_filled_and_paths_absolute():
    res = validate(load_paths([str(ROOT / "examples" / "quickstart.yaml")]))
    run = res.get("Run", "quickstart-pretrain")
    assert run.spec["trainer"]["weightDecay"] == 0.01  # schema default
    assert run.spec["trainer"]["scheduler"] == "cosine"
    assert run.spec["hardwareRef"] == "cpu"
    ds = res.get("Dataset", "quickstart-oral")
    assert Path(ds.spec["table"]).is_absolute() and Path(ds.spec["table"]).exists()
    assert ds.spec["split"]["validationFraction"] == 0.2
    hw = res.get("HardwareProfile", "cpu")
    assert hw.source == "builtin"


def test_round_trip_resolve_dump_parse_resolve_is_stable(tmp_path):
    res = validate(load_paths([str(ROOT / "manifests")]))
    dumped = yaml.safe_dump_all([o.manifest for o in res.given], sort_keys=False)
    res2 = validate(parse_text(dumped, "dumped.yaml", tmp_path))
    for a, b in zip(res.given, res2.given):
        assert a.manifest == b.manifest
        assert a.hash == b.hash
    run = res.get("Run", "oral-age-predict")
    assert res.run_hash(run) == res2.run_hash(res2.get("Run", "oral-age-predict"))


def test_hash_changes_with_spec_and_not_with_annotations():
    res = validate(load_paths([str(ROOT / "examples" / "quickstart.yaml")]))
    run = res.get("Run", "quickstart-pretrain")
    h = run.hash
    run.manifest["metadata"]["annotations"]["note"] = "x"
    assert run.hash == h
    run.manifest["spec"]["trainer"]["epochs"] += 1
    assert run.hash != h


def test_changing_model_changes_run_hash():
    res = validate(load_paths([str(ROOT / "examples" / "quickstart.yaml")]))
    run = res.get("Run", "quickstart-finetune")
    before = res.run_hash(run)
    res.get("Model", "quickstart-tiny").manifest["spec"]["dropout"] = 0.2
    assert res.run_hash(run) != before  # finetune inherits the model through initFrom


def test_refs_resolve_from_store():
    res = validate(load_paths([str(ROOT / "manifests" / "pretrain.yaml")]))
    store = MemoryStore({k: o.manifest for k, o in res.objects.items() if o.source == "file"})
    res2 = validate(load_paths([str(ROOT / "manifests" / "finetune.yaml")]), store)
    assert res2.get("Dataset", "oral-age").source == "store"
    assert res2.run_bundle(res2.get("Run", "oral-age-finetune"))["model"].name == "aam-small"


def test_user_profile_overrides_builtin(tmp_path):
    f = tmp_path / "hw.yaml"
    f.write_text("apiVersion: aam/v1alpha1\nkind: HardwareProfile\nmetadata:\n  name: cpu\nspec:\n"
                 "  accelerator: cpu\n  devicesPerNode: 2\n  strategy: ddp\n")
    res = validate(load_paths([str(f)]))
    assert res.get("HardwareProfile", "cpu").spec["devicesPerNode"] == 2


def test_explain_reads_schema():
    text = explain("Run.spec.trainer")
    assert "batchSize" in text and "Default: 8" in text
    assert "FIELD:    spec.trainer" in text
    assert "Peak learning rate" in text
    assert "accelerator" in explain("hardwareprofile.spec")
    with pytest.raises(KeyError) as info:
        explain("Run.spec.trainr")
    assert "did you mean 'trainer'" in str(info.value)


def test_explain_cli():
    p = subprocess.run([*AAMCTL, "explain", "Dataset.spec.split"], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0 and "validationFraction" in p.stdout
    p = subprocess.run([*AAMCTL, "explain", "Widget"], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 2 and "unknown kind" in p.stderr


def test_every_schema_field_has_description_and_default_or_required():
    import json
    for f in (ROOT / "schemas" / "v1alpha1").glob("*.schema.json"):
        schema = json.loads(f.read_text())

        def walk(node, path, required=()):
            for name, sub in node.get("properties", {}).items():
                p = f"{path}.{name}"
                if name not in ("apiVersion", "kind", "metadata") and "$ref" not in sub:
                    assert "description" in sub, f"{f.name}: {p} has no description"
                    assert "default" in sub or name in required, f"{f.name}: {p} has no default and is not required"
                walk(sub, p, sub.get("required", ()))
            items = node.get("items")
            if isinstance(items, dict):
                walk(items, path + "[]", items.get("required", ()))
        walk(schema, f.stem, schema.get("required", ()))
