"""Records: export a run's resolved manifests with provenance; diff two records; a run's trained
model as a bundle (written by aam_runtime.bundle_export)."""
from __future__ import annotations

import difflib
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from aam_runtime.runfolder import RECORD, STATUS_PROBLEM

from aamctl.api.schema import is_name
from aamctl.errors import AamError, Diagnostic
from aamctl.phases import RunPhase
from aamctl.planning.plan import dump_documents

BUNDLE_MODULE = "aam_runtime.bundle_export"


def _load(path: str | Path) -> list[dict]:
    try:
        return [d for d in yaml.safe_load_all(Path(path).read_text()) if d]
    except (OSError, yaml.YAMLError) as exc:
        raise AamError(Diagnostic(f"cannot read record: {exc}", file=str(path))) from None


def export_record(row, phase: str, status: dict, new_name: str | None = None) -> str:
    folder = Path(row["folder"])
    docs = _load(folder / RECORD)
    main = next((d for d in docs if d.get("kind") == "Run" and "aam/record-of" in d["metadata"].get("annotations", {})), None)
    if main is None:
        raise AamError(Diagnostic("record has no annotated Run", file=str(folder / RECORD)))
    ann = main["metadata"]["annotations"]
    ann["aam/phase"] = phase
    for key, field in (("aam/started", "started"), ("aam/finished", "finished")):
        if status.get(field):
            import time
            ann[key] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(status[field]))
    if status.get("final_metrics"):
        ann["aam/final-metrics"] = json.dumps(status["final_metrics"], sort_keys=True, default=str)
    if status.get(STATUS_PROBLEM):
        ann["aam/record-notes"] = status[STATUS_PROBLEM]
    if new_name:
        if not is_name(new_name):
            raise AamError(Diagnostic(f"'{new_name}' is not a valid name", file="aamctl",
                                      hint="names are DNS-1123 labels: lower-case letters, digits and '-'"))
        main["metadata"]["name"] = new_name
    return dump_documents(docs, f"record of run/{row['name']} generation {row['generation']} ({phase}); "
                                f"'aamctl apply -f' this file to reproduce it")


def _key(d: dict) -> str:
    return f"{d.get('kind', '?')}/{d.get('metadata', {}).get('name', '?')}"


def diff_records(a: str, b: str) -> str:
    da, db = {_key(d): d for d in _load(a)}, {_key(d): d for d in _load(b)}
    out = []
    for k in sorted(set(da) | set(db)):
        ta = yaml.safe_dump(da[k], sort_keys=True).splitlines() if k in da else []
        tb = yaml.safe_dump(db[k], sort_keys=True).splitlines() if k in db else []
        if ta != tb:
            out.extend(difflib.unified_diff(ta, tb, fromfile=f"{a}: {k}", tofile=f"{b}: {k}", lineterm=""))
    return "\n".join(out)


def export_bundle(row, phase: str, out: str, which: str = "best") -> str:
    """Write a run's trained model as a bundle into out (aam_runtime.bundle_export, in a
    subprocess: it reads torch checkpoints); the line it prints."""
    if row["stage"] not in ("pretrain", "finetune"):
        raise AamError(Diagnostic(f"run/{row['name']} is a {row['stage']} run: it trains no model to export",
                                  file="aamctl", hint="export the finetune (or pretrain) run it starts from"))
    if phase != RunPhase.SUCCEEDED and which == "best":
        raise AamError(Diagnostic(f"run/{row['name']} is {phase}: its best checkpoint may not be final", file="aamctl",
                                  hint="wait for it to succeed, or pass --which last to export its last checkpoint"))
    python = os.environ.get("AAM_PYTHON") or sys.executable
    p = subprocess.run([python, "-m", BUNDLE_MODULE, row["folder"], out, "--which", which], capture_output=True,
                       text=True)
    if p.returncode != 0:
        lines = [x.strip() for x in (p.stderr or p.stdout or f"exit {p.returncode}").splitlines() if x.strip()]
        said = next((x for x in reversed(lines) if x.startswith("error: ")), None)
        message = said.removeprefix("error: ") if said else \
            f"writing the bundle failed: {next((x for x in reversed(lines) if x.strip('^~ ')), lines[-1])}"
        raise AamError(Diagnostic(message, file="aamctl"))
    return p.stdout.strip()


def export_distances(row, out: str) -> str:
    """Write the UniFrac distances among a run's samples as a QIIME 2 DistanceMatrix file (in this
    process: aam_runtime.data is torch-free); the line it prints."""
    from aam_runtime.config import RecordError
    from aam_runtime.data.distances import export
    from aam_runtime.data.errors import DataError

    try:
        return export(row["folder"], out)
    except (DataError, RecordError) as exc:
        raise AamError(Diagnostic(str(exc), file="aamctl")) from None
