"""What can be done to a run once it exists: cancel it, resume it. The verbs (`cancel`,
`resume`, `delete`) and a sweep's cancel call these; they decide from the run observed now."""
from __future__ import annotations

import time
from pathlib import Path

from aam_runtime import runfolder as RF

from aamctl.errors import AamError, Diagnostic
from aamctl.phases import ACTIVE_RUN, RunPhase
from aamctl.runs.executors import executor_for
from aamctl.runs.reconcile import reconcile


def cancel_run(store, row) -> tuple[bool, str, bool]:
    """Cancel a run if it is active now: (cancelled, its phase as observed before, whether its
    processes needed SIGKILL). A local run's processes are gone when this returns (SIGTERM,
    then SIGKILL after the grace period)."""
    (row, phase, _, _), = reconcile(store, [row])
    if phase not in ACTIVE_RUN:
        return False, phase, False
    stopped = executor_for(row["executor"]).cancel(row)
    if stopped is False:
        store.add_event(row["name"], row["generation"], "Killed", "did not stop within the grace period of SIGTERM")
    folder = Path(row["folder"])
    if not (folder / RF.EXIT_CODE).exists() and row["executor"] == "local":
        RF.atomic_write(folder / RF.EXIT_CODE, f"{RF.EXIT_CANCELLED}\n")
    store.set_phase(row["name"], row["generation"], RunPhase.CANCELLED, "cancelled by user", finished=time.time())
    return True, phase, stopped is False


def resume_run(store, row, phase: str) -> bool:
    """Start a stopped run again in its own folder (phase: as observed now); it continues from
    its last checkpoint. Whether it had one."""
    name = row["name"]
    if phase in ACTIVE_RUN:
        raise AamError(Diagnostic(f"run/{name} is {phase}; nothing to resume", file="aamctl"))
    if phase == RunPhase.SUCCEEDED:
        raise AamError(Diagnostic(f"run/{name} already succeeded", file="aamctl",
                                  hint="change the manifest (or apply --force) for a new generation"))
    folder = Path(row["folder"])
    for flag in (RF.EXIT_CODE, RF.PREEMPT_FLAG, RF.WAITING, RF.QUEUED, RF.CANCEL_FLAG):
        (folder / flag).unlink(missing_ok=True)
    info = executor_for(row["executor"]).submit(folder)
    store.update_run(row["name"], row["generation"], **info)
    store.set_phase(row["name"], row["generation"], RunPhase.PENDING, "resumed by user", finished=None, exit_code=None)
    return (folder / RF.checkpoint_name("last")).exists()
