"""Shared test helpers: the aamctl command line, the test tiers, and W&B kept offline."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

AAMCTL = [sys.executable, "-m", "aamctl.cli"]


@pytest.fixture(autouse=True)
def _wandb_offline(monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_MODE", "offline")


def aamctl(home: Path, *args, check=True, timeout=300, input=None, cwd=None, env=None):
    """Run aamctl --home HOME ARGS; check=True asserts exit 0. Never a traceback either way."""
    p = subprocess.run([*AAMCTL, "--home", str(home), *args], capture_output=True, text=True, timeout=timeout,
                       input=input, cwd=cwd, env=env)
    if check:
        assert p.returncode == 0, f"aamctl {' '.join(map(str, args))} -> {p.returncode}\n{p.stdout}\n{p.stderr}"
    assert "Traceback" not in p.stderr, p.stderr
    return p


def need_qiime() -> None:
    """QIIME 2 (Debian's qiime, q2cli, q2-types, q2-feature-table) makes the archives the tests read:
    CI fails without it, a developer's machine skips."""
    if shutil.which("qiime"):
        return
    msg = ("QIIME 2 is not installed: bash scripts/setup.sh --system installs it from Debian "
           "(apt-get install qiime q2cli q2-types q2-feature-table)")
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(msg)
    pytest.skip(msg)


def q2(*args: str, cwd: Path) -> str:
    p = subprocess.run(["qiime", *args], capture_output=True, text=True, cwd=cwd, timeout=600)
    assert p.returncode == 0, f"qiime {' '.join(args)}\n{p.stdout}\n{p.stderr}"
    return p.stdout
