"""wait, logs."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from aam_runtime.runfolder import LOG

from aamctl.phases import TERMINAL_RUN as TERMINAL
from aamctl.ui import flags
from aamctl.ui.context import Context, observe_one
from aamctl.ui.progress import wait_for


@click.command("wait")
@click.argument("runs", nargs=-1, required=True)
@flags.timeout
@click.pass_context
def wait(ctx, runs, timeout):
    """Wait until runs finish; exit 0 when all succeeded."""
    c = Context(ctx)
    store = c.require_store()
    keys = [(row["name"], row["generation"]) for row in (c.find_run(store, name) for name in runs)]
    ctx.exit(0 if wait_for(store, keys, timeout) else 1)


def _copy_from(path: Path, pos: int) -> int:
    """Print what the log gained since byte pos; returns the new position."""
    if not path.exists():
        return pos
    with open(path, "rb") as f:
        f.seek(pos)
        chunk = f.read()
    if chunk:
        sys.stdout.write(chunk.decode("utf-8", "replace"))
        sys.stdout.flush()
    return pos + len(chunk)


@click.command()
@click.argument("run")
@click.option("-f", "--follow", is_flag=True, help="Keep printing until the run ends.")
@click.option("--tail", type=click.IntRange(min=0), default=None, help="Only the last N lines (N >= 0).")
@flags.generation
@click.pass_context
def logs(ctx, run, follow, tail, generation):
    """Print a run's log (stdout and stderr of the job)."""
    c = Context(ctx)
    store = c.require_store()
    row = c.find_run(store, run, generation)
    path = Path(row["folder"]) / LOG
    pos = 0
    if path.exists():
        data = path.read_bytes()
        lines = data.decode("utf-8", "replace").splitlines(keepends=True)
        if tail is not None:
            lines = lines[-tail:] if tail > 0 else []
        sys.stdout.write("".join(lines))
        sys.stdout.flush()
        pos = len(data)
    while follow:
        pos = _copy_from(path, pos)
        _, phase, _, _ = observe_one(store, store.run(row["name"], row["generation"]), warn=False)
        if phase in TERMINAL:
            time.sleep(0.3)
            _copy_from(path, pos)
            return
        time.sleep(0.5)


COMMANDS = [wait, logs]
