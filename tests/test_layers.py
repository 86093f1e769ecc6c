"""The code's shape: the controller never imports torch (any module of it), imports run one way
(the import-linter contracts in pyproject.toml: layers, no circles), and no function or class
grows past what a reader takes in at once."""
from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_FUNCTION_LINES = 80
MAX_CLASS_LINES = 250


def _modules(package: str) -> list[str]:
    import importlib

    pkg = importlib.import_module(package)
    return sorted(m.name for m in pkgutil.walk_packages(pkg.__path__, package + "."))


def test_every_controller_module_imports_without_torch():
    """Every module of every aamctl package, not a chosen few (`aamctl` answers in well under a
    second, and must run where torch is not installed)."""
    mods = [m for m in _modules("aamctl") if not m.endswith("__main__")]
    assert {"aamctl.api.rules.sweep", "aamctl.sweeps.controller", "aamctl.runs.apply", "aamctl.ui.sweepviews"} <= set(mods)
    code = ("import importlib, sys\n"
            f"for m in {mods!r}:\n"
            "    importlib.import_module(m)\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'accelerate', 'optuna', 'matplotlib'))\n"
            "assert not bad, bad[:5]\n")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


def test_import_contracts_hold():
    """pyproject.toml's import-linter contracts: aamctl's layers (cli > commands > ui > sweeps >
    runs > planning | convert > api > home | phases | resources > errors) and no import circle
    among the modules or packages of any folder of aamctl and aam_runtime (function-local
    imports count)."""
    p = subprocess.run([str(Path(sys.executable).parent / "lint-imports"), "--no-cache"], cwd=ROOT,
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]
    assert "0 broken" in p.stdout


def _sizes(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            start = min([node.lineno] + [d.lineno for d in node.decorator_list])
            yield node, node.end_lineno - start + 1


@pytest.mark.parametrize("package", ["aamctl", "aam_runtime"])
def test_no_function_or_class_is_too_long(package):
    too_long = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for node, lines in _sizes(ast.parse(path.read_text())):
            limit = MAX_CLASS_LINES if isinstance(node, ast.ClassDef) else MAX_FUNCTION_LINES
            if lines > limit:
                too_long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} has {lines} lines (at most {limit})")
    assert not too_long, "\n".join(too_long)


def test_architecture_doc_names_every_module():
    """docs/architecture.md is the map: a module it does not name is a room without a sign."""
    doc = (ROOT / "docs" / "architecture.md").read_text()
    unnamed = []
    for package in ("aamctl", "aam_runtime"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if path.name == "__init__.py":
                continue
            rel = path.relative_to(ROOT / package)
            names = {str(rel), rel.name, str(rel.with_suffix("")), rel.stem}
            if not any(f"`{n}`" in doc or f"`{n}," in doc or f", `{n}`" in doc for n in names):
                unnamed.append(f"{package}/{rel}")
    assert not unnamed, "docs/architecture.md does not name: " + ", ".join(unnamed)


def test_the_verb_table_names_every_command_where_it_lives():
    """aamctl loads a verb's module only when the verb runs: the table must list every command
    of every verb module, under that module."""
    import importlib

    from aamctl.commands import VERBS

    found = {}
    for name in _modules("aamctl.commands"):
        for command in getattr(importlib.import_module(name), "COMMANDS", []):
            found[command.name] = name.rsplit(".", 1)[1]
    assert found == VERBS
