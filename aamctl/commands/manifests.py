"""validate, explain, version, apply."""
from __future__ import annotations

import click

from aam_runtime.runfolder import PLOTS

from aamctl import __version__
from aamctl.api.parse import load_documents
from aamctl.api.schema import API_VERSION
from aamctl.api.schema import explain as do_explain
from aamctl.api.schema import is_name
from aamctl.api.validate import validate as check
from aamctl.convert.script import convert_argv, convert_file
from aamctl.errors import AamError, UsageError
from aamctl.runs.apply import apply_manifests
from aamctl.sweeps.launch import apply_sweep, wait_for_sweeps
from aamctl.ui import flags
from aamctl.ui.context import Context
from aamctl.ui.progress import wait_for


@click.command()
@flags.filenames
@click.pass_context
def validate(ctx, files):
    """Check manifests: schema, references, cross-field rules (no data is read)."""
    store = Context(ctx).store(create=False)
    docs, problems = load_documents(list(files))
    try:
        res = check(docs, store)
    except AamError as exc:
        raise AamError(problems + exc.diagnostics) from None
    if problems:  # the readable files were valid; the others were not
        raise AamError(problems)
    for obj in res.given:
        click.echo(f"{obj.kind.lower()}/{obj.name} valid")


@click.command()
@click.argument("field")
def explain(field):
    """Field documentation from the schemas, e.g. `aamctl explain Run.spec.trainer`."""
    try:
        click.echo(do_explain(field), nl=False)
    except KeyError as exc:
        raise UsageError(str(exc.args[0])) from None


@click.command()
def version():
    """Print versions of aamctl and the manifest API."""
    click.echo(f"aamctl {__version__} (manifests {API_VERSION})")


@click.command()
@flags.filenames
@click.option("--dry-run", is_flag=True, help="Run every check and print what would happen; write nothing.")
@flags.output("yaml", "json")
@click.option("--wait", is_flag=True,
              help="Wait until the runs in the files finish, those started here and unchanged ones still going; "
                   "exit 1 if one fails or had already failed.")
@flags.timeout
@click.option("--force", is_flag=True, help="Start new generations of unchanged runs too (retry).")
@click.option("--allow-data-change", is_flag=True, help="Apply a record whose data files changed since it was made.")
@click.option("--skip-preflight", is_flag=True, help="Do not read the data before queuing (not recommended).")
@click.pass_context
def apply(ctx, files, dry_run, output, wait, timeout, force, allow_data_change, skip_preflight):
    """Create or update objects from manifests and start new or changed runs."""
    c = Context(ctx)
    store = c.store(create=not dry_run)
    result = apply_manifests(store, list(files), home=c.home, dry_run=dry_run, force=force,
                             allow_data_change=allow_data_change, preflight=not skip_preflight, output=output,
                             echo=click.echo, warn=lambda text: click.echo(text, err=True))
    for sweep in result.sweeps:  # stored by apply; each gets its generation and a controller
        click.echo(apply_sweep(store, c.home, sweep))
    ok = True
    if wait and not dry_run and (result.started or result.unchanged):
        ok = wait_for(store, [(p.name, p.generation) for p in result.started] + result.unchanged, timeout)
        for p in result.started:
            click.echo(f"run/{p.name}: results in {p.folder} (plots in {p.folder / PLOTS})")
    if wait and not dry_run and result.sweeps:
        ok = wait_for_sweeps(store, [s.name for s in result.sweeps], timeout, echo=click.echo) and ok
    if wait and not dry_run:
        ctx.exit(0 if ok else 1)


@click.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("-f", "--filename", "file", default=None, metavar="FILE",
              help="A shell script or Markdown file: every aam command in it (VAR=value lines and #SBATCH lines read).")
@click.option("--name", default=None, help="Name of the manifests (default: from --output-dir / --output).")
@click.argument("argv", nargs=-1, type=click.UNPROCESSED)
def convert(file, name, argv):
    """Manifests from a reference (jbk708/aam) command line: aamctl convert -- aam train --table ...

    Prints a Dataset, Model, Run and HardwareProfile; every value where the reference's default
    differs from aam's carries a comment, and flags aam cannot express are listed atop the Run
    (docs/reference.md has the whole table)."""
    if name is not None and not is_name(name, max_len=60):  # room for the -2, -3 of repeated names
        raise UsageError(f"--name '{name}' is not a DNS-1123 label (lower-case letters, digits and '-', at most 60)")
    if file and argv:
        raise UsageError("give either -f FILE or a command line after --, not both")
    click.echo(convert_file(file, name) if file else convert_argv(list(argv), name), nl=False)


COMMANDS = [validate, explain, version, apply, convert]
