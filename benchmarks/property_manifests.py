"""Generated manifests, a larger budget than CI's: how many Hypothesis drew per kind, how many
apply --dry-run accepted or refused (with a position), and how many drawn Model + trainer
settings trained their first step or were refused before anything was queued. Any other outcome
(an internal error, a crash in the run) fails with Hypothesis's shrunk example.

    .venv/bin/python benchmarks/property_manifests.py [--examples 300] [--slow-examples 40]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=300, help="per kind, apply --dry-run")
    ap.add_argument("--slow-examples", type=int, default=40, help="drawn settings run to their first step")
    a = ap.parse_args()
    import tempfile

    report = Path(tempfile.mkdtemp(prefix="aam-props-")) / "tally.json"
    results = {}
    for label, test, n in (("dry-run", "test_generated_manifests_are_accepted_or_refused_with_a_position",
                            a.examples),
                           ("first-step", "test_generated_model_and_trainer_settings_train_a_first_step_or_are_refused",
                            a.slow_examples)):
        env = dict(os.environ, AAM_PROPERTY_EXAMPLES=str(n), AAM_PROPERTY_TALLY=str(report))
        t0 = time.time()
        p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
                            f"tests/test_properties.py::{test}"], cwd=ROOT, env=env, capture_output=True, text=True)
        tally = json.loads(report.read_text()) if report.exists() else {}
        report.unlink(missing_ok=True)
        results[label] = {"exit": p.returncode, "seconds": round(time.time() - t0), "tally": tally}
        print(f"{label}: {n} examples per test, exit {p.returncode}, {time.time() - t0:.0f}s")
        for kind, outcomes in sorted(tally.items()):
            print(f"  {kind:<16} " + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())))
        if p.returncode != 0:
            print(p.stdout[-4000:])
    return 0 if all(r["exit"] == 0 for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
