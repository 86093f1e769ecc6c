"""aamctl: kubectl-style verbs over AAM manifests (the verbs live in aamctl/commands/).

Errors are rendered here, once; never a traceback."""
from __future__ import annotations

import os
import sys

import click

from aamctl import __version__
from aamctl.commands import VERBS, load
from aamctl.errors import AamError


def _warn_unsaved(ctx) -> None:
    """Reading commands go on when the state cannot be written; say once that nothing was kept."""
    for store in (ctx.obj or {}).get("stores", []):
        if store.write_problem is not None:
            click.echo("warning: phase changes observed now were not saved: " + store.write_problem.render(), err=True)


class Group(click.Group):
    """Renders AamError and unexpected failures as one message with an exit code. Verbs are
    loaded when used (aamctl.commands.VERBS), so a command imports only what it needs."""

    def list_commands(self, ctx):
        return sorted(VERBS)

    def get_command(self, ctx, name):
        return load(name)

    def invoke(self, ctx):
        try:
            result = super().invoke(ctx)
            _warn_unsaved(ctx)
            return result
        except click.exceptions.Exit:
            _warn_unsaved(ctx)
            raise
        except AamError as exc:
            click.echo(exc.render(), err=True)
            ctx.exit(exc.exit_code)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)
        except BrokenPipeError:
            ctx.exit(0)
        except Exception as exc:  # pragma: no cover - the last line of defence
            if os.environ.get("AAM_DEBUG"):
                raise
            click.echo(f"aamctl: internal error: {type(exc).__name__}: {exc} (set AAM_DEBUG=1 for details; please report)", err=True)
            ctx.exit(70)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--home", envvar="AAM_HOME", default=None, metavar="DIR",
              help="State folder (SQLite state and runs). Default: $AAM_HOME or ./.aam")
@click.version_option(__version__, "--version", prog_name="aamctl")
@click.pass_context
def cli(ctx, home):
    """Declarative AAM experiments: apply manifests, follow runs, reproduce them from records."""
    ctx.ensure_object(dict)
    ctx.obj["home"] = home


def main():
    try:
        cli(prog_name="aamctl")
    except BrokenPipeError:  # pragma: no cover
        sys.exit(0)



if __name__ == "__main__":
    main()
