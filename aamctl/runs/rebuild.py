"""Rebuild the state database from the run folders, after the database was lost or damaged.

Every run folder holds its record (the resolved manifests with provenance), so the objects and
the run index can be recovered from them: objects in the order their runs were created, each run
with its generation, hash, stage, executor, labels and the last phase its folder shows. Nothing in
the run folders is changed.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from aam_runtime.runfolder import EXIT_OK, LOG, PID, RECORD, read_status

from aamctl.api.resolve import content_hash
from aamctl.errors import AamError, Diagnostic
from aamctl.home import DB_FILE, RUNS_DIR
from aamctl.phases import RunPhase
from aamctl.runs.executors import read_exit_code
from aamctl.runs.store import StateStore

JOB_LINE = re.compile(r"\bjob (\d+) on ")


def run_folders(home: Path) -> list[tuple[str, int, Path]]:
    """(name, generation, folder) of every runs/<name>/<generation>/ holding a record, oldest first."""
    out = []
    for rec in (home / RUNS_DIR).glob(f"*/*/{RECORD}"):
        folder = rec.parent
        if folder.name.isdigit():
            out.append((folder.parent.name, int(folder.name), folder))
    return sorted(out, key=lambda x: (x[2].joinpath(RECORD).stat().st_mtime, x[0], x[1]))


def _phase(folder: Path, executor: str, status: dict) -> tuple[str, str | None, dict]:
    code = read_exit_code(folder)
    if code == EXIT_OK:
        return RunPhase.SUCCEEDED, None, {"exit_code": code}
    if code is not None:
        return RunPhase.FAILED, status.get("error") or f"exit code {code}", {"exit_code": code}
    extra: dict = {}
    if executor == "local":
        try:
            extra["pid"] = int((folder / PID).read_text().strip())
        except (OSError, ValueError):
            pass
        # Pending: the next reconcile looks at the process and decides Running or Failed
        return RunPhase.PENDING, "state rebuilt from the run folder", extra
    try:
        jobs = JOB_LINE.findall((folder / LOG).read_text(errors="replace"))
    except OSError:
        jobs = []
    if jobs:
        extra["job_id"] = jobs[-1]
        return RunPhase.PENDING, "state rebuilt from the run folder", extra
    return RunPhase.FAILED, "state rebuilt: the run left no exit status and no SLURM job id", extra


def rebuild_state(home: Path, echo=print) -> tuple[int, int]:
    """Re-index home/runs into a new state database; refuses to touch an existing one."""
    db = home / DB_FILE
    if db.exists():
        raise AamError(Diagnostic("a state database exists already; rebuild-state only writes a new one", file=str(db),
                                  hint=f"move it aside first (mv {db} {db}.old)"))
    found = run_folders(home)
    if not found:
        raise AamError(Diagnostic("no run folder with a record here; nothing to rebuild from",
                                  file=str(home / RUNS_DIR)))
    store = StateStore(home)
    objects = runs = 0
    for name, generation, folder in found:
        try:
            docs = [d for d in yaml.safe_load_all((folder / RECORD).read_text()) if isinstance(d, dict)]
            main = next(d for d in docs if d.get("kind") == "Run"
                        and "aam/record-of" in d.get("metadata", {}).get("annotations", {}))
        except (OSError, yaml.YAMLError, StopIteration) as exc:
            echo(f"warning: {folder / RECORD}: skipped, the record cannot be read ({exc or 'no annotated Run'})")
            continue
        ann = main["metadata"]["annotations"]
        for d in docs:
            manifest = json.loads(json.dumps(d))
            notes = manifest["metadata"].get("annotations", {})
            manifest["metadata"]["annotations"] = {k: v for k, v in notes.items() if not k.startswith("aam/")}
            state, _ = store.put_object(d["kind"], d["metadata"]["name"], manifest, content_hash(manifest))
            objects += state != "unchanged"
        executor = main["spec"]["executor"]["type"]
        status = read_status(folder)
        phase, reason, extra = _phase(folder, executor, status)
        store.add_run(name=name, generation=generation, run_hash=ann.get("aam/run-hash", "unknown"),
                      stage=main["spec"]["stage"], executor=executor, folder=str(folder.resolve()), phase=phase,
                      reason=reason, labels=json.dumps(main["metadata"].get("labels", {})),
                      created=(folder / RECORD).stat().st_mtime, started=status.get("started"),
                      finished=status.get("finished"), **extra)
        runs += 1
        echo(f"run/{name} generation {generation}: {phase}")
    return objects, runs
