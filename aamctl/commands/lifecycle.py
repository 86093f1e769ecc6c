"""cancel, resume, delete."""
from __future__ import annotations

import click

from aamctl.errors import AamError, Diagnostic, UsageError
from aamctl.phases import TERMINAL_SWEEP
from aamctl.runs.operations import cancel_run, resume_run
from aamctl.sweeps.launch import cancel_sweep
from aamctl.ui.context import Context, kind_of, observe_one


@click.command()
@click.argument("words", nargs=-1, required=True, metavar="[run|sweep] NAME")
@click.pass_context
def cancel(ctx, words):
    """Stop a run (SIGTERM, then SIGKILL after a grace period; scancel on SLURM), or a sweep (its
    controller and its running trials)."""
    if len(words) == 2 and kind_of(words[0]) == "Sweep":
        return _cancel_sweep(ctx, words[1])
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


def _cancel_sweep(ctx, name: str) -> None:
    n = cancel_sweep(Context(ctx).require_store(), name)
    click.echo(f"sweep/{name} cancelled ({n} running trial(s) cancelled)")


@click.command()
@click.argument("run")
@click.pass_context
def resume(ctx, run):
    """Start a stopped run again in its own folder; it continues from its last checkpoint."""
    c = Context(ctx)
    store = c.require_store()
    row, phase, _, _ = observe_one(store, c.find_run(store, run))
    from_checkpoint = resume_run(store, row, phase)
    click.echo(f"run/{run} resumed (generation {row['generation']}"
               + (", from its last checkpoint)" if from_checkpoint else ", from the start: no checkpoint yet)"))


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
        if row is not None and row["phase"] not in TERMINAL_SWEEP:
            _cancel_sweep(ctx, name)
    if store.delete_object(kind, name):
        click.echo(f"{kind.lower()}/{name} deleted")
    else:
        raise AamError(Diagnostic(f"{kind} '{name}' not found", file="aamctl",
                                  hint=f"'aamctl get {resource}' lists them"))


COMMANDS = [cancel, resume, delete]
