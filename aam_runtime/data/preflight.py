"""check_dataset: what the controller checks before a job is queued. Torch-free.

Cheap checks first (files, ids, columns, declared targets) for precise messages; then, when
those pass, the runtime's own loader and split run here, so a run is never queued that would
stop before its first step (every sample dropped by rarefaction, a split too small for a batch).
"""
from __future__ import annotations

import difflib
from pathlib import Path

from aam_runtime.data.table import (MISSING_VALUES, DataError, asv_cut_summary, check_sequences, describe_cut,
                                    input_categoricals, read_biom, read_metadata)


class Problem(str):
    """A one-sentence problem that also knows its field, whose field it is (the Dataset's or the
    Run's), and whether it stops the run (error) or only deserves a look (warning)."""

    field: tuple = ("spec",)
    owner: str = "dataset"
    severity: str = "error"
    hint: str | None = None

    def __new__(cls, text: str, *field, owner: str = "dataset", severity: str = "error", hint: str | None = None):
        obj = super().__new__(cls, text)
        obj.field = ("spec", *field) if field else ("spec",)
        obj.owner, obj.severity, obj.hint = owner, severity, hint
        return obj


FILE_FIELDS = [("table",), ("tree",), ("distanceMatrix",), ("taxonomy",), ("metadata", "path"), ("split", "trainIds"),
               ("split", "validationIds")]


def check_dataset_files(spec: dict) -> list[Problem]:
    """Cheap checks for a Dataset applied on its own: each file it names exists, is a regular
    file and can be read. (The full preflight runs for the runs that use it.)"""
    import os

    problems = []
    for path in FILE_FIELDS:
        value = spec
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if not isinstance(value, str) or "://" in value:
            continue
        p = Path(value)
        field = ".".join(("spec",) + path)
        if not p.exists():
            what = "no such file" if p.parent.is_dir() else f"no such file (the folder {p.parent} does not exist either)"
            problems.append(Problem(f"{p}: {what}", *path, hint=f"check {field}; relative paths are read from the "
                                                                 "manifest's folder"))
        elif p.is_dir():
            problems.append(Problem(f"{p} is a folder, not a file", *path, hint=f"{field} names one file"))
        elif not p.is_file():
            problems.append(Problem(f"{p} is not a regular file", *path, hint=f"{field} names one file"))
        elif not os.access(p, os.R_OK):
            problems.append(Problem(f"{p} cannot be read (permission denied)", *path))
    return problems


def check_dataset(spec: dict, stage: str, target: str | tuple | None = None, need_distances: bool = False, *,
                  batch_size: int | None = None, processes: int = 1, seed: int = 0,
                  keep: dict | None = None, split: dict | None = None) -> list[Problem]:
    """Problems with a resolved Dataset spec for one stage, each one sentence; [] when usable.
    Warnings (severity 'warning') do not stop a run. keep, when given, receives the prepared data
    as keep["prepared"] (what the run will train on), for a caller that needs it next; split: the
    Run's spec.split (its changes to the Dataset's)."""
    problems: list[Problem] = []

    def add(field, text: str, **kw) -> None:
        field = field if isinstance(field, tuple) else (field,)
        problems.append(Problem(text, *field, **kw))
    try:
        table = read_biom(spec["table"])
    except DataError as exc:
        return [Problem(str(exc), "table")]
    sample_ids = [str(s) for s in table.ids(axis="sample")]
    asv_ids = [str(a) for a in table.ids(axis="observation")]
    if not sample_ids or not asv_ids:
        return [Problem(f"{spec['table']}: the table is empty ({len(sample_ids)} samples x {len(asv_ids)} ASVs)", "table")]
    if len(set(sample_ids)) != len(sample_ids):
        problems.append(Problem(f"{spec['table']}: duplicate sample ids in the table", "table"))
    try:
        check_sequences(asv_ids, spec["table"], spec["nonACGT"])
    except DataError as exc:
        problems.append(Problem(str(exc), "table"))
    meta = None
    if spec.get("metadata"):
        try:
            meta = read_metadata(spec["metadata"]["path"], spec["metadata"]["sampleIdColumn"])
        except DataError as exc:
            problems.append(Problem(str(exc), "metadata"))
    if meta is not None:
        overlap = [s for s in sample_ids if s in meta.index]
        if not overlap:
            add('metadata', f"no sample id of {spec['table']} appears in {spec['metadata']['path']} "
                            f"(table ids look like '{sample_ids[0]}', metadata ids like "
                            f"'{meta.index[0] if len(meta.index) else '(none)'}'); check spec.metadata.sampleIdColumn")
        _check_targets(spec, meta, overlap, add, stage)
        for col in input_categoricals(spec):  # a column that is a target is checked above
            if col not in meta.columns:
                add('metadata', f"{spec['metadata']['path']}: no column '{col}' (columns: {', '.join(list(meta.columns)[:8])})")
    elif stage in ("finetune", "baseline"):
        add('metadata', "the Dataset has no metadata; finetune and baseline need spec.metadata with the target")
    if need_distances:
        if spec.get("distanceMatrix"):
            try:
                from aam_runtime.data.unifrac import DistanceLookup
                DistanceLookup(spec["distanceMatrix"], sample_ids if meta is None else
                               [s for s in sample_ids if s in meta.index]).close()
            except DataError as exc:
                add('distanceMatrix', str(exc))
        elif spec.get("tree"):
            if not Path(spec["tree"]).exists():
                add('tree', f"{spec['tree']}: tree file not found (check spec.tree)")
            else:
                try:
                    from aam_runtime.data.unifrac import tree_tips
                    tips = tree_tips(spec["tree"])
                    missing = [a for a in asv_ids if a not in tips]
                    if missing:
                        add('tree', f"{spec['tree']}: {len(missing)} of {len(asv_ids)} ASVs of the table are not "
                                        f"tips of the tree (first: '{missing[0][:40]}'); build the tree from the "
                                        "table's sequences")
                except DataError as exc:
                    add('tree', str(exc))
    if spec.get("taxonomy"):
        _check_taxonomy(spec, asv_ids, add)
    for key in ("trainIds", "validationIds"):
        p = spec["split"].get(key)
        if p and not Path(p).exists():
            add('split', f"{p}: split file not found (check spec.split.{key})")
    if not any(p.severity == "error" for p in problems):
        _check_first_step(spec, stage, target, batch_size, processes, seed, add, table, meta, need_distances, keep,
                          split)
    return problems


def _check_taxonomy(spec: dict, asv_ids: list[str], add) -> None:
    """spec.taxonomy names the table's ASVs (by sequence, or by its MD5 as DADA2 does): none at all
    is an error (a taxonomy of another table), some missing a warning with the count."""
    from aam_runtime.data.qiime import read_taxonomy, taxa_of

    try:
        taxonomy = read_taxonomy(spec["taxonomy"])
    except DataError as exc:
        add("taxonomy", str(exc))
        return
    found = taxa_of(asv_ids, taxonomy)
    if not found:
        add("taxonomy", f"{spec['taxonomy']}: no ASV of {spec['table']} is in the taxonomy (its feature ids look like "
                        f"'{next(iter(taxonomy))[:40]}', the table's like '{asv_ids[0][:40]}'); classify the "
                        "table's own sequences (qiime feature-classifier classify-sklearn)")
    elif len(found) < len(asv_ids):
        add("taxonomy", f"{spec['taxonomy']}: {len(asv_ids) - len(found)} of {len(asv_ids)} ASVs of the table have no "
                        "taxon there; they are labelled 'Unassigned'", severity="warning")


def _check_targets(spec: dict, meta, overlap: list, add, stage: str = "pretrain") -> None:
    """Every declared target, whatever the stage: pretraining does not read it, but the user
    learns of a typo hours later when fine-tuning starts. Except predict: new samples need not
    have the values (or the columns) predicted for them; where a column is there, the predictions
    carry it as the truth."""
    import pandas as pd

    if stage == "predict":
        return
    path = spec["metadata"]["path"]
    for i, t in enumerate(spec["targets"]):
        name = t["name"]
        where = ("targets", i, "name")
        if name not in meta.columns:
            close = difflib.get_close_matches(name, [str(c) for c in meta.columns], n=1, cutoff=0.5)
            add(where, f"target '{name}' is not a column of {path}",
                hint=f"did you mean '{close[0]}'?" if close else f"columns: {', '.join(map(str, meta.columns[:8]))}")
            continue
        by = t.get("normalizeBy")
        if by and by not in meta.columns:
            close = difflib.get_close_matches(by, [str(c) for c in meta.columns], n=1, cutoff=0.5)
            add(("targets", i, "normalizeBy"), f"normalizeBy column '{by}' is not a column of {path}",
                hint=f"did you mean '{close[0]}'?" if close else f"columns: {', '.join(map(str, meta.columns[:8]))}")
        if not overlap:
            continue
        vals = meta.loc[overlap, name]
        missing = vals.astype(str).str.strip().isin(MISSING_VALUES)
        if t["type"] == "regression":
            num = pd.to_numeric(vals, errors="coerce")
            usable = int(num.notna().sum())
            if usable == 0:
                add(where, f"regression target '{name}' has no numeric value in the {len(overlap)} samples of the "
                           f"table (first value: '{vals.iloc[0]}')",
                    hint="declare it as classification (and a categorical column), or fix the metadata")
            elif usable < 2:
                add(where, f"regression target '{name}' is numeric for only one sample")
            elif usable < len(overlap):
                bad = len(overlap) - usable
                add(where, f"regression target '{name}': {bad} of {len(overlap)} samples have a missing or "
                           f"non-numeric value; they are left out of fine-tuning", severity="warning")
        else:
            if vals[~missing].nunique() < 2:
                add(where, f"classification target '{name}' has fewer than 2 classes")
            elif missing.any():
                add(where, f"classification target '{name}': {int(missing.sum())} of {len(overlap)} samples have no "
                           "value; they are left out of fine-tuning", severity="warning")


def _check_first_step(spec: dict, stage: str, target: str | None, batch_size: int | None, processes: int,
                      seed: int, add, table, meta, need_distances: bool = False, keep: dict | None = None,
                      split: dict | None = None) -> None:
    """Load and split exactly as the runtime will, and check a training batch can be formed."""
    from aam_runtime.data.split import make_split
    from aam_runtime.data.table import load

    several = list(target) if isinstance(target, tuple) else None  # a run with several targets
    if several:
        target = several[0]  # stratifies the split, as in the runtime
    need = (several or [target]) if target and stage in ("finetune", "baseline") else []
    try:
        prepared = load(spec, need_targets=need, seed=seed, table=table, metadata=meta)
    except DataError as exc:
        add("rarefyDepth" if "rarefaction" in str(exc) else "table", str(exc))
        return
    if keep is not None:
        keep["prepared"] = prepared
    cut = asv_cut_summary(prepared.counts, spec["maxAsvsPerSample"], spec["asvSelection"])
    if cut:
        add("maxAsvsPerSample", describe_cut(cut, spec["asvSelection"]), severity="warning",
            hint="raise spec.maxAsvsPerSample to keep them whole (attention memory grows with its square)")
    if need_distances and not spec.get("distanceMatrix"):
        _check_unifrac_room(spec, prepared, add)
    if stage == "predict":
        return
    ttype = next((t["type"] for t in spec["targets"] if t["name"] == target), None)
    try:
        train, _ = make_split(spec, prepared, ttype, target, split)  # as the runtime does, for every stage
    except DataError as exc:
        if split:  # the Run changed the split: its spec.split is where to look
            add("split", str(exc), owner="run", hint="change the Run's spec.split, or use more samples")
        else:
            add("split", str(exc), hint="lower spec.split.validationFraction, or use more samples")
        return
    if batch_size and stage in ("pretrain", "finetune") and len(train) < batch_size * processes:
        add(("trainer", "batchSize"), f"the training split has {len(train)} samples, fewer than one batch of "
            f"{batch_size} x {processes} process(es): the run would stop before its first step", owner="run",
            hint="lower spec.trainer.batchSize, or the Dataset's spec.split.validationFraction")


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def _check_unifrac_room(spec: dict, prepared, add) -> None:
    """The UniFrac matrix this run computes must fit where it is cached (and the backend must be
    able to compute it): a 100,000-sample matrix is 40 GB, and ssu's own output as much again
    while it is converted. Nothing is checked when the matrix is cached already."""
    import shutil

    from aam_runtime.data import unifrac as U

    n, m = prepared.n_samples, len(prepared.asv_ids)
    key = U.cache_key(prepared.sample_ids, prepared.asv_ids, prepared.counts, spec["tree"], spec["unifrac"]["metric"])
    if U.cached(key):
        return
    alternatives = ("give a matrix computed elsewhere in spec.distanceMatrix, or pretrain on fewer samples "
                    "(spec.subsample)")
    requested = spec["unifrac"]["backend"]
    if requested == "auto":  # as pick_backend would choose, without importing anything (skbio: a second)
        import importlib.util

        backend = "unifrac" if importlib.util.find_spec("unifrac") else "ssu" if shutil.which("ssu") else "skbio"
    else:
        try:
            backend = U.pick_backend(requested)
        except DataError as exc:
            add(("unifrac", "backend"), str(exc))
            return
    if backend == "skbio" and n * m * 8 > 4e9:
        add(("unifrac", "backend"), f"scikit-bio computes UniFrac from the dense table, {n:,} samples x {m:,} ASVs = "
            f"{_gb(n * m * 8)} of memory, and would take days", hint="install ssu (Debian: unifrac-tools) or "
            + alternatives)
    matrix = U.matrix_bytes(n)
    need = matrix * (2 if backend == "ssu" else 1)
    folder = U.cache_dir()
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if need > free:
        extra = ", and as much again for ssu's output while it is converted" if backend == "ssu" else ""
        add("tree", f"the UniFrac matrix of {n:,} samples does not fit the cache: it needs {_gb(need)} in {folder} "
            f"({_gb(matrix)} for the fp32 matrix{extra}); {_gb(free)} is free there",
            hint="set AAM_CACHE_DIR to a file system with room (it must be readable from the compute nodes), "
                 + alternatives)
