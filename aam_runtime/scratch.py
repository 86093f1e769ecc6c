"""Node-local scratch (HardwareProfile.scratch): where a job's staged copies of its data are,
and the lookups the runtime makes there. The copying itself is scratch_copy.py, which the job
script runs on every node before training and when it ends.

A job's scratch folder ($AAM_SCRATCH) holds data/ (the Dataset's files, staged by
scratch_copy in), staged.json (original path -> copy, written last, so a reader sees a complete
stage or none), cache/ (the UniFrac matrix, copied the first time a process on the node asks for
it: its name depends on the prepared table) and a marker file (scratch_copy out removes only a
folder that carries it).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

ENV = "AAM_SCRATCH"
INDEX = "staged.json"
MARKER = ".aam-scratch"
DATA_KEYS = ("table", "tree", "distanceMatrix")
COMPANIONS = (".ids.txt",)  # files that travel with a cached matrix



def scratch() -> Path | None:
    value = os.environ.get(ENV)
    return Path(value) if value else None


def dataset_files(dataset: dict) -> list[str]:
    files = [dataset[k] for k in DATA_KEYS if dataset.get(k)]
    meta = (dataset.get("metadata") or {}).get("path")
    return files + ([meta] if meta else [])


def staged_paths() -> dict[str, str]:
    """original path -> node-local copy, when this job staged its data (else {})."""
    where = scratch()
    if where is None or not (where / INDEX).is_file():
        return {}
    try:
        return json.loads((where / INDEX).read_text())["files"]
    except (OSError, ValueError, KeyError):
        return {}


def local_copy(path: Path) -> Path:
    """A shared-cache file's node-local copy (made on first use; atomic, so ranks on one node may
    race). The path itself when nothing is staged, or the copy cannot be made."""
    where = scratch()
    if where is None or not (where / INDEX).is_file():
        return path
    dst = where / "cache" / path.name
    companions = [Path(str(path) + s) for s in COMPANIONS if Path(str(path) + s).is_file()]
    if dst.is_file() and dst.stat().st_size == path.stat().st_size and \
            all(Path(str(dst) + c.name[len(path.name):]).is_file() for c in companions):
        return dst
    tmp = None
    try:
        dst.parent.mkdir(exist_ok=True)
        for src in [*companions, path]:  # the matrix last: a reader checks for it
            out = dst.parent / src.name
            tmp = out.with_name(f".{out.name}.{os.getpid()}")
            shutil.copyfile(src, tmp)
            os.replace(tmp, out)
    except OSError:
        if tmp is not None:
            tmp.unlink(missing_ok=True)  # a partial copy would only hold the room it lacked
        return path  # no room on scratch: read the shared copy
    return dst
