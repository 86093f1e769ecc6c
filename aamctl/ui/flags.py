"""Options several verbs share, declared once."""
from __future__ import annotations

import click

filenames = click.option("-f", "--filename", "files", multiple=True, required=True, metavar="FILE|DIR|-",
                         help="Manifest file, folder (recursive) or - for stdin; repeatable.")
selector = click.option("-l", "--selector", default=None, help="Label selector, e.g. -l team=oral,stage!=x")
generation = click.option("--generation", "-g", type=click.IntRange(min=1), default=None,
                          help="A generation of the run (default: the latest).")
timeout = click.option("--timeout", type=click.FloatRange(min=0), default=None,
                       help="Give up after this many seconds (exit 1).")


def output(*choices: str):
    return click.option("-o", "--output", type=click.Choice(list(choices)), default=None,
                        help="Output format: " + ", ".join(choices) + ".")
