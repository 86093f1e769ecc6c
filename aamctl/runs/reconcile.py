"""Run phases, reconciled at each call from the executor and the run folder's files."""
from __future__ import annotations

import signal
import time
from pathlib import Path

from aam_runtime.runfolder import (EXIT_MEANINGS, EXIT_PREEMPTED, EXIT_PRUNED, LOG, LOW_SPACE, QUEUED, REQUEUES,
                                   WAITING, free_bytes, read_status)

from aamctl.phases import TERMINAL_RUN, RunPhase
from aamctl.runs.executors import SLURM_STATES, SlurmExecutor, pid_alive, read_exit_code, tail_lines
from aamctl.runs.store import StateError, StateStore

ORPHAN_AFTER = 120.0  # seconds a reserved run row may stay without a folder before it is called dead
STALE_AFTER = 600.0  # seconds without a heartbeat before a Running run is flagged


def _stale(status: dict) -> str | None:
    """'no heartbeat for Ns' for a run whose runtime says Running but has not written for long."""
    hb = status.get("heartbeat")
    if hb and time.time() - hb > STALE_AFTER and status.get("phase") == RunPhase.RUNNING:
        return f"no heartbeat for {int(time.time() - hb)}s"
    return None


def read_requeues(folder: Path) -> list[tuple[float, str, str]]:
    """The run folder's record of automatic SLURM requeues: (unix time, job id, cause) per line;
    cause is 'time limit', 'preempted', 'stop signal', or 'limit' for a requeue refused at
    executor.slurm.maxRequeues."""
    out = []
    try:
        lines = (folder / REQUEUES).read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        parts = line.split(" ", 2)
        if len(parts) == 3:
            try:
                out.append((float(parts[0]), parts[1], parts[2]))
            except ValueError:
                continue
    return out


def requeue_summary(folder: Path) -> str | None:
    """'3 (time limit 2, preempted 1)' for describe; None without requeues."""
    done = [c for _, _, c in read_requeues(folder) if c != "limit"]
    if not done:
        return None
    counts = {c: done.count(c) for c in dict.fromkeys(done)}
    return f"{len(done)} (" + ", ".join(f"{c} {n}" for c, n in counts.items()) + ")"


def _exit_reason(code: int, folder: Path, status: dict) -> str:
    if status.get("error"):
        return status["error"]
    requeues = read_requeues(folder) if code == EXIT_PREEMPTED else []
    if requeues and requeues[-1][2] == "limit":
        done = [c for _, _, c in requeues if c != "limit"]
        return (f"requeue limit reached: stopped checkpointed after {len(done)} automatic requeues "
                f"(executor.slurm.maxRequeues); aamctl resume continues from the checkpoint")
    if code in EXIT_MEANINGS:
        why = EXIT_MEANINGS[code]
    elif code > 128:
        try:
            why = f"killed by {signal.Signals(code - 128).name}"
        except ValueError:
            why = f"exit code {code}"
    else:
        why = f"exit code {code}"
    last = tail_lines(folder / LOG, 3)
    return why + (": " + " | ".join(last) if last else "")


def _queued_reason(folder: Path) -> str | None:
    """Why a local run waits for its share of the machine (the `queued` file), None when it does not."""
    try:
        return (folder / QUEUED).read_text().strip() or "waiting for its share of the machine"
    except FileNotFoundError:
        return None
    except OSError:
        return "waiting for its share of the machine"


def observe(row, slurm: SlurmExecutor | None = None) -> tuple[str, str | None, dict]:
    """(phase, reason, status.json) of one run row, without writing anything."""
    if row["phase"] in TERMINAL_RUN:
        return row["phase"], row["reason"], read_status(Path(row["folder"])) if row["folder"] else {}
    if not row["folder"]:
        # reserved by an apply (or a sweep controller) that died before it wrote the run: it
        # can never start; an apply still planning it takes well under a second
        if time.time() - row["created"] > ORPHAN_AFTER:
            return RunPhase.FAILED, "never written: the aamctl that planned it stopped first; re-apply to start it", {}
        return RunPhase.PENDING, None, {}
    folder = Path(row["folder"])
    status = read_status(folder)
    code = read_exit_code(folder)
    if row["executor"] == "local":
        alive = pid_alive(row["pid"], row["pid_start"])
        if code is not None:
            if code == 0:
                return RunPhase.SUCCEEDED, None, status
            if code == EXIT_PRUNED:
                return RunPhase.PRUNED, EXIT_MEANINGS[code], status
            return RunPhase.FAILED, _exit_reason(code, folder, status), status
        if alive:
            if (folder / WAITING).exists():
                return RunPhase.PENDING, "waiting for its initFrom run", status
            queued = _queued_reason(folder)
            if queued is not None:
                return RunPhase.QUEUED, queued, status
            # alive: Running whatever an earlier attempt left in status.json (Preempted, Failed...)
            return RunPhase.RUNNING, _stale(status), status
        if status.get("phase") == RunPhase.FAILED and status.get("error"):
            return RunPhase.FAILED, status["error"], status  # it said why, then could not write its exit code
        free = free_bytes(folder)
        if free is not None and free < LOW_SPACE:
            return RunPhase.FAILED, f"process ended without an exit status; no space left on device at {folder} " \
                             f"({free // 1024} KiB free)", status
        last = tail_lines(folder / LOG, 3)
        return RunPhase.FAILED, "process ended without an exit status (killed?)" + (": " + " | ".join(last) if last else ""), status
    # slurm
    slurm = slurm or SlurmExecutor()
    st = slurm.query(row["job_id"]) if row["job_id"] else None
    if st is None:
        # SLURM forgot the job (MinJobAge): trust the run folder
        if code == 0 or status.get("phase") == RunPhase.SUCCEEDED:
            return RunPhase.SUCCEEDED, None, status
        if code == EXIT_PRUNED:
            return RunPhase.PRUNED, EXIT_MEANINGS[code], status
        if code is not None:
            return RunPhase.FAILED, _exit_reason(code, folder, status), status
        if status.get("phase") == RunPhase.FAILED:
            return RunPhase.FAILED, status.get("error"), status
        return RunPhase.FAILED, "SLURM no longer knows the job and it left no final status", status
    base = st.state.split("+")[0].split()[0]
    phase = SLURM_STATES.get(base, RunPhase.RUNNING)
    reason = st.reason
    if code == EXIT_PRUNED and phase in (RunPhase.FAILED, RunPhase.SUCCEEDED):
        return RunPhase.PRUNED, EXIT_MEANINGS[code], status
    if phase == RunPhase.FAILED:
        reason = f"SLURM state {base}" + (f" ({st.reason})" if st.reason else "")
        if status.get("error"):
            reason += f": {status['error']}"
        elif code is not None:
            reason = f"SLURM state {base}: " + _exit_reason(code, folder, status)
    if phase == RunPhase.SUCCEEDED and code not in (None, 0):
        phase, reason = RunPhase.FAILED, _exit_reason(code, folder, status)
    if phase == RunPhase.RUNNING and status.get("phase") == "Preempted":
        phase, reason = RunPhase.REQUEUED, "checkpointed; waiting to be requeued"
    elif phase == RunPhase.RUNNING and not reason:
        reason = _stale(status)
    if phase == RunPhase.PENDING and base.startswith("REQUEUE"):
        phase = RunPhase.REQUEUED
    return phase, reason, status


def reconcile(store: StateStore, rows) -> list[tuple]:
    """Observe each row, store phase changes, return (row, phase, reason, status) tuples."""
    out = []
    slurm = None
    for row in rows:
        if row["executor"] == "slurm" and row["phase"] not in TERMINAL_RUN and slurm is None:
            slurm = SlurmExecutor()
        phase, reason, status = observe(row, slurm)
        if phase != row["phase"] or (reason != row["reason"] and phase not in TERMINAL_RUN):
            extra = {}
            if phase in TERMINAL_RUN:
                extra["finished"] = status.get("finished") or time.time()
                code = read_exit_code(Path(row["folder"]))
                if code is not None:
                    extra["exit_code"] = code
            if phase == RunPhase.RUNNING and not row["started"]:
                extra["started"] = status.get("started") or time.time()
            try:
                store.set_phase(row["name"], row["generation"], phase, reason, **extra)
                row = store.run(row["name"], row["generation"])
            except StateError as exc:
                # a read-only or full state folder: show what we observed, say once that it was not kept
                store.write_problem = store.write_problem or exc
        out.append((row, phase, reason, status))
    return out
