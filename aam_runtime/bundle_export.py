"""Write a run's trained model as a bundle (the format: bundle.py).

    python -m aam_runtime.bundle_export RUN_DIR OUT_DIR [--which best|last]

aamctl export run NAME --bundle OUT_DIR runs this (it reads torch checkpoints, which aamctl never
imports). The checkpoint is read as data (checkpoints.load_checkpoint); the folder is written
under a temporary name and renamed, so a reader never sees half a bundle.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import yaml

from aam_runtime.bundle import CARD, DESCRIPTION, FORMAT, METRICS, WEIGHTS, BundleError, model_card
from aam_runtime.checkpoints import load_checkpoint
from aam_runtime.data.table import DataError
from aam_runtime.runfolder import EXIT_DATA_ERROR, EXIT_USAGE, RECORD, checkpoint_name, read_status


def write_bundle(run_dir: Path, out: Path, which: str = "best") -> dict:
    """Write the bundle of a run's checkpoint `which` into out (a new or empty folder)."""
    import torch
    from safetensors.torch import save_file

    run_dir, out = Path(run_dir), Path(out)
    ckpt = run_dir / checkpoint_name(which)
    if not ckpt.is_file():
        raise BundleError(f"{ckpt} does not exist: the run has no {which} checkpoint (did it train and succeed?)")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BundleError(f"{out} exists and is not an empty folder; name a new folder for the bundle")
    state = load_checkpoint(ckpt, state_runs=run_dir.parent.parent)
    meta = state.get("meta") or {}
    if meta.get("stage") not in ("pretrain", "finetune"):
        raise BundleError(f"{ckpt} is not a training checkpoint of aam")
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state["model"].items()
               if isinstance(v, torch.Tensor)}
    try:
        record = list(yaml.safe_load_all((run_dir / RECORD).read_text()))
    except yaml.YAMLError as exc:
        raise BundleError(f"{run_dir / RECORD}: not readable as the run's record ({exc})") from None
    status = read_status(run_dir)
    tmp = out.with_name(f".{out.name}.{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(tensors, str(tmp / WEIGHTS), metadata={"format": FORMAT})
    desc = {"format": FORMAT, "run": meta.get("run"), "generation": _generation(run_dir), "checkpoint": which,
            "step": (state.get("state") or {}).get("step"), "meta": meta}
    (tmp / DESCRIPTION).write_text(json.dumps(desc, indent=1, sort_keys=True) + "\n")
    shutil.copyfile(run_dir / RECORD, tmp / RECORD)
    metrics = {"final": status.get("final_metrics"), "best": status.get("best_metric")}
    (tmp / METRICS).write_text(json.dumps(metrics, indent=1, sort_keys=True) + "\n")
    (tmp / CARD).write_text(model_card(desc, metrics, record))
    if out.exists():
        out.rmdir()
    os.replace(tmp, out)
    return desc


def _generation(run_dir: Path) -> int | None:
    return int(run_dir.name) if run_dir.name.isdigit() else None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m aam_runtime.bundle_export")
    p.add_argument("run_dir")
    p.add_argument("out")
    p.add_argument("--which", choices=("best", "last"), default="best")
    try:
        args = p.parse_args(argv)
    except SystemExit:
        return EXIT_USAGE
    try:
        desc = write_bundle(Path(args.run_dir), Path(args.out), args.which)
    except (BundleError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_DATA_ERROR
    except OSError as exc:
        print(f"error: {exc.filename or args.out}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_DATA_ERROR
    print(f"bundle of run/{desc['run']} ({args.which} checkpoint, step {desc['step']}) -> {Path(args.out).resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
