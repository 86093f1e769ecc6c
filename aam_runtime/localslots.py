"""The local executor's small scheduler: a run waits here until its share of the machine is free.

    python -m aam_runtime.localslots --slots DIR --label run/NAME --cpus auto|N --processes P
        --accelerator cpu|cuda|rocm [--threads auto|N] -- COMMAND...

There is no daemon. Every core and GPU the local executor may hand out is a file in DIR
(`cpu-0`, `gpu-0`...), and a run holds the ones it got with flock(2) for as long as its
command lives: the kernel releases them when the process ends, however it ends (SIGKILL,
OOM, reboot), so nothing is ever leaked. Runs are served first come, first served: each
waiting run holds a ticket in DIR/queue named by its submission time, and only the oldest live
ticket may take slots (a ticket whose holder died is unlocked and is removed by the next
comer). While it waits, the run folder holds a `queued` file with the reason, which
`aamctl get runs` shows as phase Queued.

Once it has its share it sets the threads each process may use (OMP_NUM_THREADS: cores / P,
unless the profile set it), names its devices (CUDA_VISIBLE_DEVICES or HIP_VISIBLE_DEVICES),
and execs the command with the locks still open, so they belong to the run itself.
"""
from __future__ import annotations

import argparse
import fcntl
import os
import sys
import time
from pathlib import Path

from aam_runtime.machine import VISIBLE_VAR, MachineError, usable_cpus, visible_gpu_ids
from aam_runtime.runfolder import EXIT_NO_HARDWARE, EXIT_USAGE, QUEUED, atomic_write

SUBMITTED_VAR = "AAM_SUBMITTED_NS"  # set by the local executor: the run's place in the queue
POLL = float(os.environ.get("AAM_LOCAL_POLL", "1.0"))  # seconds between attempts while queued


def request(cpus: str, processes: int, accelerator: str, machine_cpus: int) -> tuple[int, int]:
    """(cores, GPUs) a run takes: cpusPerTask x processes (auto: every core), one GPU a process."""
    need_cpu = machine_cpus if cpus == "auto" else int(cpus) * processes
    need_gpu = processes if accelerator in VISIBLE_VAR else 0
    return need_cpu, need_gpu


def threads_per_process(threads: str | None, cores: int, processes: int) -> int | None:
    """OMP_NUM_THREADS for each process: the profile's number, else its share of the cores."""
    if threads is None:
        return None
    if threads != "auto":
        return int(threads)
    return max(1, cores // max(1, processes))


class Slots:
    """The slot files of one local executor, and what one run holds of them."""

    def __init__(self, folder: Path, label: str):
        self.folder = Path(folder)
        self.label = label
        self.held: dict[str, int] = {}  # slot file name -> open, locked fd
        (self.folder / "queue").mkdir(parents=True, exist_ok=True)

    def _lock(self, name: str) -> int | None:
        fd = os.open(self.folder / name, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return None
        return fd

    def holder(self, name: str) -> str | None:
        try:
            return (self.folder / name).read_text().strip() or None
        except OSError:
            return None

    def take(self, prefix: str, count: int, ids: list[str]) -> list[str] | None:
        """Lock `count` free slots among prefix-0..prefix-(len(ids)-1): their ids, or None (and
        nothing kept) when fewer are free."""
        got: list[tuple[str, int, str]] = []
        for i, ident in enumerate(ids):
            if len(got) == count:
                break
            fd = self._lock(f"{prefix}-{i}")
            if fd is not None:
                got.append((f"{prefix}-{i}", fd, ident))
        if len(got) < count:
            for _, fd, _ in got:
                os.close(fd)
            return None
        for name, fd, _ in got:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (self.label + "\n").encode(), 0)
            self.held[name] = fd
        return [ident for _, _, ident in got]

    def release(self) -> None:
        for fd in self.held.values():
            os.close(fd)
        self.held.clear()

    def busy_holders(self, prefix: str, n: int) -> list[str]:
        """Who holds the slots of one kind now (each run named once)."""
        out: list[str] = []
        for i in range(n):
            name = f"{prefix}-{i}"
            fd = self._lock(name)
            if fd is not None:
                os.close(fd)
                continue
            who = self.holder(name) or "another run"
            if who not in out:
                out.append(who)
        return out


def _ticket(slots: Slots, order: int) -> tuple[str, int]:
    """Take a place in the queue. Under the mutex: a ticket is never seen unlocked (and taken for a
    dead run's) between its creation and its lock."""
    name = f"{order:020d}-{os.getpid()}"
    mutex = os.open(slots.folder / "alloc.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(mutex, fcntl.LOCK_EX)
        fd = os.open(slots.folder / "queue" / name, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.pwrite(fd, (slots.label + "\n").encode(), 0)
    finally:
        os.close(mutex)
    return name, fd


def _ahead(slots: Slots, mine: str) -> list[str]:
    """Live tickets older than mine (their runs' labels); dead ones are removed."""
    out = []
    queue = slots.folder / "queue"
    for name in sorted(os.listdir(queue)):
        if name >= mine:
            break
        path = queue / name
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                out.append(path.read_text().strip() or name)
            except OSError:
                out.append(name)
        else:  # nobody holds it: its run is gone
            path.unlink(missing_ok=True)
        finally:
            os.close(fd)
    return out


def acquire(slots: Slots, need_cpu: int, cpu_total: int, need_gpu: int, gpu_ids: list[str], order: int,
            on_wait=None, poll: float = POLL) -> list[str]:
    """Wait for need_cpu cores and need_gpu GPUs; the GPU ids taken. on_wait(reason) is called
    whenever the reason for waiting changes."""
    ticket, ticket_fd = _ticket(slots, order)
    last = None
    try:
        while True:
            mutex = os.open(slots.folder / "alloc.lock", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(mutex, fcntl.LOCK_EX)
                ahead = _ahead(slots, ticket)
                reason = None
                if ahead:
                    reason = f"queued behind {len(ahead)} run{'s' if len(ahead) > 1 else ''} " \
                             f"({', '.join(ahead[:3])}{', ...' if len(ahead) > 3 else ''})"
                else:
                    cpus = slots.take("cpu", need_cpu, [str(i) for i in range(cpu_total)])
                    gpus = slots.take("gpu", need_gpu, gpu_ids) if cpus is not None else None
                    if cpus is not None and gpus is not None:
                        return gpus
                    slots.release()
                    if cpus is None:
                        who = slots.busy_holders("cpu", cpu_total)
                        reason = f"waiting for {need_cpu} of the {cpu_total} CPU cores"
                    else:
                        who = slots.busy_holders("gpu", len(gpu_ids))
                        reason = f"waiting for {need_gpu} of the {len(gpu_ids)} GPUs"
                    if who:
                        reason += f" (in use by {', '.join(who[:3])}{', ...' if len(who) > 3 else ''})"
            finally:
                os.close(mutex)  # closing the file drops its lock
            if reason != last and on_wait is not None:
                on_wait(reason)
            last = reason
            time.sleep(poll)
    finally:
        os.close(ticket_fd)
        (slots.folder / "queue" / ticket).unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        print("localslots: usage: ... -- COMMAND", file=sys.stderr)
        return EXIT_USAGE
    cut = argv.index("--")
    p = argparse.ArgumentParser(prog="python -m aam_runtime.localslots")
    p.add_argument("--slots", required=True)
    p.add_argument("--label", required=True)
    p.add_argument("--cpus", required=True)
    p.add_argument("--processes", type=int, default=1)
    p.add_argument("--accelerator", default="cpu")
    p.add_argument("--threads", default=None)
    p.add_argument("--folder", default=".")
    opts = p.parse_args(argv[:cut])
    command = argv[cut + 1:]
    if not command:
        print("localslots: no command after --", file=sys.stderr)
        return EXIT_USAGE
    folder = Path(opts.folder)
    try:
        cpu_total = usable_cpus()
        gpu_ids = visible_gpu_ids(opts.accelerator)
    except MachineError as exc:
        print(f"[{time.strftime('%H:%M:%S')}] {exc}", file=sys.stderr)
        return EXIT_USAGE
    need_cpu, need_gpu = request(opts.cpus, opts.processes, opts.accelerator, cpu_total)
    short = []
    if need_cpu > cpu_total:
        short.append(f"{need_cpu} CPU cores, the local executor has {cpu_total}")
    if need_gpu > len(gpu_ids):
        short.append(f"{need_gpu} {opts.accelerator} GPUs, the local executor has {len(gpu_ids)}")
    if short:
        print(f"[{time.strftime('%H:%M:%S')}] this run asks for {'; '.join(short)}: it can never start here "
              f"(lower cpusPerTask/devicesPerNode in its HardwareProfile, or use SLURM)", file=sys.stderr)
        return EXIT_NO_HARDWARE
    slots = Slots(Path(opts.slots), opts.label)
    try:
        order = int(os.environ.get(SUBMITTED_VAR) or time.time_ns())
    except ValueError:
        order = time.time_ns()

    def on_wait(reason: str) -> None:
        atomic_write(folder / QUEUED, reason + "\n")
        print(f"[{time.strftime('%H:%M:%S')}] {reason}", file=sys.stderr, flush=True)

    gpus = acquire(slots, need_cpu, cpu_total, need_gpu, gpu_ids, order, on_wait)
    (folder / QUEUED).unlink(missing_ok=True)
    env = dict(os.environ)
    threads = threads_per_process(opts.threads, need_cpu, opts.processes)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    if opts.accelerator in VISIBLE_VAR:
        env[VISIBLE_VAR[opts.accelerator]] = ",".join(gpus)
    share = f"{need_cpu} CPU cores" + (f", {opts.accelerator} devices {','.join(gpus)}" if gpus else "") + \
        (f", {threads} threads per process" if threads is not None else "")
    print(f"[{time.strftime('%H:%M:%S')}] local executor: {opts.label} has {share}", file=sys.stderr, flush=True)
    for fd in slots.held.values():
        os.set_inheritable(fd, True)
    sys.stderr.flush()
    sys.stdout.flush()
    try:
        os.execvpe(command[0], command, env)
    except OSError as exc:
        print(f"localslots: cannot run {command[0]}: {exc.strerror}", file=sys.stderr)
        return 127
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
