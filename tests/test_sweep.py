"""Sweep: validation before any trial, the Optuna journal, and real sweeps on the local executor
(the SLURM job array is in test_slurm.py, next to the cluster)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import aamctl
from synth import ORAL

from aam_runtime.runfolder import EXIT_CODE
from aamctl.sweeps.leaderboard import validations

ROOT = Path(__file__).resolve().parent.parent

DATA = f"""apiVersion: aam/v1alpha1
kind: Dataset
metadata: {{name: oral100}}
spec:
  table: {ORAL}/table.biom
  tree: {ORAL}/tree.nwk
  metadata: {{path: {ORAL}/metadata.tsv, sampleIdColumn: sample_id}}
  targets: [{{name: age, type: regression}}]
  subsample: {{samples: 100, seed: 1}}
  maxAsvsPerSample: 32
  maxBp: 100
  split: {{validationFraction: 0.25, seed: 42}}
---
apiVersion: aam/v1alpha1
kind: Model
metadata: {{name: micro}}
spec: {{embeddingDim: 8, ffnMultiplier: 1, dropout: 0.0, nucleotide: {{heads: 2, layers: 1}},
        sample: {{heads: 2, layers: 1}}, encoderHead: {{heads: 2, layers: 1}}, targetHead: {{heads: 2, layers: 1}}}}
---
"""


def sweep_doc(name="sw", *, stage="finetune", parameters=None, extra="", max_trials=6, parallelism=2,
              objective="mae", algorithm="{type: grid, seed: 0}", early="{type: none}", epochs=3,
              executor="", batch=16) -> str:
    params = parameters or "    - path: spec.trainer.learningRate\n      values: [0.001, 0.002]\n"
    target = "    target: age\n" if stage == "finetune" else ""
    return f"""apiVersion: aam/v1alpha1
kind: Sweep
metadata: {{name: {name}}}
spec:
  template:
    stage: {stage}
    datasetRef: oral100
    modelRef: micro
    hardwareRef: cpu
{target}    trainer: {{epochs: {epochs}, batchSize: {batch}, learningRate: 0.001, warmupSteps: 1, logEverySteps: 5,
               earlyStopping: {{patience: null, metric: {"mae" if stage == "finetune" else "val_loss"}}}}}
{executor}  parameters:
{params}  algorithm: {algorithm}
  objective: {{metric: {objective}}}
  maxTrials: {max_trials}
  parallelism: {parallelism}
  earlyStopping: {early}
{extra}"""


def _validate(tmp_path, text, home=None):
    f = tmp_path / "s.yaml"
    f.write_text(DATA + text)
    return aamctl(home or tmp_path / "home", "validate", "-f", str(f), check=False)


def _line_of(text: str, needle: str) -> int:
    full = DATA + text
    return next(i for i, line in enumerate(full.splitlines(), 1) if line.rstrip().endswith(needle))


# ---------------------------------------------------------------- validation (no trial starts)

def test_valid_sweep_and_explain(tmp_path):
    p = _validate(tmp_path, sweep_doc())
    assert p.returncode == 0, p.stderr
    assert "sweep/sw valid" in p.stdout
    out = aamctl(tmp_path / "home", "explain", "Sweep.spec.earlyStopping").stdout
    assert "median" in out and "hyperband" in out


def test_unknown_parameter_path_names_the_nearest_field(tmp_path):
    text = sweep_doc(parameters="    - path: spec.trainer.learningRat\n      values: [0.001]\n")
    p = _validate(tmp_path, text)
    assert p.returncode != 0
    assert "'learningRat' is not a field of Run spec.trainer" in p.stderr
    assert "did you mean 'spec.trainer.learningRate'?" in p.stderr
    assert f":{_line_of(text, 'learningRat')}" in p.stderr
    text = sweep_doc(parameters="    - path: model.spec.targetHed.hidden\n      values: [[8]]\n")
    p = _validate(tmp_path, text)
    assert "did you mean 'model.spec.targetHead'?" in p.stderr


def test_values_the_field_forbids_fail_before_any_trial(tmp_path):
    text = sweep_doc(parameters="    - path: spec.trainer.learningRate\n      values: [0.001, -0.5]\n")
    p = _validate(tmp_path, text)
    assert p.returncode != 0
    assert "spec.trainer.learningRate = -0.5 makes an invalid trial" in p.stderr
    assert f":{_line_of(text, '-0.5]')}" in p.stderr
    # an odd batch size for UniFrac pretraining: a cross-field rule of the Run, not the schema
    text = sweep_doc(stage="pretrain", objective="val_loss",
                     parameters="    - path: spec.trainer.batchSize\n      values: [16, 7]\n")
    p = _validate(tmp_path, text)
    assert p.returncode != 0 and "batchSize = 7 makes an invalid trial" in p.stderr
    assert "even batch size" in p.stderr
    # a range whose end the schema forbids
    text = sweep_doc(algorithm="{type: random}",
                     parameters="    - path: model.spec.dropout\n      range: {min: 0.0, max: 1.5}\n")
    p = _validate(tmp_path, text)
    assert p.returncode != 0 and "model.spec.dropout = 1.5 makes an invalid trial" in p.stderr


def test_grid_larger_than_max_trials_says_its_size(tmp_path):
    params = ("    - path: spec.trainer.learningRate\n      values: [0.001, 0.002, 0.003]\n"
              "    - path: spec.trainer.seed\n      range: {min: 1, max: 3}\n")
    p = _validate(tmp_path, sweep_doc(parameters=params, max_trials=6))
    assert p.returncode != 0
    assert "the grid has 9 combinations but maxTrials is 6" in p.stderr and "raise maxTrials to 9" in p.stderr
    assert _validate(tmp_path, sweep_doc(parameters=params, max_trials=9)).returncode == 0
    p = _validate(tmp_path, sweep_doc(parameters="    - path: spec.trainer.learningRate\n"
                                                 "      range: {min: 0.001, max: 0.01}\n"))
    assert "a grid needs a step" in p.stderr


def test_objective_the_stage_does_not_produce(tmp_path):
    p = _validate(tmp_path, sweep_doc(stage="pretrain", objective="mae"))
    assert p.returncode != 0
    assert "metric 'mae' is not computed by a pretrain run" in p.stderr and "val_loss" in p.stderr


def test_other_sweep_mistakes(tmp_path):
    no_template = "apiVersion: aam/v1alpha1\nkind: Sweep\nmetadata: {name: s}\nspec:\n  parameters:\n" \
                  "    - {path: spec.trainer.seed, values: [1]}\n  objective: {metric: mae}\n"
    p = _validate(tmp_path, no_template)
    assert "exactly one of template or runRef" in p.stderr
    p = _validate(tmp_path, sweep_doc(parameters="    - path: spec.executor.type\n      values: [local]\n"))
    assert "cannot vary between trials" in p.stderr
    p = _validate(tmp_path, sweep_doc(parameters="    - path: spec.trainer.seed\n      values: [1]\n"
                                                 "      range: {min: 1, max: 2}\n"))
    assert "exactly one of values or range" in p.stderr
    p = _validate(tmp_path, sweep_doc(algorithm="{type: random}",
                                      parameters="    - path: spec.trainer.seed\n      range: {min: 1.5, max: 9}\n"))
    assert "integer field" in p.stderr
    p = _validate(tmp_path, sweep_doc(name="s" * 61))
    assert "exceed 63 characters" in p.stderr


def test_objective_is_checked_against_the_templates_targets(tmp_path):
    """A metric the trials never report fails here, not after every trial has trained."""
    p = _validate(tmp_path, sweep_doc(objective="accuracy"))  # classification metric, regression target
    assert p.returncode != 0
    assert "objective metric 'accuracy' is not reported by the template's trials" in p.stderr
    assert "spec.objective.metric" in p.stderr
    two = f"""apiVersion: aam/v1alpha1
kind: Dataset
metadata: {{name: oral-two}}
spec:
  table: {ORAL}/table.biom
  tree: {ORAL}/tree.nwk
  metadata: {{path: {ORAL}/metadata-study.tsv, sampleIdColumn: sample_id}}
  targets: [{{name: age, type: regression}}, {{name: study, type: classification}}]
  categoricalColumns: [study]
  subsample: {{samples: 100, seed: 1}}
  maxAsvsPerSample: 32
---
"""
    several = two + sweep_doc(objective="mae").replace("    target: age\n", "    targets: [{name: age}, {name: study}]\n"
                                                       ).replace("metric: mae}}", "metric: mae:age}}").replace(
        "datasetRef: oral100", "datasetRef: oral-two")
    p = _validate(tmp_path, several)
    assert p.returncode != 0 and "objective metric 'mae' is not reported" in p.stderr, p.stderr
    assert _validate(tmp_path, several.replace("objective: {metric: mae}", "objective: {metric: mae:age}")
                     ).returncode == 0
    p = _validate(tmp_path, several.replace("objective: {metric: mae}", "objective: {metric: mae:bmi}"))
    assert p.returncode != 0 and "objective metric 'mae:bmi'" in p.stderr


def test_every_grid_point_of_a_range_is_checked(tmp_path):
    # an odd batch size inside an integer range (UniFrac pretraining pairs samples)
    text = sweep_doc(stage="pretrain", objective="val_loss", algorithm="{type: random}",
                     parameters="    - path: spec.trainer.batchSize\n      range: {min: 4, max: 16, step: 2}\n")
    assert _validate(tmp_path, text).returncode == 0  # every point even
    p = _validate(tmp_path, text.replace("step: 2", "step: 1"))
    assert p.returncode != 0 and "spec.trainer.batchSize = 5 makes an invalid trial" in p.stderr
    # a range too wide to walk: its first and last two points (rules like "even" alternate)
    p = _validate(tmp_path, text.replace("max: 16, step: 2", "max: 100000"))
    assert p.returncode != 0 and "batchSize = 5 makes an invalid trial" in p.stderr
    # every value of a list, beyond the first 200 too
    values = ", ".join(["16"] * 250 + ["7"])
    p = _validate(tmp_path, sweep_doc(stage="pretrain", objective="val_loss", algorithm="{type: random}",
                                      parameters=f"    - path: spec.trainer.batchSize\n      values: [{values}]\n"))
    assert p.returncode != 0 and "batchSize = 7 makes an invalid trial" in p.stderr


def test_a_huge_grid_is_counted_not_built(tmp_path):
    params = "    - path: spec.trainer.seed\n      range: {min: 0, max: 2000000000}\n"
    t0 = time.time()
    p = _validate(tmp_path, sweep_doc(parameters=params, max_trials=10))
    assert p.returncode != 0 and "the grid has 2000000001 combinations but maxTrials is 10" in p.stderr
    assert "internal error" not in p.stderr and time.time() - t0 < 30


def test_parameters_that_undo_each_other_are_refused(tmp_path):
    params = ("    - path: spec.trainer.learningRate\n      values: [0.001, 0.002]\n"
              "    - path: spec.trainer\n      values: [{epochs: 2}]\n")
    p = _validate(tmp_path, sweep_doc(parameters=params))
    assert p.returncode != 0
    assert "parameter spec.trainer overlaps parameters[0] (spec.trainer.learningRate)" in p.stderr
    params = ("    - path: spec.modelRef\n      values: [micro]\n"
              "    - path: model.spec.dropout\n      values: [0.0, 0.1]\n")
    p = _validate(tmp_path, sweep_doc(parameters=params))
    assert p.returncode != 0 and "spec.modelRef cannot vary beside model.spec parameters" in p.stderr


def test_a_trial_name_that_is_one_of_the_users_runs_is_refused(tmp_path):
    users = """apiVersion: aam/v1alpha1
kind: Run
metadata: {name: sw-t1}
spec: {stage: finetune, datasetRef: oral100, modelRef: micro, target: age}
---
"""
    p = _validate(tmp_path, users + sweep_doc())
    assert p.returncode != 0
    assert "run/sw-t1 is the name of trial 1 of this sweep" in p.stderr and "rename the Sweep" in p.stderr
    # beyond maxTrials there is no trial of that name
    assert _validate(tmp_path, users.replace("sw-t1", "sw-t9") + sweep_doc()).returncode == 0


def test_parameters_map_to_optuna_distributions():
    from aamctl.api.sweepspace import parameters, space_hash

    spec = {"parameters": [
        {"path": "spec.trainer.learningRate", "range": {"min": 1e-4, "max": 1e-2, "log": True, "step": None}},
        {"path": "spec.trainer.seed", "range": {"min": 1, "max": 5, "log": False, "step": 2}},
        {"path": "model.spec.targetHead.hidden", "values": [[], [32], [64, 32]]},
        {"path": "spec.trainer.warmupSteps", "range": {"min": 0.0, "max": 10.0, "log": False, "step": None}}]}
    lr, seed, hidden, warm = parameters(spec)
    assert lr.distribution().log and not lr.integer and lr.grid() is None
    assert seed.integer and seed.grid() == [1, 3, 5]
    assert warm.integer  # an integer field with whole-number ends samples integers
    assert hidden.target == "model" and hidden.field == ("spec", "targetHead", "hidden")
    assert hidden.encoded and hidden.decode(hidden.choices[2]) == [64, 32]
    m = {"apiVersion": "aam/v1alpha1", "kind": "Sweep", "metadata": {"name": "x"},
         "spec": dict(spec, maxTrials=4, parallelism=1, objective={"metric": "mae"})}
    more = json.loads(json.dumps(m))
    more["spec"]["maxTrials"] = 40
    more["spec"]["parallelism"] = 3
    assert space_hash(m) == space_hash(more)  # budget changes keep the generation
    more["spec"]["objective"] = {"metric": "rmse"}
    assert space_hash(m) != space_hash(more)


def test_journal_survives_two_processes_appending_at_once(tmp_path):
    """Two processes ask and tell 40 trials each on one journal file at the same time."""
    journal = tmp_path / "journal.log"
    code = f"""
import sys, optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
optuna.logging.set_verbosity(optuna.logging.WARNING)
st = JournalStorage(JournalFileBackend({str(journal)!r}))
study = optuna.create_study(study_name="s", storage=st, load_if_exists=True)
for i in range(40):
    t = study.ask()
    x = t.suggest_float("x", 0, 1)
    t.report(x, 0)
    study.tell(t, x + int(sys.argv[1]))
"""
    procs = [subprocess.Popen([sys.executable, "-c", code, str(k)]) for k in (0, 10)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    study = optuna.load_study(study_name="s", storage=JournalStorage(JournalFileBackend(str(journal))))
    trials = study.get_trials()
    assert len(trials) == 80
    assert sorted(t.number for t in trials) == list(range(80))
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert sum(t.value >= 10 for t in trials) == 40  # each process's tells landed on its own trials


def test_array_script_runs_each_trial_in_its_folder(tmp_path):
    from aamctl.planning.plan import RunPlan
    from aamctl.sweeps.array import render_array

    plans = []
    for i in range(3):
        folder = tmp_path / f"runs/sw-t{i}/1"
        p = RunPlan(name=f"sw-t{i}", generation=1, run_hash="h", stage="finetune", executor="slurm", folder=folder)
        p.files["job.sbatch"] = (f"#!/bin/bash\n#SBATCH --job-name=aam-sw-t{i}-g1\n#SBATCH --output={folder}/log.txt\n"
                                 "#SBATCH --time=00:10:00\n#SBATCH --requeue\necho hi\n")
        plans.append(p)
    text = render_array(plans, "sw", 1, 0, tmp_path / "arrays", parallelism=2)
    assert "#SBATCH --array=0-2%2" in text
    assert "#SBATCH --time=00:10:00" in text and "#SBATCH --requeue" in text
    assert "aam-sw-t0" not in text and "log.txt\n#SBATCH" not in text
    # the array maps task ids to folders; run it as task 1 with bash
    for p in plans:
        p.folder.mkdir(parents=True)
        (p.folder / "job.sbatch").write_text(f"echo ran {p.name} in \"$PWD\" > {p.folder}/ran\n")
    script = tmp_path / "a.sh"
    script.write_text(text)
    subprocess.run(["bash", str(script)], env=dict(os.environ, SLURM_ARRAY_TASK_ID="1"), check=True)
    assert (plans[1].folder / "ran").read_text().startswith("ran sw-t1")
    assert not (plans[0].folder / "ran").exists()


# ---------------------------------------------------------------- real sweeps, local executor

def _board(home, name):
    return json.loads(aamctl(home, "describe", "sweep", name, "-o", "json").stdout)


def _wait(home, name, pred, timeout=400):
    deadline = time.time() + timeout
    while time.time() < deadline:
        b = _board(home, name)
        if pred(b):
            return b
        time.sleep(0.5)
    raise AssertionError(f"timed out: {json.dumps(_board(home, name), indent=1)[:3000]}")


BAD_LR = 1.0


@pytest.mark.slow
def test_median_prunes_a_diverging_learning_rate(tmp_path, monkeypatch):
    """Grid order is fixed by the seed: the bad rate is the third trial, after the two the
    median pruner needs; it is stopped early and recorded as Pruned, not Failed."""
    monkeypatch.setenv("AAM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("AAM_SWEEP_POLL", "0.2")  # epochs here take a fraction of a second
    home = tmp_path / "home"
    params = f"    - path: spec.trainer.learningRate\n      values: [0.002, 0.003, {BAD_LR}]\n"
    text = sweep_doc(name="prune", parameters=params, max_trials=3, parallelism=1, epochs=10, batch=2,
                     algorithm="{type: grid, seed: 3}", early="{type: median, startupTrials: 2, warmupEpochs: 1}")
    f = tmp_path / "s.yaml"
    f.write_text(DATA + text)
    out = aamctl(home, "apply", "-f", str(f), "--wait", timeout=600).stdout
    assert "sweep/prune Succeeded" in out
    b = _board(home, "prune")
    assert [t["params"]["spec.trainer.learningRate"] for t in sorted(b["trials"], key=lambda t: t["number"])] \
        == [0.003, 0.002, BAD_LR]
    values = {t["number"]: t["value"] for t in b["trials"]}
    assert values[2] is None and values[0] > 0 and values[1] > 0
    bad = next(t for t in b["trials"] if t["number"] == 2)
    assert bad["state"] == "Pruned", b["trials"]
    run = json.loads(aamctl(home, "status", bad["run_name"], "-o", "json").stdout)[0]
    assert run["phase"] == "Pruned" and run["reason"].startswith("pruned by its sweep")
    assert max(e for e, _ in validations(Path(run["folder"]), "mae")) < 10  # stopped before its last epoch
    assert b["counts"] == {"Creating": 0, "Running": 0, "Complete": 2, "Pruned": 1, "Failed": 0}
    text = aamctl(home, "describe", "sweep", "prune").stdout
    assert "Pruned" in text and "LEARNINGRATE" in text


@pytest.mark.slow
def test_local_sweep_extends_survives_its_controller_and_exports_the_best(tmp_path, monkeypatch):
    monkeypatch.setenv("AAM_CACHE_DIR", str(tmp_path / "cache"))
    home = tmp_path / "home"
    params = ("    - path: spec.trainer.learningRate\n      range: {min: 0.0005, max: 0.01, log: true}\n"
              "    - path: model.spec.targetHead.hidden\n      values: [[], [16]]\n")
    text = sweep_doc(parameters=params, max_trials=6, algorithm="{type: random, seed: 7}", epochs=4, batch=8)
    f = tmp_path / "s.yaml"
    f.write_text(DATA + text)
    out = aamctl(home, "apply", "-f", str(f)).stdout
    assert "sweep/sw created (generation 1, controller pid" in out
    # kill the controller mid-sweep (after two trials finished), then re-apply
    _wait(home, "sw", lambda b: b["counts"]["Complete"] >= 2)
    from aamctl.runs.store import StateStore
    row = StateStore(home).latest_sweep("sw")
    os.kill(row["pid"], signal.SIGKILL)
    time.sleep(1)
    listed = aamctl(home, "get", "sweeps").stdout
    assert "Running (no controller)" in listed
    out = aamctl(home, "apply", "-f", str(f), "--wait", timeout=600).stdout
    assert "sweep/sw resumed" in out
    assert "sweep/sw Succeeded" in out
    b = _board(home, "sw")
    assert sorted(t["number"] for t in b["trials"]) == list(range(6))
    runs = json.loads(aamctl(home, "status", "-o", "json").stdout)
    trial_runs = [r for r in runs if r["name"].startswith("sw-t")]
    assert sorted(r["name"] for r in trial_runs) == [f"sw-t{i}" for i in range(6)]
    assert all(r["generation"] == 1 for r in trial_runs)  # no trial ran twice
    assert all(r["labels"] == {"sweep": "sw", "trial": r["name"].split("-t")[1]} for r in trial_runs)
    models = json.loads(aamctl(home, "get", "models", "-o", "json").stdout)
    derived = {m["metadata"]["name"]: m["spec"]["targetHead"]["hidden"] for m in models}
    for t in b["trials"]:  # each trial's Model is a derived Model with the trial's value
        assert derived[t["run_name"]] == t["params"]["model.spec.targetHead.hidden"]
    assert b["counts"]["Failed"] == 0 and b["best"] is not None
    assert b["best"]["value"] == min(t["value"] for t in b["trials"] if t["state"] == "Complete")
    assert (Path(b["folder"]) / "plots" / "objective.png").exists()
    assert (Path(b["folder"]) / "plots" / "parameters.png").exists()
    status = aamctl(home, "status").stdout
    assert "SWEEP" in status and f"6/6 finished ({b['counts']['Complete']} complete" in status
    # re-applying the unchanged Sweep does nothing
    out = aamctl(home, "apply", "-f", str(f)).stdout
    assert "sweep/sw unchanged" in out and len(_board(home, "sw")["trials"]) == 6
    # raising maxTrials runs exactly two more, in the same generation
    f.write_text(DATA + text.replace("maxTrials: 6", "maxTrials: 8"))
    out = aamctl(home, "apply", "-f", str(f), "--wait", timeout=600).stdout
    assert "sweep/sw extended to 8 trials" in out
    b = _board(home, "sw")
    assert b["generation"] == 1 and sorted(t["number"] for t in b["trials"]) == list(range(8))
    # the best trial's record (export sweep --best) re-applies elsewhere as a plain Run
    best = b["best"]
    rec = tmp_path / "best.yaml"
    rec.write_text(aamctl(home, "export", "sweep", "sw", "--best").stdout)
    docs = [d for d in yaml.safe_load_all(rec.read_text()) if d]
    run = next(d for d in docs if d["kind"] == "Run")
    assert run["metadata"]["name"] == best["run"] and run["metadata"]["labels"]["sweep"] == "sw"
    # changing the search space starts generation 2; cancel stops it
    f.write_text(DATA + text.replace("max: 0.01", "max: 0.02"))
    out = aamctl(home, "apply", "-f", str(f)).stdout
    assert "generation 2" in out
    aamctl(home, "cancel", "sweep", "sw")
    assert _board(home, "sw")["phase"] == "Cancelled"
    other = tmp_path / "elsewhere"
    aamctl(other, "apply", "-f", str(rec), "--wait", timeout=600)
    st = json.loads(aamctl(other, "status", best["run"], "-o", "json").stdout)[0]
    from aamctl.sweeps.leaderboard import objective_value
    assert objective_value(Path(st["folder"]), "mae") == pytest.approx(best["value"], rel=1e-5)


def test_controller_builds_the_sampler_and_pruner_the_sweep_names(tmp_path):
    """In process, no trial runs: hyperband's budget is the template's epochs, a restarted
    controller seeds its sampler past the trials already asked, and a grid sweep stops asking
    when the grid is used up (Optuna's GridSampler would otherwise call study.stop())."""
    from aamctl.api.parse import parse_text
    from aamctl.api.sweepspace import space_hash
    from aamctl.home import sweep_folder
    from aamctl.sweeps import controller as SW
    from aamctl.runs.store import StateStore
    from aamctl.api.validate import validate

    store = StateStore(tmp_path / "home")
    text = DATA + sweep_doc(algorithm="{type: random, seed: 5}", epochs=9,
                            early="{type: hyperband, minEpochs: 2, reductionFactor: 2}")
    res = validate(parse_text(text, "s.yaml", tmp_path), store)
    for obj in res.given:
        store.put_object(obj.kind, obj.name, obj.manifest, obj.hash)
    sw = next(o for o in res.given if o.kind == "Sweep")
    gen = store.add_sweep(name="sw", space_hash=space_hash(sw.manifest), folder="", phase="Running", executor="local")
    folder = sweep_folder(tmp_path / "home", "sw", gen)
    folder.mkdir(parents=True)
    store.update_sweep("sw", gen, folder=str(folder))
    import optuna
    ctl = SW.Controller(store, tmp_path / "home", "sw", echo=lambda _: None)
    study = ctl.open_study(sw.spec).study
    assert isinstance(study.pruner, optuna.pruners.HyperbandPruner)
    assert study.pruner._max_resource == 9 and study.pruner._min_resource == 2
    assert isinstance(study.sampler, optuna.samplers.RandomSampler)
    study.ask()
    study.ask()
    again = SW.Controller(store, tmp_path / "home", "sw", echo=lambda _: None).open_study(sw.spec).study
    first = optuna.samplers.RandomSampler(seed=5)._rng.rng.random()
    assert again.sampler._rng.rng.random() != first  # seeded 5 + 2, not 5 again
    # hyperband needs room below the template's epochs
    p = _validate(tmp_path, sweep_doc(epochs=2, early="{type: hyperband, minEpochs: 2}"))
    assert p.returncode != 0 and "minEpochs 2 leaves no room" in p.stderr


class _Died(BaseException):
    """A controller killed at one exact step (BaseException: nothing on the way catches it)."""


@pytest.mark.slow
def test_a_trial_goes_on_from_the_step_its_dead_controller_reached(tmp_path, monkeypatch):
    """A controller SIGKILLed while creating a trial left it Creating; the next one used to fail
    it (seen in CI: test_local_sweep_extends_survives_its_controller, one trial Failed). Each
    controller here dies one step later in creating trial 0; the next goes on from there, and the
    trial ends Complete in its run's generation 1, started exactly once."""
    from aamctl.api.sweepspace import space_hash
    from aamctl.home import sweep_folder
    from aamctl.runs import apply as A
    from aamctl.sweeps import controller as SW
    from aamctl.runs.executors import LocalExecutor
    from aamctl.api.parse import parse_text
    from aamctl.runs.store import StateStore
    from aamctl.api.validate import validate

    monkeypatch.setenv("AAM_CACHE_DIR", str(tmp_path / "cache"))
    home = tmp_path / "home"
    store = StateStore(home)
    text = DATA + sweep_doc(algorithm="{type: random, seed: 5}", max_trials=1, parallelism=1, epochs=2)
    res = validate(parse_text(text, "s.yaml", tmp_path), store)
    for obj in res.given:
        store.put_object(obj.kind, obj.name, obj.manifest, obj.hash)
    sw = next(o for o in res.given if o.kind == "Sweep")
    gen = store.add_sweep(name="sw", space_hash=space_hash(sw.manifest), folder="", phase="Running", executor="local")
    folder = sweep_folder(home, "sw", gen)
    folder.mkdir(parents=True)
    store.update_sweep("sw", gen, folder=str(folder))
    said = []

    def die(*_a, **_k):
        raise _Died()

    real_submit = LocalExecutor.submit

    def started_then_died(self, run_folder):
        real_submit(self, run_folder)  # the launcher runs; its pid is lost with the controller
        raise _Died()

    faults = [("apply_manifests", SW, die),         # before its run is reserved
              ("write_plan", A, die),               # reserved, not written
              ("submit_plan", SW, die),             # written and linked, not started
              ("submit", LocalExecutor, started_then_died)]  # started, pid not recorded
    for attr, owner, fault in faults:
        with monkeypatch.context() as m:
            m.setattr(owner, attr, fault)
            ctl = SW.Controller(store, home, "sw", echo=said.append)
            with pytest.raises(_Died):
                ctl.step()
        (t,) = store.trials("sw", gen)
        assert t["state"] == "Creating", (attr, dict(t))
    rows = store.runs("sw-t0", all_generations=True)
    assert [r["generation"] for r in rows] == [1] and rows[0]["pid"] is None
    ctl = SW.Controller(store, home, "sw", poll=0.2, echo=said.append)
    assert ctl.run() == "Succeeded", said
    (t,) = store.trials("sw", gen)
    assert t["state"] == "Complete" and t["run_generation"] == 1 and t["value"] > 0, dict(t)
    rows = store.runs("sw-t0", all_generations=True)
    assert [r["generation"] for r in rows] == [1] and rows[0]["pid"], [dict(r) for r in rows]
    assert "was started before the last controller stopped; following it" in "\n".join(said)
    run_folder = Path(rows[0]["folder"])
    assert (run_folder / EXIT_CODE).read_text().strip() == "0"
    events = [e["event"] for e in store.events("sw-t0", 1)]
    # planned again after the write and the submit faults, not after the launch: started once
    assert events.count("Replanned") == 2 and events.count("Submitted") == 1, events
