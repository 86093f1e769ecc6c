"""cancel, resume, delete."""
from __future__ import annotations

import time
from pathlib import Path

import click

from aam_runtime import runfolder as RF

from ..context import Context, kind_of, observe_one
from ..errors import AamError, Diagnostic

ACTIVE = {"Pending", "Queued", "Running", "Requeued"}


def cancel_run(store, row) -> tuple[bool, str, bool]:
    """Cancel a run if it is active now: (cancelled, its phase as observed before, whether its
    processes needed SIGKILL). A local run's processes are gone when this returns (SIGTERM,
    then SIGKILL after the grace period)."""
    from ..executors import executor_for

    row, phase, _, _ = observe_one(store, row, warn=False)
    if phase not in ACTIVE:
        return False, phase, False
    stopped = executor_for(row["executor"]).cancel(row)
    if stopped is False:
        store.add_event(row["name"], row["generation"], "Killed", "did not stop within the grace period of SIGTERM")
    folder = Path(row["folder"])
    if not (folder / RF.EXIT_CODE).exists() and row["executor"] == "local":
        RF.atomic_write(folder / RF.EXIT_CODE, f"{RF.EXIT_CANCELLED}\n")
    store.set_phase(row["name"], row["generation"], "Cancelled", "cancelled by user", finished=time.time())
    return True, phase, stopped is False


@click.command()
@click.argument("words", nargs=-1, required=True, metavar="[run|sweep] NAME")
@click.pass_context
def cancel(ctx, words):
    """Stop a run (SIGTERM, then SIGKILL after a grace period; scancel on SLURM), or a sweep (its
    controller and its running trials)."""
    from ..errors import UsageError

    if len(words) == 2 and kind_of(words[0]) == "Sweep":
        from .sweeps import cancel_sweep
        return cancel_sweep(ctx, words[1])
    if len(words) == 2 and kind_of(words[0]) == "Run":
        words = words[1:]
    if len(words) != 1:
        raise UsageError("usage: aamctl cancel RUN, or aamctl cancel sweep NAME")
    run = words[0]
    c = Context(ctx)
    store = c.require_store()
    cancelled, phase, killed = cancel_run(store, c.find_run(store, run))
    if cancelled:
        click.echo(f"run/{run} cancelled" + (" (its processes did not stop within 10 s of SIGTERM and were killed)"
                                              if killed else ""))
    else:
        click.echo(f"run/{run} is not active ({phase}); nothing to cancel")


@click.command()
@click.argument("run")
@click.pass_context
def resume(ctx, run):
    """Start a stopped run again in its own folder; it continues from its last checkpoint."""
    from ..executors import executor_for

    c = Context(ctx)
    store = c.require_store()
    row, phase, _, _ = observe_one(store, c.find_run(store, run))
    if phase in ACTIVE:
        raise AamError(Diagnostic(f"run/{run} is {phase}; nothing to resume", file="aamctl"))
    if phase == "Succeeded":
        raise AamError(Diagnostic(f"run/{run} already succeeded", file="aamctl",
                                  hint="change the manifest (or apply --force) for a new generation"))
    folder = Path(row["folder"])
    for name in (RF.EXIT_CODE, RF.PREEMPT_FLAG, RF.WAITING, RF.QUEUED, RF.CANCEL_FLAG):
        (folder / name).unlink(missing_ok=True)
    info = executor_for(row["executor"]).submit(folder)
    store.update_run(row["name"], row["generation"], **info)
    store.set_phase(row["name"], row["generation"], "Pending", "resumed by user", finished=None, exit_code=None)
    last = folder / RF.checkpoint_name("last")
    click.echo(f"run/{run} resumed (generation {row['generation']}"
               + (", from its last checkpoint)" if last.exists() else ", from the start: no checkpoint yet)"))


@click.command()
@click.argument("resource")
@click.argument("name")
@click.pass_context
def delete(ctx, resource, name):
    """Delete an object; a run is cancelled first. Run folders are kept."""
    kind = kind_of(resource)
    store = Context(ctx).require_store()
    if kind == "Run":
        row = store.latest_run(name)
        if row is not None and cancel_run(store, row)[0]:
            click.echo(f"run/{name} cancelled")
    if kind == "Sweep":
        row = store.latest_sweep(name)
        if row is not None and row["phase"] not in ("Succeeded", "Failed", "Cancelled"):
            from .sweeps import cancel_sweep
            cancel_sweep(ctx, name)
    if store.delete_object(kind, name):
        click.echo(f"{kind.lower()}/{name} deleted")
    else:
        raise AamError(Diagnostic(f"{kind} '{name}' not found", file="aamctl",
                                  hint=f"'aamctl get {resource}' lists them"))


COMMANDS = [cancel, resume, delete]
