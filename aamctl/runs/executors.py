"""Where runs execute: a detached local process, or a SLURM batch job. Side effects live here."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from aam_runtime.localslots import SUBMITTED_VAR
from aam_runtime.runfolder import CANCEL_FLAG, EXIT_CODE, LAUNCHER_LOG, LOCAL_SCRIPT, PID, SLURM_SCRIPT

from aamctl.errors import AamError, Diagnostic
from aamctl.phases import RunPhase

SLURM_TIMEOUT = float(os.environ.get("AAM_SLURM_TIMEOUT", "20"))


def proc_start_time(pid: int) -> float | None:
    """Start time of a process in clock ticks since boot (Linux), to tell a pid from its reuse."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        return float(stat.rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def pid_alive(pid: int | None, start: float | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    now_start = proc_start_time(pid)
    if start is not None and now_start is not None and now_start != start:
        return False  # the pid was reused by another process
    if now_start is not None:
        try:
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
            if state == "Z":
                return False
        except OSError:
            pass
    return True


def group_alive(pgid: int | None) -> bool:
    """Whether any process of a process group is still there (zombies do not count)."""
    if not pgid:
        return False
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # killpg(0) also answers for zombies waiting for their parent: look for a live member
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
        return False
    except OSError:
        return True


class LocalExecutor:
    name = "local"

    def submit(self, folder: Path) -> dict:
        script = folder / LOCAL_SCRIPT
        # its place in the local executor's queue (aam_runtime.localslots): first submitted, first served
        env = dict(os.environ, **{SUBMITTED_VAR: str(time.time_ns())})
        with open(os.devnull, "rb") as devnull_in, open(folder / LAUNCHER_LOG, "ab") as out:
            proc = subprocess.Popen(["bash", str(script)], cwd=str(folder), stdin=devnull_in, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True, close_fds=True, env=env)
        # reap the child in the background of this (short-lived) process: nothing to do; the
        # session leader survives us and its exit code goes to the exit_code file.
        return {"pid": proc.pid, "pid_start": proc_start_time(proc.pid)}

    def find(self, folder: Path) -> dict | None:
        """The live launcher of a folder whose pid was never recorded (its submitter died between
        starting it and writing the pid down): the pid the script wrote into the folder, else (it
        had not yet) a search of /proc; either way only a process whose command line is this
        folder's launch script counts, so a reused pid is never taken for it."""
        want = b"bash\0" + os.fsencode(str(folder / LOCAL_SCRIPT)) + b"\0"

        def launcher(pid: int) -> dict | None:
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if f.read() != want:
                        return None
            except OSError:
                return None
            start = proc_start_time(pid)
            return {"pid": pid, "pid_start": start} if pid_alive(pid, start) else None

        try:
            found = launcher(int((folder / PID).read_text().strip()))
            if found is not None:
                return found
        except (OSError, ValueError):
            pass
        try:
            pids = [int(e.name) for e in os.scandir("/proc") if e.name.isdigit()]
        except OSError:
            return None
        return next((f for f in map(launcher, pids) if f is not None), None)

    def cancel(self, row, grace: float = 10.0) -> bool:
        """SIGTERM to the run's whole process group (its launcher and the training under it), then
        SIGKILL after `grace` seconds to whatever is left: a process busy in native code (a UniFrac
        matrix) handles SIGTERM only when it returns to Python, long after its launcher is gone.
        True when the group had ended by then; False when it needed SIGKILL."""
        pid = row["pid"]
        if not pid_alive(pid, row["pid_start"]) and not group_alive(pid):
            return True
        if row["folder"]:
            try:  # the runtime reads it when the signal lands: a cancel, not a pre-emption to resume
                (Path(row["folder"]) / CANCEL_FLAG).write_text("cancelled by aamctl\n")
            except OSError:
                pass
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            return True
        deadline = time.time() + grace
        while time.time() < deadline and group_alive(pid):
            time.sleep(0.2)
        if not group_alive(pid):
            return True
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            return True
        deadline = time.time() + 5
        while time.time() < deadline and group_alive(pid):
            time.sleep(0.1)
        return False


# ------------------------------------------------------------------ SLURM

SLURM_STATES = {
    "PENDING": RunPhase.PENDING, "CONFIGURING": RunPhase.PENDING, "REQUEUED": RunPhase.PENDING,
    "REQUEUE_HOLD": RunPhase.PENDING, "REQUEUE_FED": RunPhase.PENDING,
    "RESIZING": RunPhase.RUNNING, "SUSPENDED": RunPhase.RUNNING, "RUNNING": RunPhase.RUNNING,
    "COMPLETING": RunPhase.RUNNING, "STAGE_OUT": RunPhase.RUNNING, "SIGNALING": RunPhase.RUNNING,
    "COMPLETED": RunPhase.SUCCEEDED,
    "FAILED": RunPhase.FAILED, "OUT_OF_MEMORY": RunPhase.FAILED, "NODE_FAIL": RunPhase.FAILED,
    "BOOT_FAIL": RunPhase.FAILED, "DEADLINE": RunPhase.FAILED, "TIMEOUT": RunPhase.FAILED,
    "SPECIAL_EXIT": RunPhase.FAILED, "PREEMPTED": RunPhase.REQUEUED,
    "CANCELLED": RunPhase.CANCELLED, "REVOKED": RunPhase.CANCELLED,
}


@dataclass
class SlurmState:
    state: str
    reason: str | None = None
    exit_code: str | None = None
    source: str = "squeue"


SLURM_RETRIES = int(os.environ.get("AAM_SLURM_RETRIES", "3"))  # extra attempts after a transient failure
SLURM_RETRY_DELAY = float(os.environ.get("AAM_SLURM_RETRY_DELAY", "2"))  # first back-off, doubled each time
# what SLURM's clients print when slurmctld is busy, restarting or unreachable: nothing was done,
# so the same command may be sent again
TRANSIENT = ("Unable to contact slurm controller", "Resource temporarily unavailable", "Connection refused",
             "Socket timed out", "Zero Bytes were transmitted or received", "slurmctld not responding")


def _run(cmd: list[str], timeout: float = SLURM_TIMEOUT, *, retry_timeout: bool = True) -> subprocess.CompletedProcess:
    """Run a SLURM client command; a transient failure (see TRANSIENT, or no answer in time when
    retry_timeout) is retried with exponential back-off, AAM_SLURM_RETRIES times. sbatch passes
    retry_timeout=False: a submission that timed out may have been queued, and sending it again
    would queue the run twice."""
    delay = SLURM_RETRY_DELAY
    attempt = -1
    while True:
        attempt += 1
        last = attempt >= SLURM_RETRIES
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except FileNotFoundError:
            raise AamError(Diagnostic(f"'{cmd[0]}' not found: SLURM commands are not installed on this machine",
                                      file="aamctl", hint="run aamctl on a login node of the cluster, or use executor type local")) from None
        except subprocess.TimeoutExpired:
            if retry_timeout and not last:
                time.sleep(delay)
                delay *= 2
                continue
            raise AamError(Diagnostic(f"'{' '.join(cmd[:2])}' did not answer within {timeout:.0f}s"
                                      + (f" ({attempt + 1} attempts)" if attempt else ""), file="aamctl",
                                      hint="slurmctld may be busy or down; try again, or raise AAM_SLURM_TIMEOUT")) from None
        said = (p.stderr or "") + (p.stdout or "")
        if p.returncode != 0 and not last and any(t in said for t in TRANSIENT) and \
                (retry_timeout or "Socket timed out" not in said):
            time.sleep(delay)
            delay *= 2
            continue
        return p


class SlurmExecutor:
    name = "slurm"

    def submit(self, folder: Path, dependency: str | None = None, script: Path | None = None) -> dict:
        script = script or folder / SLURM_SCRIPT
        cmd = ["sbatch", "--parsable"]
        if dependency:
            cmd.append(f"--dependency=afterok:{dependency}")
        cmd.append(str(script))
        proc = _run(cmd, retry_timeout=False)
        if proc.returncode != 0:
            msg = (proc.stderr or proc.stdout).strip().splitlines()
            raise AamError(Diagnostic(f"sbatch refused the job: {msg[-1] if msg else proc.returncode}",
                                      file=str(script),
                                      hint="check partition, account and limits in the HardwareProfile and Run"))
        job_id = proc.stdout.strip().split(";")[0]
        if not re.fullmatch(r"[0-9]+", job_id):
            raise AamError(Diagnostic(f"sbatch answered '{proc.stdout.strip()}', not a job id", file="aamctl"))
        return {"job_id": job_id}

    def query(self, job_id: str) -> SlurmState | None:
        """squeue, then scontrol, then sacct; None when SLURM has forgotten the job."""
        p = _run(["squeue", "-h", "-j", job_id, "-o", "%T|%r"])
        if p.returncode == 0 and p.stdout.strip():
            state, _, reason = p.stdout.strip().splitlines()[0].partition("|")
            return SlurmState(state.strip(), None if reason in ("None", "") else reason, source="squeue")
        p = _run(["scontrol", "-o", "show", "job", job_id])
        if p.returncode == 0 and "JobState=" in p.stdout:
            fields = dict(kv.split("=", 1) for kv in p.stdout.split() if "=" in kv)
            reason = fields.get("Reason")
            return SlurmState(fields.get("JobState", "UNKNOWN"), None if reason in (None, "None") else reason,
                              fields.get("ExitCode"), source="scontrol")
        p = _run(["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State,ExitCode"])
        if p.returncode == 0 and p.stdout.strip():
            state, _, code = p.stdout.strip().splitlines()[-1].partition("|")
            return SlurmState(state.split()[0], None, code, source="sacct")
        return None

    def cancel(self, row, grace: float = 0) -> None:
        if row["job_id"]:
            try:  # before scancel: its SIGTERM looks like a pre-emption to the job script
                (Path(row["folder"]) / CANCEL_FLAG).write_text("cancelled by aamctl\n")
            except OSError:
                pass
            _run(["scancel", str(row["job_id"])])


def executor_for(name: str):
    return {"local": LocalExecutor, "slurm": SlurmExecutor}[name]()


def tail_lines(path: Path, n: int = 5) -> list[str]:
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - 16384))
            data = f.read().decode("utf-8", "replace")
    except OSError:
        return []
    return [line for line in data.splitlines() if line.strip()][-n:]


def read_exit_code(folder: Path) -> int | None:
    try:
        return int((folder / EXIT_CODE).read_text().strip())
    except (OSError, ValueError):
        return None

