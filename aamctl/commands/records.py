"""export, diff, rebuild-state."""
from __future__ import annotations

import sys

import click

from aamctl.errors import UsageError
from aamctl.runs.rebuild import rebuild_state as rebuild
from aamctl.runs.records import diff_records, export_bundle, export_distances, export_record
from aamctl.runs.store import check_home
from aamctl.ui import flags
from aamctl.ui.context import Context, kind_of, observe_one
from aamctl.ui.sweepviews import export_best


@click.command()
@click.argument("resource")
@click.argument("name")
@flags.generation
@click.option("--as", "new_name", default=None, help="Rename the run in the exported record.")
@click.option("--best", is_flag=True, help="export sweep NAME --best: the record of the sweep's best trial.")
@click.option("--bundle", "bundle", default=None, metavar="DIR",
              help="Write the run's trained model into DIR (a new folder) instead: safetensors weights, a JSON "
                   "description, the record, metrics and a model card; initFrom.checkpoint takes the folder.")
@click.option("--which", type=click.Choice(["best", "last"]), default="best", show_default=True,
              help="With --bundle: the checkpoint to export.")
@click.option("--distances", "distances", default=None, metavar="FILE",
              help="Write the UniFrac distances among the run's samples (as its pretraining sees them) into FILE "
                   "instead, as the tab-separated matrix qiime tools import --type DistanceMatrix reads.")
@click.pass_context
def export(ctx, resource, name, generation, new_name, best, bundle, which, distances):
    """Print a run's record: every resolved manifest plus provenance and final metrics; or, with
    --bundle DIR, write the run's trained model as a folder to hand on; or, with --distances FILE,
    the UniFrac distances among its samples for QIIME 2."""
    if kind_of(resource) == "Sweep":
        if not best:
            raise UsageError("a sweep has no record of its own: aamctl export sweep NAME --best")
        click.echo(export_best(ctx, name), nl=False)
        return
    if kind_of(resource) != "Run":
        raise UsageError("only runs have records: aamctl export run NAME (or export sweep NAME --best)")
    c = Context(ctx)
    store = c.require_store()
    row, phase, _, st = observe_one(store, c.find_run(store, name, generation))
    if bundle and distances:
        raise UsageError("--bundle and --distances write different things: give one")
    if bundle:
        click.echo(export_bundle(row, phase, bundle, which))
        return
    if distances:
        click.echo(export_distances(row, distances))
        return
    click.echo(export_record(row, phase, st, new_name), nl=False)


@click.command()
@click.argument("record_a", type=click.Path(exists=True, dir_okay=False))
@click.argument("record_b", type=click.Path(exists=True, dir_okay=False))
def diff(record_a, record_b):
    """Show what differs between two records (exit 1 when they differ)."""
    text = diff_records(record_a, record_b)
    if text:
        click.echo(text)
        sys.exit(1)
    click.echo("records are identical")


@click.command("rebuild-state")
@click.pass_context
def rebuild_state(ctx):
    """Re-create a lost or damaged state database from the records in the run folders."""
    home = Context(ctx).home
    check_home(home)
    objects, runs = rebuild(home, echo=click.echo)
    click.echo(f"state rebuilt in {home}: {runs} run(s), {objects} object generation(s)")


COMMANDS = [export, diff, rebuild_state]
