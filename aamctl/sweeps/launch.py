"""A sweep's life seen from outside its controller: apply finds or starts its generation and
makes sure a controller drives it; `apply --wait` waits for it; `cancel sweep` stops it."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from aamctl.api.resolve import Obj
from aamctl.api.sweepspace import space_hash, stored_template
from aamctl.errors import AamError, Diagnostic
from aamctl.home import sweep_folder
from aamctl.phases import TERMINAL_SWEEP, TERMINAL_TRIAL, SweepPhase, TrialState
from aamctl.runs.executors import pid_alive, proc_start_time
from aamctl.runs.operations import cancel_run
from aamctl.sweeps.folder import CONTROLLER_LOG, controller_alive
from aamctl.sweeps.leaderboard import leaderboard


def apply_sweep(store, home: Path, sweep: Obj) -> str:
    """Called by apply after the Sweep object is stored: find or start its generation and make
    sure a controller drives it. Returns the line apply prints."""
    h = space_hash(sweep.manifest)
    row = store.latest_sweep(sweep.name)
    state = "unchanged"
    if row is None or row["space_hash"] != h:
        executor = stored_template(store, sweep.manifest)["executor"]["type"]
        gen = store.add_sweep(name=sweep.name, space_hash=h, folder="", phase=SweepPhase.RUNNING, executor=executor)
        folder = sweep_folder(home, sweep.name, gen)
        folder.mkdir(parents=True, exist_ok=True)
        store.update_sweep(sweep.name, gen, folder=str(folder))
        state = "created" if row is None else "configured (new search space: generation %d)" % gen
        row = store.latest_sweep(sweep.name)
    else:
        spec = sweep.spec
        done = [t for t in store.trials(sweep.name, row["generation"]) if t["state"] in TERMINAL_TRIAL]
        if row["phase"] in TERMINAL_SWEEP and row["phase"] != SweepPhase.CANCELLED and len(done) < spec["maxTrials"] \
                and not _failed_out(store, row, spec):
            store.update_sweep(sweep.name, row["generation"], phase=SweepPhase.RUNNING, reason=None, finished=None)
            state = f"extended to {spec['maxTrials']} trials"
    row = store.latest_sweep(sweep.name)
    if row["phase"] in TERMINAL_SWEEP:
        return f"sweep/{sweep.name} {state} (generation {row['generation']} {row['phase']})"
    if controller_alive(Path(row["folder"])):
        what = state if state != "unchanged" else "unchanged"
        return f"sweep/{sweep.name} {what} (generation {row['generation']}, controller running)"
    pid = start_controller(store, home, sweep.name, Path(row["folder"]))
    if state == "unchanged":
        state = "resumed"
    return (f"sweep/{sweep.name} {state} (generation {row['generation']}, controller pid {pid}) -> "
            f"{row['folder']}")


def _failed_out(store, row, spec) -> bool:
    failed = sum(1 for t in store.trials(row["name"], row["generation"]) if t["state"] == TrialState.FAILED)
    return failed > spec["maxFailedTrials"]


def start_controller(store, home: Path, name: str, folder: Path) -> int:
    python = os.environ.get("AAM_PYTHON") or sys.executable
    with open(os.devnull, "rb") as devnull, open(folder / CONTROLLER_LOG, "ab") as out:
        proc = subprocess.Popen([python, "-m", "aamctl.cli", "--home", str(home), "sweep-controller", name],
                                stdin=devnull, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                close_fds=True, cwd=str(folder))
    # the controller records itself too; this covers the moment before it does
    store.update_sweep(name, int(folder.name), pid=proc.pid, pid_start=proc_start_time(proc.pid))
    return proc.pid


def wait_for_sweeps(store, names: list[str], timeout: float | None, echo=print, poll: float = 2.0) -> bool:
    """Wait until each sweep's generation is over; True when all succeeded. A sweep whose
    controller is gone cannot finish: say so instead of waiting for ever."""
    start = time.time()
    reported: dict[str, int] = {}
    while True:
        pending = []
        for name in names:
            row = store.latest_sweep(name)
            n = sum(1 for t in store.trials(name, row["generation"]) if t["state"] in TERMINAL_TRIAL)
            if reported.get(name) != n:
                reported[name] = n
                echo(f"sweep/{name}: {n} trial(s) finished ({row['phase']})")
            if row["phase"] not in TERMINAL_SWEEP:
                if not controller_alive(Path(row["folder"])) and time.time() - start > 10:
                    echo(f"sweep/{name}: no controller is running; re-apply the Sweep to continue")
                    return False
                pending.append(name)
        if not pending:
            break
        if timeout is not None and time.time() - start > timeout:
            echo(f"timed out waiting for {', '.join(f'sweep/{n}' for n in pending)}")
            return False
        time.sleep(poll)
    ok = True
    for name in names:
        b = leaderboard(store, name)
        best = f", best {b['objective']['metric']}={b['best']['value']:.6g} (trial {b['best']['trial']})" \
            if b["best"] else ""
        echo(f"sweep/{name} {b['phase']}{best}: 'aamctl describe sweep {name}' shows the leaderboard")
        ok = ok and b["phase"] == SweepPhase.SUCCEEDED
    return ok


def cancel_sweep(store, name: str) -> int:
    """Stop the controller and cancel the running trials; finished trials stay. How many running
    trials were cancelled."""
    row = store.latest_sweep(name)
    if row is None:
        raise AamError(Diagnostic(f"sweep '{name}' not found", file="aamctl", hint="'aamctl get sweeps' lists them"))
    store.update_sweep(name, row["generation"], phase=SweepPhase.CANCELLED, reason="cancelled by user",
                       finished=time.time())
    if row["pid"] and pid_alive(row["pid"], row["pid_start"]) and controller_alive(Path(row["folder"])):
        try:
            os.kill(row["pid"], signal.SIGTERM)
        except ProcessLookupError:
            pass
    n = 0
    for t in store.trials(name, row["generation"]):
        if t["state"] in TERMINAL_TRIAL or not t["run_generation"]:
            continue
        r = store.run(t["run_name"], t["run_generation"])
        if r is not None and cancel_run(store, r)[0]:
            n += 1
        store.put_trial(name, row["generation"], t["number"], state=TrialState.FAILED, reason="cancelled by user",
                        finished=time.time())
    return n
