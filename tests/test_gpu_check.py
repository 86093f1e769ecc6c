"""The prepared GPU check's CPU dry mode: the same plumbing as on a GPU node, at tiny sizes, so
the script cannot rot while no GPU is lent to us."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_gpu_check_dry_mode_runs_every_part_and_writes_its_summary(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, AAM_CACHE_DIR=str(tmp_path / "cache"))
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry", "--out", str(out)],
                       capture_output=True, text=True, timeout=600, env=env, cwd=str(tmp_path))
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    rows = {r["part"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    for part in ("env", "doctor", "throughput", "recipe"):
        assert rows[part]["state"] == "ok", rows[part]
    assert rows["distributed"]["state"] == "skip"
    assert "verdict: ready" in rows["doctor"]["detail"] and "golden numerics against cpu: ok" in rows["doctor"]["detail"]
    assert "samples/s, MFU" in rows["throughput"]["detail"]
    assert "finetune Succeeded" in rows["recipe"]["detail"] and "validation MAE" in rows["recipe"]["detail"]
    summary = (out / "summary.md").read_text()
    assert summary.startswith("| part | state | detail |") and "| recipe | ok |" in summary
    for log in ("env", "doctor", "throughput", "recipe"):
        assert (out / f"{log}.log").stat().st_size > 0
