"""Wall time of a pipeline through the path users take: `aamctl apply -f DIR --wait`, local executor.

    .venv/bin/python benchmarks/local_pipeline.py [--manifests manifests] [--work DIR]
        [--pretrain-epochs N] [--finetune-epochs N] [--label NAME] [--out FILE]

Copies the manifests (every Run's trainer.epochs may be shortened, per stage, to time a cheaper
version of the same shape), applies them into a fresh state folder and waits, then prints, per
run, the span its own process ran (first to last event of events.jsonl) and, for the whole
apply, the wall time against the sum of those spans and the digest of every predictions.tsv, so
two invocations (say, two checkouts of aam: run this script with PYTHONPATH=<checkout>) can be
compared: the same digests mean the same predictions.

A run's span is its solo time only where it ran alone; where runs overlapped (every ready run
started at once, as before the local executor shared the machine) the spans are longer, and the
wall time is what the user waits.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def copy_manifests(src: Path, dst: Path, epochs: dict[str, int | None]) -> None:
    """src's YAML files into dst, data paths made absolute, epochs replaced per stage."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.glob("*.yaml")):
        docs = list(yaml.safe_load_all(f.read_text()))
        for d in docs:
            if not isinstance(d, dict):
                continue
            spec = d.get("spec") or {}
            if d.get("kind") == "Dataset":
                for key in ("table", "tree", "distanceMatrix"):
                    if spec.get(key):
                        spec[key] = str((f.parent / spec[key]).resolve())
                if (spec.get("metadata") or {}).get("path"):
                    spec["metadata"]["path"] = str((f.parent / spec["metadata"]["path"]).resolve())
            if d.get("kind") == "Run" and epochs.get(spec.get("stage")) and "trainer" in spec:
                spec["trainer"]["epochs"] = epochs[spec["stage"]]
        (dst / f.name).write_text(yaml.safe_dump_all(docs, sort_keys=False))


def span(folder: Path) -> float | None:
    try:
        lines = (folder / "events.jsonl").read_text().splitlines()
        events = [json.loads(x) for x in lines if x.strip()]
        return events[-1]["time"] - events[0]["time"]
    except (OSError, ValueError, KeyError, IndexError):
        return None


def digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    except OSError:
        return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--manifests", default=str(ROOT / "manifests"))
    ap.add_argument("--work", default=None, help="folder for the copy and the state (default: a new temporary one)")
    ap.add_argument("--pretrain-epochs", type=int, default=None)
    ap.add_argument("--finetune-epochs", type=int, default=None)
    ap.add_argument("--label", default="run")
    ap.add_argument("--out", default=None, help="append the result as one JSON line to this file")
    opts = ap.parse_args()
    import tempfile

    work = Path(opts.work or tempfile.mkdtemp(prefix="aam-pipeline-"))
    if (work / "home").exists():
        shutil.rmtree(work / "home")
    copy_manifests(Path(opts.manifests), work / "manifests",
                   {"pretrain": opts.pretrain_epochs, "finetune": opts.finetune_epochs})
    env = dict(os.environ, AAM_CACHE_DIR=str(work / "cache"))
    cmd = [sys.executable, "-m", "aamctl.cli", "--home", str(work / "home"), "apply", "-f", str(work / "manifests"),
           "--wait"]
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.time() - t0
    if p.returncode != 0:
        print(p.stdout + p.stderr, file=sys.stderr)
    runs = {}
    for folder in sorted((work / "home" / "runs").glob("*/1")):
        runs[folder.parent.name] = {"span_s": span(folder), "predictions": digest(folder / "predictions.tsv")}
    total = sum(r["span_s"] or 0 for r in runs.values())
    result = {"label": opts.label, "exit": p.returncode, "wall_s": round(wall, 1), "sum_of_spans_s": round(total, 1),
              "cpus": os.environ.get("AAM_LOCAL_CPUS") or len(os.sched_getaffinity(0)),
              "pretrain_epochs": opts.pretrain_epochs, "finetune_epochs": opts.finetune_epochs,
              "runs": {k: {"span_s": round(v["span_s"], 1) if v["span_s"] is not None else None,
                           "predictions": v["predictions"]} for k, v in runs.items()}}
    print(f"{'run':<28} {'span s':>8}  predictions")
    for name, r in result["runs"].items():
        print(f"{name:<28} {r['span_s'] if r['span_s'] is not None else '-':>8}  {r['predictions'] or '-'}")
    print(f"{opts.label}: apply --wait took {wall:.0f} s (exit {p.returncode}); sum of the runs' spans {total:.0f} s")
    if opts.out:
        with open(opts.out, "a") as f:
            f.write(json.dumps(result) + "\n")
    return p.returncode


if __name__ == "__main__":
    sys.exit(main())
