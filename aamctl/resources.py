"""Where aamctl's data files are: in a source tree (schemas/, slurm/ beside the package) or in an
installed wheel (aamctl/schemas, aamctl/templates, aamctl/builtins inside it). One place, so a
module that moves between folders does not lose its files."""
from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


def data_path(in_tree: str, in_wheel: str) -> Path | None:
    """The first of <tree>/<in_tree> and <package>/<in_wheel> that exists, else None."""
    for p in (PACKAGE.parent / in_tree, PACKAGE / in_wheel):
        if p.exists():
            return p
    return None


def builtins_dir() -> Path:
    return PACKAGE / "builtins"
