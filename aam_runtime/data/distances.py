"""A run's UniFrac distances written as QIIME 2 (and scikit-bio) read a distance matrix: the
tab-separated square matrix `qiime tools import --type DistanceMatrix` takes (an empty first
cell, the sample ids across, then one row per sample). aamctl export run NAME --distances FILE
calls this in its own process: it is torch-free, like the rest of aam_runtime.data.

The samples are the run's Dataset as its pretraining sees them (after spec.subsample and
spec.rarefyDepth); the matrix is the one the pretraining trained on (its spec.distanceMatrix, or
UniFrac from its tree, from the cache when it is there).
"""
from __future__ import annotations

import os
from pathlib import Path

from aam_runtime.config import RunConfig
from aam_runtime.data import table as T
from aam_runtime.data import unifrac as U
from aam_runtime.data.errors import DataError

ROWS_PER_BLOCK = 256


def run_distances(run_dir: str | Path) -> tuple[U.DistanceLookup, list[str], str]:
    """The distance lookup of a run's samples, their ids and what the matrix is."""
    cfg = RunConfig(run_dir)
    ds = cfg.dataset
    if not ds.get("distanceMatrix") and not ds.get("tree"):
        raise DataError(f"run/{cfg.name}: its Dataset has neither spec.tree nor spec.distanceMatrix, so it has no "
                        "UniFrac distances to export")
    prepared = T.load(ds, seed=cfg.seed)
    if ds.get("distanceMatrix"):
        path, what = ds["distanceMatrix"], f"distances of {ds['distanceMatrix']}"
    else:
        metric = ds["unifrac"]["metric"]
        path = U.compute(prepared.sample_ids, prepared.asv_ids, prepared.counts, ds["tree"], metric,
                         ds["unifrac"]["backend"])
        what = f"{metric} UniFrac distances"
    return U.DistanceLookup(path, prepared.sample_ids), list(prepared.sample_ids), what


def write_distance_text(out: Path, ids: list[str], block) -> None:
    """A square distance matrix as QIIME 2's DistanceMatrix text: an empty first cell and the ids
    across, then one row per sample; block(start, stop) gives rows start..stop, so a matrix of
    50,000 samples never sits in memory whole. Written under a temporary name, then renamed."""
    for s in ids:
        if "\t" in s or "\n" in s:
            raise DataError(f"sample id {s!r} holds a tab or a line break; a distance matrix file cannot carry it")
    out = Path(out)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as f:
            f.write("\t" + "\t".join(ids) + "\n")
            for start in range(0, len(ids), ROWS_PER_BLOCK):
                stop = min(start + ROWS_PER_BLOCK, len(ids))
                for sid, row in zip(ids[start:stop], block(start, stop)):
                    f.write(sid + "\t" + "\t".join(f"{v:.8g}" for v in row.tolist()) + "\n")
        os.replace(tmp, out)
    except OSError as exc:
        raise DataError(f"{out}: cannot write the distance matrix ({exc.strerror or exc})") from None
    finally:
        tmp.unlink(missing_ok=True)


def export(run_dir: str | Path, out: str | Path) -> str:
    """Write the run's distance matrix to out; the line to print."""
    out = Path(out)
    if out.is_dir():
        raise DataError(f"{out} is a folder; name the file to write (for example unifrac.tsv)")
    if not out.parent.is_dir():
        raise DataError(f"{out.parent}: no such folder")
    lookup, ids, what = run_distances(run_dir)
    try:
        write_distance_text(out, ids, lookup.rows)
    finally:
        lookup.close()
    return (f"wrote {what} among {len(ids)} samples to {out}; in QIIME 2: qiime tools import --type DistanceMatrix "
            f"--input-path {out} --output-path distance-matrix.qza")
