"""Provenance for records: data digests, package versions, git commit, host. No torch import."""
from __future__ import annotations

import json
import platform
import socket
import subprocess
import time
from pathlib import Path

from aamctl import __version__

PACKAGES = ["aam", "torch", "accelerate", "biom-format", "scikit-bio", "numpy", "wandb", "unifrac"]


def package_versions() -> dict[str, str]:
    from importlib import metadata  # lazily: ~15 ms, and only a run's record needs it

    out = {}
    for p in PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            pass
    out["aamctl"] = __version__
    out["python"] = platform.python_version()
    return out


def data_digests(dataset_spec: dict) -> dict[str, str]:
    from aam_runtime.data.table import file_digest  # lazily: numpy, which most verbs never need

    out = {}
    for key in ("table", "tree", "distanceMatrix", "taxonomy"):
        if dataset_spec.get(key):
            out[dataset_spec[key]] = file_digest(dataset_spec[key]) or "missing"
    meta = dataset_spec.get("metadata") or {}
    if meta.get("path"):
        out[meta["path"]] = file_digest(meta["path"]) or "missing"
    return out


def data_artifacts(dataset_spec: dict) -> dict[str, dict]:
    """{path: uuid, semantic type, format, archive version, framework, sha256 of the data inside}
    for every QIIME 2 archive the Dataset names (QIIME 2 users cite artifacts by UUID; the data
    digest equals the plain file's). An archive that cannot be read is left to preflight's message."""
    from aam_runtime.data import qiime  # lazily: zipfile and yaml only
    from aam_runtime.data.errors import DataError

    try:
        return qiime.describe_inputs(dataset_spec)
    except DataError:
        return {}


def git_commit(folder: Path | None) -> str | None:
    if folder is None:
        return None
    try:
        p = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if p.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return p.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        return None


def annotations(*, name: str, generation: int, run_hash: str, dataset_spec: dict, hardware: dict, seed: int,
                manifest_dir: Path | None, digests: dict | None = None,
                artifacts: dict | None = None) -> dict[str, str]:
    """Provenance for people and for reproducing (data digests are checked when a record is
    applied). The runtime reads none of it: its settings are in the record's `resolved:`."""
    ann = {
        "aam/record-of": f"run/{name}",
        "aam/generation": str(generation),
        "aam/run-hash": run_hash,
        "aam/data-digests": json.dumps(digests if digests is not None else data_digests(dataset_spec), sort_keys=True),
        "aam/versions": json.dumps(package_versions(), sort_keys=True),
        "aam/host": socket.gethostname(),
        "aam/hardware": json.dumps({"accelerator": hardware["accelerator"], "deviceModel": hardware.get("deviceModel"),
                                    "nodes": hardware["nodes"], "devicesPerNode": hardware["devicesPerNode"]}),
        "aam/seed": str(seed),
        "aam/created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    artifacts = data_artifacts(dataset_spec) if artifacts is None else artifacts
    if artifacts:
        ann["aam/qiime2-artifacts"] = json.dumps(artifacts, sort_keys=True)
    commit = git_commit(manifest_dir)
    if commit:
        ann["aam/git-commit"] = commit
    return ann
