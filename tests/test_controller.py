"""aamctl end to end on CPU: apply, status, logs, describe, records, cancel, failures, concurrency."""
from __future__ import annotations

import json
import re
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from synth import make_dataset, synth_manifests

from conftest import AAMCTL, aamctl  # noqa: E402


def manifest(data: dict, name="tiny-run", epochs=2, stage="pretrain", extra="", seed=1, labels="{team: oral}") -> str:
    return f"""{synth_manifests(data)}apiVersion: aam/v1alpha1
kind: Run
metadata: {{name: {name}, labels: {labels}}}
spec:
  stage: {stage}
  datasetRef: synth
  modelRef: micro
  trainer: {{epochs: {epochs}, batchSize: 4, learningRate: 0.001, warmupSteps: 1, logEverySteps: 1, seed: {seed}}}
{extra}"""


@pytest.fixture()
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("AAM_CACHE_DIR", str(tmp_path / "cache"))
    data = make_dataset(tmp_path / "data", n_samples=24, n_asvs=30)
    return tmp_path / "home", data, tmp_path


def _status(home, run) -> dict:
    out = aamctl(home, "status", run, "-o", "json").stdout
    return json.loads(out)[0]


@pytest.mark.slow
def test_apply_status_logs_describe_export_reproduce(env):
    home, data, tmp = env
    f = tmp / "run.yaml"
    f.write_text(manifest(data, epochs=3))
    p = aamctl(home, "apply", "-f", str(f))
    assert "run/tiny-run created (generation 1, local pid" in p.stdout
    phases = set()
    deadline = time.time() + 180
    while time.time() < deadline:
        ph = _status(home, "tiny-run")["phase"]
        phases.add(ph)
        if ph in ("Succeeded", "Failed"):
            break
        time.sleep(0.2)
    assert "Running" in phases and ph == "Succeeded", phases
    table = aamctl(home, "status").stdout
    assert "tiny-run" in table and "Succeeded" in table and "100%" in table
    logs = aamctl(home, "logs", "tiny-run").stdout
    assert "step 1/" in logs and "validation epoch" in logs
    assert aamctl(home, "logs", "tiny-run", "--tail", "1").stdout.count("\n") == 1
    desc = aamctl(home, "describe", "run", "tiny-run").stdout
    for word in ("Phase:       Succeeded", "Metrics:", "val_loss", "Events:", "Started", "checkpoints/best.pt"):
        assert word in desc, desc
    # unchanged re-apply is a no-op, and --wait on it passes at once: the run had succeeded
    assert "run/tiny-run unchanged" in aamctl(home, "apply", "-f", str(f), "--wait").stdout
    # export -> apply under another name -> identical final metrics
    rec = aamctl(home, "export", "run", "tiny-run", "--as", "tiny-copy").stdout
    docs = [d for d in yaml.safe_load_all(rec) if d]
    main = next(d for d in docs if d["kind"] == "Run")
    ann = main["metadata"]["annotations"]
    assert main["metadata"]["name"] == "tiny-copy"
    for key in ("aam/record-of", "aam/data-digests", "aam/versions", "aam/seed", "aam/final-metrics", "aam/host"):
        assert key in ann, key
    assert "torch" in json.loads(ann["aam/versions"])
    (tmp / "record.yaml").write_text(rec)
    aamctl(home, "apply", "-f", str(tmp / "record.yaml"), "--wait")
    a = _status(home, "tiny-run")["status"]["final_metrics"]
    b = _status(home, "tiny-copy")["status"]["final_metrics"]
    for k in ("val_loss", "unifrac_loss", "nuc_accuracy"):
        assert a[k] == b[k], (k, a[k], b[k])
    # the two records differ only where they should
    (tmp / "a.yaml").write_text(aamctl(home, "export", "run", "tiny-run").stdout)
    (tmp / "b.yaml").write_text(aamctl(home, "export", "run", "tiny-copy").stdout)
    d = aamctl(home, "diff", str(tmp / "a.yaml"), str(tmp / "b.yaml"), check=False)
    assert d.returncode == 1 and "tiny-copy" in d.stdout
    assert aamctl(home, "diff", str(tmp / "a.yaml"), str(tmp / "a.yaml")).stdout.strip() == "records are identical"


@pytest.mark.slow
def test_changed_data_blocks_record_reapply(env):
    home, data, tmp = env
    f = tmp / "run.yaml"
    f.write_text(manifest(data, epochs=1))
    aamctl(home, "apply", "-f", str(f), "--wait")
    (tmp / "rec.yaml").write_text(aamctl(home, "export", "run", "tiny-run", "--as", "again").stdout)
    with open(data["metadata"], "a") as fh:
        fh.write("EXTRA\t1\tgum\n")
    p = aamctl(home, "apply", "-f", str(tmp / "rec.yaml"), "--dry-run", check=False)
    assert p.returncode == 1 and "changed since the record was made" in p.stderr and "--allow-data-change" in p.stderr
    p = aamctl(home, "apply", "-f", str(tmp / "rec.yaml"), "--dry-run", "--allow-data-change")
    assert "run/again created" in p.stdout


@pytest.mark.slow
def test_changed_spec_makes_new_generation_and_keeps_old(env):
    home, data, tmp = env
    f = tmp / "run.yaml"
    f.write_text(manifest(data, epochs=1))
    aamctl(home, "apply", "-f", str(f), "--wait")
    f.write_text(manifest(data, epochs=2))
    p = aamctl(home, "apply", "-f", str(f), "--wait")
    assert "generation 2" in p.stdout
    assert (home / "runs" / "tiny-run" / "1" / "status.json").exists()
    gens = json.loads(aamctl(home, "status", "tiny-run", "-A", "-o", "json").stdout)
    assert [g["generation"] for g in gens] == [1, 2]
    assert all(g["phase"] == "Succeeded" for g in gens)
    # -g picks the generation's own log, not the latest one
    logs1 = aamctl(home, "logs", "tiny-run", "-g", "1").stdout
    assert logs1 == (home / "runs" / "tiny-run" / "1" / "log.txt").read_text()
    assert logs1 != aamctl(home, "logs", "tiny-run").stdout


@pytest.mark.slow
def test_dry_run_writes_nothing_and_checks_data(env):
    home, data, tmp = env
    f = tmp / "run.yaml"
    f.write_text(manifest(data))
    p = aamctl(home, "apply", "-f", str(f), "--dry-run")
    assert "run/tiny-run created; would start generation 1 (local) (dry run)" in p.stdout
    assert "launch.sh" in p.stdout
    assert re.search(r"distributed_type: ['\"]?NO['\"]?$", p.stdout, re.M), p.stdout
    assert not home.exists()
    # preflight: a tree that misses ASVs fails the dry run too, with the Dataset's file and line
    data["tree"].write_text("(" + ",".join(f"T{i}:0.1" for i in range(5)) + ");\n")
    p = aamctl(home, "apply", "-f", str(f), "--dry-run", check=False)
    assert p.returncode == 1
    assert f"{f}:6:3: spec.tree:" in p.stderr and "are not tips of the tree" in p.stderr
    assert not home.exists()
    p = aamctl(home, "apply", "-f", str(f), "-o", "json", "--dry-run", "--skip-preflight")
    assert '"kind": "Run"' in p.stdout


@pytest.mark.slow
def test_killed_process_turns_failed_with_reason(env):
    home, data, tmp = env
    f = tmp / "run.yaml"
    f.write_text(manifest(data, epochs=200))
    aamctl(home, "apply", "-f", str(f))
    folder = home / "runs" / "tiny-run" / "1"
    deadline = time.time() + 120
    while time.time() < deadline and not (folder / "status.json").exists():
        time.sleep(0.2)
    out = subprocess.run(["pgrep", "-f", f"aam_runtime {folder}"], capture_output=True, text=True).stdout.split()
    assert out
    os.kill(int(out[0]), signal.SIGKILL)
    deadline = time.time() + 30
    while time.time() < deadline:
        st = _status(home, "tiny-run")
        if st["phase"] == "Failed":
            break
        time.sleep(0.3)
    assert st["phase"] == "Failed"
    assert "SIGKILL" in st["reason"]
    assert "Failed" in aamctl(home, "describe", "run", "tiny-run").stdout


@pytest.mark.slow
def test_cancel_and_delete(env):
    home, data, tmp = env
    f = tmp / "run.yaml"
    f.write_text(manifest(data, epochs=500))
    aamctl(home, "apply", "-f", str(f))
    time.sleep(1)
    assert "cancelled" in aamctl(home, "cancel", "tiny-run").stdout
    st = _status(home, "tiny-run")
    assert st["phase"] == "Cancelled"
    folder = Path(st["folder"])
    out = subprocess.run(["pgrep", "-f", f"aam_runtime {folder}"], capture_output=True, text=True).stdout
    assert not out.strip()
    assert "not active" in aamctl(home, "cancel", "tiny-run").stdout
    assert "run/tiny-run deleted" in aamctl(home, "delete", "run", "tiny-run").stdout
    assert folder.exists()  # nothing recorded is lost
    p = aamctl(home, "delete", "run", "tiny-run", check=False)
    assert p.returncode == 1 and "not found" in p.stderr


@pytest.mark.slow
def test_pipeline_dependent_waits_and_fails_when_dependency_fails(env):
    home, data, tmp = env
    f = tmp / "run.yaml"
    # bad data is caught before anything is queued: rarefaction that leaves no sample
    bad = manifest(data, epochs=1).replace("targets: [{name: age, type: regression}]",
                                           "targets: [{name: age, type: regression}]\n  rarefyDepth: 100000")
    f.write_text(bad)
    p = aamctl(home, "apply", "-f", str(f), check=False)
    assert p.returncode == 1 and f"{f}:9:3: spec.rarefyDepth:" in p.stderr and "rarefaction" in p.stderr, p.stderr
    assert not (home / "runs").exists()
    # a failure preflight cannot see (the GPU the profile names is not here): the dependent never starts
    text = manifest(data, epochs=1).replace("  modelRef: micro\n", "  modelRef: micro\n  hardwareRef: gpu-one\n")
    text += """---
apiVersion: aam/v1alpha1
kind: HardwareProfile
metadata: {name: gpu-one}
spec: {accelerator: cuda, devicesPerNode: 1}
---
apiVersion: aam/v1alpha1
kind: Run
metadata: {name: tune}
spec:
  stage: finetune
  datasetRef: synth
  hardwareRef: cpu
  initFrom: {run: tiny-run}
  trainer: {epochs: 1, batchSize: 4}
"""
    f.write_text(text)
    # the local executor is told there is a GPU (one torch cannot see), so apply lets it start
    gpu_env = dict(os.environ, AAM_LOCAL_GPUS="1")
    p = aamctl(home, "apply", "-f", str(f), "--wait", check=False, env=gpu_env)
    assert p.returncode == 1
    st = json.loads(aamctl(home, "status", "-o", "json").stdout)
    by = {s["name"]: s for s in st}
    assert by["tiny-run"]["phase"] == "Failed" and "expects cuda devices" in by["tiny-run"]["reason"]
    assert by["tiny-run"]["exit_code"] == 5
    assert by["tune"]["phase"] == "Failed" and "initFrom run did not succeed" in by["tune"]["reason"]
    # the same files again: nothing restarts, and --wait still fails on the broken runs instead of
    # letting a script go on past them
    p = aamctl(home, "apply", "-f", str(f), "--wait", check=False)
    assert p.returncode == 1, p.stdout
    assert "run/tiny-run unchanged (generation 1 is Failed: 'aamctl resume tiny-run'" in p.stdout, p.stdout
    assert [s["generation"] for s in json.loads(aamctl(home, "status", "-o", "json").stdout)] == [1, 1]


@pytest.mark.slow
def test_two_concurrent_applies_both_land(env):
    home, data, tmp = env
    files = []
    for i in range(2):
        f = tmp / f"r{i}.yaml"
        f.write_text(manifest(data, name=f"conc-{i}", epochs=1))
        files.append(f)
    procs = [subprocess.Popen([*AAMCTL, "--home", str(home), "apply", "-f", str(f)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for f in files]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    aamctl(home, "wait", "conc-0", "conc-1", "--timeout", "240")
    names = {s["name"] for s in json.loads(aamctl(home, "status", "-o", "json").stdout)}
    assert names == {"conc-0", "conc-1"}


@pytest.mark.slow
def test_get_objects_selectors_and_outputs(env):
    home, data, tmp = env
    f = tmp / "run.yaml"
    f.write_text(manifest(data, epochs=1, labels="{team: oral}") + "---\n" +
                 manifest(data, name="other", epochs=1, labels="{team: gut}").split("---\n")[-1])
    aamctl(home, "apply", "-f", str(f), "--wait")
    assert "synth" in aamctl(home, "get", "datasets").stdout
    assert "micro" in aamctl(home, "get", "models").stdout
    hw = aamctl(home, "get", "hardwareprofiles").stdout
    for name in ("cpu", "cuda-a100", "cuda-h100", "cosmos-mi300a"):
        assert name in hw
    y = aamctl(home, "get", "hardwareprofiles", "cosmos-mi300a", "-o", "yaml").stdout
    assert "rocm/6.3.0" in y and "hsn0" in y
    sel = aamctl(home, "get", "runs", "-l", "team=gut").stdout
    assert "other" in sel and "tiny-run" not in sel
    wide = aamctl(home, "get", "runs", "-o", "wide").stdout
    assert "FOLDER" in wide
    j = json.loads(aamctl(home, "get", "datasets", "synth", "-o", "json").stdout)
    assert j["spec"]["split"]["validationFraction"] == 0.2
    p = aamctl(home, "describe", "run", "nope", check=False)
    assert p.returncode == 1 and "not found" in p.stderr


@pytest.mark.slow
def test_paths_with_shell_characters_are_quoted(env, tmp_path):
    _, data, tmp = env
    home = tmp / "odd home $(touch PWNED) ; `touch PWNED2`"
    f = tmp / "run.yaml"
    f.write_text(manifest(data, epochs=1))
    aamctl(home, "apply", "-f", str(f), "--wait", cwd=tmp)
    assert _status(home, "tiny-run")["phase"] == "Succeeded"
    assert not list(tmp.rglob("PWNED*"))


def test_status_without_state_is_a_clear_error(tmp_path):
    p = aamctl(tmp_path / "none", "status", check=False)
    assert p.returncode == 1 and "no aam state" in p.stderr


@pytest.mark.slow
def test_classification_finetune_predict_baseline(env):
    """A categorical target end to end: accuracy/F1/AUROC, confusion matrix, class names in predictions."""
    home, data, tmp = env
    text = manifest(data, name="pre", epochs=1).replace(
        "targets: [{name: age, type: regression}]",
        "targets: [{name: site, type: classification}]\n  categoricalColumns: [site]")
    text += """---
apiVersion: aam/v1alpha1
kind: Run
metadata: {name: cls}
spec:
  stage: finetune
  datasetRef: synth
  initFrom: {run: pre}
  trainer: {epochs: 2, batchSize: 4, earlyStopping: {metric: accuracy}}
---
apiVersion: aam/v1alpha1
kind: Run
metadata: {name: cls-pred}
spec: {stage: predict, datasetRef: synth, initFrom: {run: cls}}
---
apiVersion: aam/v1alpha1
kind: Run
metadata: {name: cls-rf}
spec: {stage: baseline, datasetRef: synth, baseline: {trees: 20}}
"""
    f = tmp / "cls.yaml"
    f.write_text(text)
    aamctl(home, "apply", "-f", str(f), "--wait", timeout=600)
    for run in ("cls", "cls-rf"):
        fm = _status(home, run)["status"]["final_metrics"]
        assert {"accuracy", "f1"} <= set(fm), (run, fm)
        # the reported accuracy is the one of the predictions it wrote
        rows = [l.split("\t") for l in (Path(_status(home, run)["folder"]) / "predictions.tsv").read_text().splitlines()[2:]]
        assert fm["accuracy"] == pytest.approx(sum(r[2] == r[3] for r in rows) / len(rows))
    folder = Path(_status(home, "cls")["folder"])
    assert (folder / "plots" / "confusion.png").exists()
    lines = (Path(_status(home, "cls-pred")["folder"]) / "predictions.tsv").read_text().splitlines()
    header = lines[0].split("\t")
    assert header == ["sample-id", "split", "prediction", "truth", "probability:gum", "probability:tongue"]
    assert len(lines) == 26 and lines[1] == "#q2:types\tcategorical\tcategorical\tcategorical\tnumeric\tnumeric"
    rows = [l.split("\t") for l in lines[2:]]
    assert {r[2] for r in rows} <= {"gum", "tongue"}
    for r in rows:  # probabilities that sum to 1, the largest the predicted class
        p = [float(x) for x in r[4:]]
        assert sum(p) == pytest.approx(1, abs=2e-6) and header[4 + p.index(max(p))] == f"probability:{r[2]}"


@pytest.mark.slow
def test_gpu_profile_without_gpu_fails_with_a_clear_reason(env):
    home, data, tmp = env
    f = tmp / "gpu.yaml"
    f.write_text(manifest(data, name="on-gpu", epochs=1).replace("  modelRef: micro\n", "  modelRef: micro\n  hardwareRef: cuda-h100-one\n")
                 + """---
apiVersion: aam/v1alpha1
kind: HardwareProfile
metadata: {name: cuda-h100-one}
spec: {accelerator: cuda, devicesPerNode: 1}
""")
    # the local executor sees no GPU here: refused at apply, nothing started
    p = aamctl(home, "apply", "-f", str(f), "--wait", check=False, env=dict(os.environ, AAM_LOCAL_GPUS="0"))
    assert p.returncode == 1 and "run/on-gpu asks for 1 cuda GPUs, this machine has 0" in p.stderr, p.stderr
    assert not (home / "runs").exists()
    # told there is one (a driver torch cannot use): the runtime says why it cannot train
    p = aamctl(home, "apply", "-f", str(f), "--wait", check=False, env=dict(os.environ, AAM_LOCAL_GPUS="1"))
    assert p.returncode == 1
    st = _status(home, "on-gpu")
    assert st["phase"] == "Failed" and "expects cuda devices" in st["reason"], st["reason"]
