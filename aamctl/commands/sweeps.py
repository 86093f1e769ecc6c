"""The hidden sweep-controller command that apply starts (sweeps/launch.py) for each sweep
generation; the sweep views are ui/sweepviews.py, cancel sweep is a lifecycle verb."""
from __future__ import annotations

import click

from aamctl.phases import SweepPhase
from aamctl.sweeps.controller import Controller
from aamctl.ui.context import Context


@click.command("sweep-controller", hidden=True)
@click.argument("name")
@click.option("--poll", type=float, default=None, help="Seconds between passes (default $AAM_SWEEP_POLL or 1).")
@click.pass_context
def sweep_controller(ctx, name, poll):
    """Drive a sweep until its trials are done (apply starts this; re-apply restarts it)."""
    store = Context(ctx).require_store()
    phase = Controller(store, Context(ctx).home, name, poll=poll).run()
    ctx.exit(0 if phase in (SweepPhase.SUCCEEDED, "busy", SweepPhase.CANCELLED) else 1)


COMMANDS = [sweep_controller]
