"""check_dataset: the cheap checks the controller runs before a job is queued. Torch-free."""
from __future__ import annotations

from pathlib import Path

from .table import DataError, check_sequences, read_biom, read_metadata


class Problem(str):
    """A one-sentence problem that also knows which Dataset field it is about."""

    field: tuple = ("spec",)

    def __new__(cls, text: str, *field: str):
        obj = super().__new__(cls, text)
        obj.field = ("spec", *field) if field else ("spec",)
        return obj


def check_dataset(spec: dict, stage: str, target: str | None = None, need_distances: bool = False) -> list[str]:
    """Problems with a resolved Dataset spec, each one sentence; [] when it is usable."""
    problems: list[str] = []

    def add(field: str, text: str) -> None:
        problems.append(Problem(text, field))
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
        check_sequences(asv_ids, spec["table"], spec.get("nonACGT", "pad"))
    except DataError as exc:
        problems.append(Problem(str(exc), "table"))
    meta = None
    if spec.get("metadata"):
        try:
            meta = read_metadata(spec["metadata"]["path"], spec["metadata"].get("sampleIdColumn", "sample_id"))
        except DataError as exc:
            problems.append(Problem(str(exc), "metadata"))
    if meta is not None:
        overlap = [s for s in sample_ids if s in meta.index]
        if not overlap:
            add('metadata', f"no sample id of {spec['table']} appears in {spec['metadata']['path']} "
                            f"(table ids look like '{sample_ids[0]}', metadata ids like "
                            f"'{meta.index[0] if len(meta.index) else '(none)'}'); check spec.metadata.sampleIdColumn")
        cols = ([target] if target and stage in ("finetune", "baseline") else []) + list(spec.get("categoricalColumns", []))
        for col in cols:
            if col not in meta.columns:
                add('metadata', f"{spec['metadata']['path']}: no column '{col}' (columns: {', '.join(list(meta.columns)[:8])})")
        if overlap and target and stage in ("finetune", "baseline") and target in meta.columns:
            ttype = next((t["type"] for t in spec.get("targets", []) if t["name"] == target), "regression")
            vals = meta.loc[overlap, target]
            if ttype == "regression":
                import pandas as pd
                num = pd.to_numeric(vals, errors="coerce")
                if num.notna().sum() == 0:
                    add('metadata', f"{spec['metadata']['path']}: target '{target}' has no numeric value in the "
                                    f"{len(overlap)} samples of the table (first value: '{vals.iloc[0]}')")
                elif num.notna().sum() < 2:
                    add('metadata', f"{spec['metadata']['path']}: target '{target}' is numeric for only one sample")
            elif vals.nunique() < 2:
                add('metadata', f"{spec['metadata']['path']}: classification target '{target}' has fewer than 2 classes")
    elif stage in ("finetune", "baseline"):
        add('metadata', "the Dataset has no metadata; finetune and baseline need spec.metadata with the target")
    if need_distances:
        if spec.get("distanceMatrix"):
            try:
                from .unifrac import DistanceLookup
                DistanceLookup(spec["distanceMatrix"], sample_ids if meta is None else
                               [s for s in sample_ids if s in meta.index]).close()
            except DataError as exc:
                add('distanceMatrix', str(exc))
        elif spec.get("tree"):
            if not Path(spec["tree"]).exists():
                add('tree', f"{spec['tree']}: tree file not found (check spec.tree)")
            else:
                try:
                    from .unifrac import tree_tips
                    tips = tree_tips(spec["tree"])
                    missing = [a for a in asv_ids if a not in tips]
                    if missing:
                        add('tree', f"{spec['tree']}: {len(missing)} of {len(asv_ids)} ASVs of the table are not "
                                        f"tips of the tree (first: '{missing[0][:40]}'); build the tree from the "
                                        "table's sequences")
                except DataError as exc:
                    add('tree', str(exc))
    for key in ("trainIds", "validationIds"):
        p = spec.get("split", {}).get(key)
        if p and not Path(p).exists():
            add('split', f"{p}: split file not found (check spec.split.{key})")
    return problems
