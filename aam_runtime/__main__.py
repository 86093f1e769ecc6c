"""python -m aam_runtime RUN_DIR  (also through `accelerate launch -m aam_runtime RUN_DIR`).

Reads RUN_DIR/record.yaml, runs the stage, writes status, metrics, checkpoints, plots.
Exit codes are the run folder's contract (runfolder.EXIT_*): 0 done, 1 failed, 3 bad data,
5 hardware missing, 6 no space (or another write error) in the run folder, 75 checkpointed
after a stop signal (requeue), 76 pruned by a sweep.
"""
from __future__ import annotations

import os
import sys
import time
import traceback
from pathlib import Path

from aam_runtime import runfolder as RF
from aam_runtime.errors import HardwareMissing
from aam_runtime.runfolder import RunFolder


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 1 or argv[0] in ("-h", "--help"):
        print("usage: python -m aam_runtime RUN_DIR", file=sys.stderr)
        return RF.EXIT_USAGE
    run_dir = Path(argv[0])
    if not (run_dir / RF.RECORD).exists():
        print(f"error: {run_dir}/{RF.RECORD} not found; create runs with 'aamctl apply'", file=sys.stderr)
        return RF.EXIT_USAGE
    folder = RunFolder(run_dir)
    rank0 = _rank() == 0
    code = _run(folder, run_dir, rank0)
    if rank0:
        # `accelerate launch` (torchrun) exits 1 whatever code its workers returned, so the job
        # scripts read the runtime's own code from here: a checkpointed stop (75) must requeue
        try:
            RF.atomic_write(folder.path / RF.RUNTIME_EXIT, f"{code}\n")
        except OSError:
            pass
    return code


def _run(folder: RunFolder, run_dir: Path, rank0: bool) -> int:
    from aam_runtime.config import RecordError, RunConfig
    from aam_runtime.data.table import DataError

    cfg = None
    try:
        if rank0:
            folder.reserve_space()
        cfg = RunConfig(run_dir)
        if rank0:
            started = folder.status().get("started") or time.time()
            folder.update_status(phase="Running", stage=cfg.stage, started=started, error=None, finished=None)
            folder.event("started", stage=cfg.stage)
            if cfg.staged:
                _say(f"reading {len(cfg.staged)} data files from node-local scratch {os.environ.get('AAM_SCRATCH')}")
        from aam_runtime.stages import run_stage
        summary = run_stage(cfg, folder)
        _leave_process_group()
        if rank0:
            folder.update_status(phase="Succeeded", finished=time.time(), final_metrics=summary)
            folder.event("finished", phase="Succeeded")
            folder.release_reserve()
        return RF.EXIT_OK
    except (DataError, RecordError) as exc:
        return _fail(folder, cfg, str(exc), RF.EXIT_DATA_ERROR, rank0)
    except HardwareMissing as exc:
        return _fail(folder, cfg, str(exc), RF.EXIT_NO_HARDWARE, rank0)
    except KeyboardInterrupt:
        return _fail(folder, cfg, "interrupted", 130, rank0)
    except Exception as exc:
        from aam_runtime.train import Preempted, Pruned
        if isinstance(exc, (Preempted, Pruned)):
            _leave_process_group()  # every rank stops at the same step
        if isinstance(exc, Pruned):
            if rank0:
                folder.update_status(phase="Pruned", finished=time.time(), reason="pruned by its sweep")
                folder.event("finished", phase="Pruned")
                if cfg is not None:
                    cfg.tracking_finish(exit_code=RF.EXIT_PRUNED)
                folder.release_reserve()
            return RF.EXIT_PRUNED
        if isinstance(exc, Preempted):
            if rank0 and (folder.path / RF.CANCEL_FLAG).exists():  # aamctl cancel, not a pre-emption
                folder.update_status(phase="Cancelled", finished=time.time(),
                                     reason="cancelled by aamctl (checkpointed: 'aamctl resume' continues it)")
                folder.event("finished", phase="Cancelled")
                if cfg is not None:
                    cfg.tracking_finish(exit_code=RF.EXIT_CANCELLED)
                folder.release_reserve()
                return RF.EXIT_CANCELLED
            if rank0:
                folder.update_status(phase="Preempted", reason="checkpointed after a stop signal; requeue to resume")
                folder.event("preempted")
                if cfg is not None:
                    cfg.tracking_finish(exit_code=RF.EXIT_PREEMPTED)
                folder.release_reserve()
            return RF.EXIT_PREEMPTED
        cause = RF.storage_cause(exc)
        if cause is not None:
            message = RF.describe_storage_error(cause, folder.path)  # free space as the run saw it
            folder.release_reserve()  # what lets the lines below reach the disk
            return _fail(folder, cfg, message, RF.EXIT_NO_SPACE, rank0, tracking=False)
        _say(traceback.format_exc())
        return _fail(folder, cfg, f"{type(exc).__name__}: {exc}", RF.EXIT_FAILED, rank0)


def _leave_process_group() -> None:
    """Every rank leaves the torch.distributed group once all have finished (accelerate's
    end_training does the same). A gloo rank that exits with the group still up can abort
    ("terminate called without an active exception", SIGABRT) when its peer closes first, and
    torchrun then fails a finished job: 4 of 70 bare 2-process gloo jobs here, 0 of 40 with this.
    Teardown trouble after the work is done is said in the log, never turned into a failure."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    except Exception as exc:  # pragma: no cover - nothing left to lose at this point
        _say(f"warning: leaving the process group: {type(exc).__name__}: {exc}")


def _say(text: str) -> None:
    """Print to the log, which may itself be on the full disk: never raise from here."""
    try:
        print(text, file=sys.stderr, flush=True)
    except OSError:
        _silence_std_streams()


def _silence_std_streams() -> None:
    # A failed flush at interpreter exit would turn our exit code into 120: point the streams
    # at /dev/null once they cannot be written.
    try:
        devnull = open(os.devnull, "w")
        sys.stdout, sys.stderr = devnull, devnull
    except OSError:  # pragma: no cover
        pass


def _fail(folder: RunFolder, cfg, message: str, code: int, rank0: bool, tracking: bool = True) -> int:
    _say(f"error: {message}")
    if rank0:
        try:
            folder.update_status(phase="Failed", error=message.splitlines()[0] if message else "failed",
                                 finished=time.time(), exit_code=code)
            folder.event("finished", phase="Failed", error=message)
        except OSError as exc:  # the exit code still tells the controller what happened
            _say(f"error: cannot write {RF.STATUS} either ({exc})")
        if cfg is not None and tracking:
            cfg.tracking_finish(exit_code=code)
        folder.release_reserve()
    try:
        sys.stdout.flush()
    except OSError:
        _silence_std_streams()
    return code


def _rank() -> int:
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")) or 0) if "RANK" in os.environ else 0


if __name__ == "__main__":
    sys.exit(main())
