"""Copy a run's data into the node's scratch folder before training, and remove the folder when
the job ends (HardwareProfile.scratch; the folder's layout and lookups are scratch.py):

    python -m aam_runtime.scratch_copy in RUN_DIR    # on every node, before the training step
    python -m aam_runtime.scratch_copy out           # on every node, when the job ends (and before a requeue)

Both read the folder from $AAM_SCRATCH (the job script sets it). `in` copies the table, tree,
distance matrix and metadata named in the run's record, checks each copy's sha256 against the
record's data digests (a file changed since apply stops the job here, before any training), and
writes `staged.json` last. `out` removes only a folder that `in` made (it carries a marker file).
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

from aam_runtime.config import RecordError, RunConfig
from aam_runtime.data.table import file_digest
from aam_runtime.runfolder import EXIT_DATA_ERROR, RunFolder
from aam_runtime.scratch import ENV, INDEX, MARKER, dataset_files, scratch


class StageError(Exception):
    pass


def stage_in(run_dir: str | Path, where: Path) -> dict:
    """Copy the run's data files into where/data; returns the index written to where/staged.json."""
    try:
        cfg = RunConfig(run_dir)
    except RecordError as exc:
        raise StageError(str(exc)) from None
    raw = (cfg.run["metadata"].get("annotations") or {}).get("aam/data-digests")
    digests = json.loads(raw) if raw else {}
    if where.is_dir() and any(where.iterdir()) and not (where / MARKER).is_file():
        raise StageError(f"{where} exists with files aam did not put there; the job removes its scratch folder "
                         "when it ends, so it must be the job's own (put $SLURM_JOB_ID in the profile's scratch)")
    where.mkdir(parents=True, exist_ok=True)
    (where / MARKER).write_text(f"{cfg.name} {os.environ.get('SLURM_JOB_ID', '')}\n")
    data = where / "data"
    data.mkdir(exist_ok=True)
    index = {"run": cfg.name, "generation": cfg.generation, "files": {}}
    t0, total = time.time(), 0
    for i, src in enumerate(dataset_files(cfg.dataset)):
        dst = data / f"{i}-{Path(src).name}"
        want = digests.get(src)
        if not (dst.is_file() and want and file_digest(str(dst)) == want):  # reuse a complete copy
            tmp = dst.with_name("." + dst.name + f".{os.getpid()}")
            try:
                shutil.copyfile(src, tmp)
            except OSError as exc:
                raise StageError(f"cannot copy {src} to {where}: {exc.strerror or exc}") from None
            have = file_digest(str(tmp))
            if want and have != want:
                tmp.unlink()
                raise StageError(f"{src} changed since apply (sha256 {have[7:19]}..., the record has {want[7:19]}...): "
                                 "re-apply the manifests to train on the new file")
            os.replace(tmp, dst)
        total += dst.stat().st_size
        index["files"][src] = str(dst)
    tmp = where / f".{INDEX}.{os.getpid()}"
    tmp.write_text(json.dumps(index, indent=1) + "\n")
    os.replace(tmp, where / INDEX)
    node = os.environ.get("SLURMD_NODENAME") or os.uname().nodename
    print(f"staged {len(index['files'])} files ({total / 2 ** 20:.1f} MiB) to {where} on {node} "
          f"in {time.time() - t0:.1f} s, sha256 checked", flush=True)
    return index


def stage_out(where: Path) -> bool:
    """Remove the scratch folder this job made (only one with the marker)."""
    if not where.exists():
        return False
    if not (where / MARKER).is_file():
        print(f"not removing {where}: aam did not stage it (no {MARKER})", file=sys.stderr)
        return False
    shutil.rmtree(where, ignore_errors=True)
    print(f"removed scratch {where}", flush=True)
    return True


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    where = scratch()
    if where is None or not str(where).startswith("/"):
        print(f"error: {ENV} is not set to an absolute folder", file=sys.stderr)
        return 2
    try:
        if argv[:1] == ["in"] and len(argv) == 2:
            stage_in(argv[1], where)
        elif argv == ["out"]:
            stage_out(where)
        else:
            print("usage: python -m aam_runtime.scratch_copy in RUN_DIR | out", file=sys.stderr)
            return 2
    except StageError as exc:
        print(f"error: staging: {exc}", file=sys.stderr)
        if argv[:1] == ["in"] and Path(argv[1]).is_dir():
            try:
                RunFolder(argv[1]).update_status(phase="Failed", error=f"staging to node-local scratch: {exc}")
            except OSError:
                pass
        return EXIT_DATA_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
