"""The state folder's layout (--home, AAM_HOME, default ./.aam), owned here alone:

    <home>/state.db                    SQLite: applied objects, runs, sweeps, trials (runs/store.py)
    <home>/runs/<name>/<generation>/   a run folder (its files: aam_runtime/runfolder.py)
    <home>/sweeps/<name>/<generation>/ a sweep generation's folder (its files: sweeps/folder.py)
    <home>/local-slots/                the local executor's cores and GPUs (aam_runtime/localslots.py)
"""
from __future__ import annotations

import os
from pathlib import Path

DB_FILE = "state.db"
RUNS_DIR = "runs"
SWEEPS_DIR = "sweeps"
LOCAL_SLOTS_DIR = "local-slots"


def default_home() -> Path:
    return Path(os.environ.get("AAM_HOME") or ".aam")


def run_folder(home: Path, name: str, generation: int) -> Path:
    return (Path(home) / RUNS_DIR / name / str(generation)).resolve()


def sweep_folder(home: Path, name: str, generation: int) -> Path:
    return (Path(home) / SWEEPS_DIR / name / str(generation)).resolve()


def slots_folder(home: Path) -> Path:
    return Path(home).resolve() / LOCAL_SLOTS_DIR
