"""How fast `aamctl status` answers with many runs (a login-node command must feel instant).

Creates a state folder with N finished runs (real run folders with status.json), then times
`aamctl status`, `aamctl get runs -o json` and `aamctl validate` on the examples as whole commands.

    .venv/bin/python benchmarks/status_runs.py [--runs 1000] [--repeat 5]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def timed(cmd, repeat):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, text=True)
        times.append(time.perf_counter() - t0)
        assert p.returncode == 0, p.stderr
    return statistics.median(times)


def main():
    from aam_runtime import runfolder as RF
    from aamctl.home import RUNS_DIR
    from aamctl.runs.store import StateStore

    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        store = StateStore(home)
        now = time.time()
        for i in range(a.runs):
            folder = home / RUNS_DIR / f"run-{i:04d}" / "1"
            folder.mkdir(parents=True)
            (folder / RF.STATUS).write_text(json.dumps({
                "phase": "Succeeded", "stage": "pretrain", "epoch": 10, "step": 1000, "total_steps": 1000,
                "last_metrics": {"loss": 0.5}, "best_metric": {"name": "val_loss", "value": 0.4, "step": 900},
                "heartbeat": now, "finished": now}))
            (folder / RF.EXIT_CODE).write_text(f"{RF.EXIT_OK}\n")
            store.add_run(name=f"run-{i:04d}", run_hash="h", stage="pretrain", executor="local", folder=str(folder),
                          phase="Succeeded", labels="{}", created=now - i)
        base = [sys.executable, "-m", "aamctl.cli", "--home", str(home)]
        print(f"aamctl status, {a.runs} runs:        {timed(base + ['status'], a.repeat) * 1000:6.0f} ms (median of {a.repeat})")
        print(f"aamctl get runs -o json, {a.runs} runs: {timed(base + ['get', 'runs', '-o', 'json'], a.repeat) * 1000:6.0f} ms")
        print(f"aamctl validate -f manifests/ -f examples/: "
              f"{timed(base + ['validate', '-f', str(ROOT / 'manifests'), '-f', str(ROOT / 'examples')], a.repeat) * 1000:6.0f} ms")
        print(f"python -c pass (interpreter start, for scale): {timed([sys.executable, '-c', 'pass'], a.repeat) * 1000:6.0f} ms")


if __name__ == "__main__":
    main()
