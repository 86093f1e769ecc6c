"""python -m aam_runtime RUN_DIR  (also through `accelerate launch -m aam_runtime RUN_DIR`).

Reads RUN_DIR/record.yaml, runs the stage, writes status, metrics, checkpoints, plots.
Exit codes: 0 done, 1 failed, 3 bad data, 75 checkpointed after a stop signal (requeue).
"""
from __future__ import annotations

import sys
import time
import traceback
from pathlib import Path

from .runfolder import EXIT_DATA_ERROR, EXIT_PREEMPTED, RunFolder


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 1 or argv[0] in ("-h", "--help"):
        print("usage: python -m aam_runtime RUN_DIR", file=sys.stderr)
        return 2
    run_dir = Path(argv[0])
    if not (run_dir / "record.yaml").exists():
        print(f"error: {run_dir}/record.yaml not found; create runs with 'aamctl apply'", file=sys.stderr)
        return 2
    folder = RunFolder(run_dir)
    from .config import RecordError, RunConfig
    from .data.table import DataError

    cfg = None
    rank0 = _rank() == 0
    try:
        cfg = RunConfig(run_dir)
        if rank0:
            started = folder.status().get("started") or time.time()
            folder.update_status(phase="Running", stage=cfg.stage, started=started, error=None, finished=None)
            folder.event("started", stage=cfg.stage)
        from .stages import run_stage
        summary = run_stage(cfg, folder)
        if rank0:
            folder.update_status(phase="Succeeded", finished=time.time(), final_metrics=summary)
            folder.event("finished", phase="Succeeded")
        return 0
    except (DataError, RecordError) as exc:
        return _fail(folder, cfg, str(exc), EXIT_DATA_ERROR, rank0)
    except KeyboardInterrupt:
        return _fail(folder, cfg, "interrupted", 130, rank0)
    except Exception as exc:
        from .train import Preempted
        if isinstance(exc, Preempted):
            if rank0:
                folder.update_status(phase="Preempted", reason="checkpointed after a stop signal; requeue to resume")
                folder.event("preempted")
                if cfg is not None:
                    cfg.wandb_finish(exit_code=EXIT_PREEMPTED)
            return EXIT_PREEMPTED
        traceback.print_exc()
        return _fail(folder, cfg, f"{type(exc).__name__}: {exc}", 1, rank0)


def _fail(folder: RunFolder, cfg, message: str, code: int, rank0: bool) -> int:
    print(f"error: {message}", file=sys.stderr, flush=True)
    if rank0:
        folder.update_status(phase="Failed", error=message.splitlines()[0] if message else "failed",
                             finished=time.time(), exit_code=code)
        folder.event("finished", phase="Failed", error=message)
        if cfg is not None:
            cfg.wandb_finish(exit_code=code)
    return code


def _rank() -> int:
    import os
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")) or 0) if "RANK" in os.environ else 0


if __name__ == "__main__":
    sys.exit(main())
