"""What a sweep's controller costs per trial, and what reading a big leaderboard costs.

    .venv/bin/python benchmarks/sweep_overhead.py [--trials 20] [--board 1000]

1. Controller overhead per trial: ask Optuna (journal file), build the trial's Run and derived
   Model, validate and plan them through apply (record, scripts), write the run folder, record
   the trial; then tell Optuna a result. Submission is left out (a local process start or one
   sbatch per batch; both are the executor's cost, not the controller's).
2. `aamctl describe sweep` and `aamctl get sweeps` over a sweep of --board trials, end to end
   (a fresh aamctl process, as a user runs it) and the leaderboard query alone.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from aam_runtime.runfolder import RECORD  # noqa: E402
ORAL = ROOT / "examples" / "data" / "oral-age"

MANIFESTS = f"""apiVersion: aam/v1alpha1
kind: Dataset
metadata: {{name: bench}}
spec:
  table: {ORAL}/table.biom
  tree: {ORAL}/tree.nwk
  metadata: {{path: {ORAL}/metadata.tsv, sampleIdColumn: sample_id}}
  targets: [{{name: age, type: regression}}]
---
apiVersion: aam/v1alpha1
kind: Model
metadata: {{name: bench-tiny}}
spec: {{embeddingDim: 32, nucleotide: {{heads: 2, layers: 1}}, sample: {{heads: 2, layers: 1}},
        encoderHead: {{heads: 2, layers: 1}}, targetHead: {{heads: 2, layers: 1}}}}
"""


def sweep_manifest(max_trials: int) -> dict:
    return {"apiVersion": "aam/v1alpha1", "kind": "Sweep", "metadata": {"name": "bench-sweep"},
            "spec": {"template": {"stage": "finetune", "datasetRef": "bench", "modelRef": "bench-tiny",
                                  "hardwareRef": "cpu", "target": "age",
                                  "trainer": {"epochs": 5, "earlyStopping": {"metric": "mae"}}},
                     "parameters": [{"path": "spec.trainer.learningRate",
                                     "range": {"min": 1e-4, "max": 1e-2, "log": True}},
                                    {"path": "model.spec.targetHead.hidden", "values": [[], [32], [64, 32]]}],
                     "algorithm": {"type": "tpe", "seed": 0}, "objective": {"metric": "mae"},
                     "maxTrials": max_trials, "parallelism": max_trials}}


def controller_overhead(home: Path, n: int) -> dict:
    import yaml

    from aamctl.api.parse import parse_text
    from aamctl.api.sweepspace import space_hash
    from aamctl.api.validate import validate
    from aamctl.home import sweep_folder
    from aamctl.runs.apply import apply_manifests
    from aamctl.runs.store import StateStore
    from aamctl.sweeps import controller as SW

    store = StateStore(home)
    apply_manifests(store, None, documents=parse_text(MANIFESTS, "bench.yaml", ROOT), home=home, echo=lambda _: None)
    # the Sweep object and its generation, without starting a controller process
    text = yaml.safe_dump(sweep_manifest(n))
    res = validate(parse_text(text, "sweep.yaml", ROOT), store)
    sweep = res.given[0]
    store.put_object("Sweep", sweep.name, sweep.manifest, sweep.hash)
    gen = store.add_sweep(name=sweep.name, space_hash=space_hash(sweep.manifest), folder="", phase="Running",
                          executor="local")
    folder = sweep_folder(home, sweep.name, gen)
    folder.mkdir(parents=True)
    store.update_sweep(sweep.name, gen, folder=str(folder))
    ctl = SW.Controller(store, home, sweep.name, echo=lambda _: None)
    real_submit = SW.submit_plan
    SW.submit_plan = lambda *a, **k: None  # the executor's part is not the controller's
    try:
        t0 = time.perf_counter()
        ctl.open_study(sweep.manifest["spec"])
        t_open = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(n):
            ctl._create(ctl.study.ask(1), sweep.manifest)
        t_create = (time.perf_counter() - t0) / n
        t0 = time.perf_counter()
        for i in range(n):
            ctl._finish(i, "Complete", 5.0 + i * 0.01)
        t_tell = (time.perf_counter() - t0) / n
    finally:
        SW.submit_plan = real_submit
    states = [t["state"] for t in store.trials(sweep.name, gen)]
    folders = [p for p in (home / "runs").glob(f"bench-sweep-t*/1/{RECORD}")]
    assert states.count("Complete") == n and len(folders) == n, (states, len(folders))
    return {"trials": n, "open_study_s": round(t_open, 3), "create_per_trial_s": round(t_create, 3),
            "tell_per_trial_s": round(t_tell, 4), "per_trial_s": round(t_create + t_tell, 3)}


def board_speed(home: Path, n: int) -> dict:
    from aamctl.runs.store import StateStore
    from aamctl.sweeps.leaderboard import leaderboard

    store = StateStore(home)
    m = sweep_manifest(n)
    m["metadata"]["name"] = "big"
    store.put_object("Sweep", "big", m, "x")
    gen = store.add_sweep(name="big", space_hash="x", folder=str(home / "sweeps/big/1"), phase="Succeeded",
                          executor="local")
    now = time.time()
    with store.tx() as db:
        for i in range(n):
            db.execute("INSERT INTO trials (sweep, generation, number, run_name, run_generation, state, value, params, "
                       "created, finished) VALUES (?,?,?,?,?,?,?,?,?,?)",
                       ("big", gen, i, f"big-t{i}", 1, "Complete" if i % 5 else "Pruned",
                        8.0 - (i % 97) * 0.01 if i % 5 else None,
                        json.dumps({"spec.trainer.learningRate": 1e-4 * (1 + i % 50),
                                    "model.spec.targetHead.hidden": [32] if i % 2 else []}), now - 100, now))
    t0 = time.perf_counter()
    leaderboard(store, "big")
    t_query = time.perf_counter() - t0
    env = dict(os.environ, AAM_HOME=str(home))
    times = {}
    for what, args in (("describe", ["describe", "sweep", "big"]), ("describe_json", ["describe", "sweep", "big", "-o", "json"]),
                       ("get_sweeps", ["get", "sweeps"])):
        best = None
        for _ in range(3):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "aamctl.cli", *args], env=env, check=True, capture_output=True)
            dt = time.perf_counter() - t0
            best = dt if best is None else min(best, dt)
        times[what + "_s"] = round(best, 3)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "aamctl.cli", "version"], env=env, check=True, capture_output=True)
    times["aamctl_startup_s"] = round(time.perf_counter() - t0, 3)
    return {"board_trials": n, "leaderboard_query_s": round(t_query, 4), **times}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--board", type=int, default=1000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        a = controller_overhead(Path(tmp) / "ctl", args.trials)
        b = board_speed(Path(tmp) / "board", args.board)
    print(json.dumps({**a, **b}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
