"""Training/validation split of the prepared samples. Torch-free: preflight runs it too, so the
controller counts exactly the samples the runtime will train on."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from aam_runtime.data.table import DataError, Prepared


def effective_split(dataset: dict, override: dict | None = None) -> dict:
    """The Dataset's spec.split with the fields a Run's spec.split sets (not null) over it."""
    return {**dataset["split"], **{k: v for k, v in (override or {}).items() if v is not None}}


def make_split(dataset: dict, prepared: Prepared, target_type: str | None,
               target: str | None, override: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, validation rows): from id files, else one of `folds` seeded folds, else a
    seeded fraction (stratified by spec.split.stratifyBy, or by a classification target).
    override: the Run's spec.split."""
    sp = effective_split(dataset, override)
    ids = prepared.sample_ids
    pos = {s: i for i, s in enumerate(ids)}
    if sp.get("trainIds"):
        def read(p):
            return [x.strip() for x in Path(p).read_text().splitlines() if x.strip()]
        tr = [pos[s] for s in read(sp["trainIds"]) if s in pos]
        va = [pos[s] for s in read(sp["validationIds"]) if s in pos]
        if not tr or not va:
            raise DataError(f"split files leave {len(tr)} training and {len(va)} validation samples "
                            "after the table and metadata are aligned")
        return np.array(sorted(tr)), np.array(sorted(va))
    n = len(ids)
    frac = sp["validationFraction"]
    rng = np.random.default_rng(sp["seed"])
    strat_col = sp.get("stratifyBy") or (target if target_type == "classification" else None)
    folds, fold = sp.get("folds"), sp.get("fold", 0)
    if folds:
        if fold >= folds:
            raise DataError(f"split fold {fold} does not exist: folds are numbered 0 to {folds - 1}")
        # each sample's fold: round-robin over a seeded order, within each stratum when stratified,
        # so every fold holds its share of each class and the folds partition the samples
        assign = np.empty(n, dtype=np.int64)
        if strat_col:
            labels = prepared.metadata[strat_col].to_numpy()
            offset = 0
            for lab in sorted(set(labels)):
                members = np.flatnonzero(labels == lab)
                members = members[rng.permutation(len(members))]
                assign[members] = (np.arange(len(members)) + offset) % folds
                offset += len(members)  # small classes do not all land in fold 0
        else:
            assign[rng.permutation(n)] = np.arange(n) % folds
        val = np.flatnonzero(assign == fold)
        how = f"fold {fold} of {folds}"
    elif strat_col:
        labels = prepared.metadata[strat_col].to_numpy()
        val = []
        for lab in sorted(set(labels)):
            members = np.flatnonzero(labels == lab)
            members = members[rng.permutation(len(members))]
            k = int(round(len(members) * frac))
            val.extend(members[:k])
        val = np.array(sorted(val), dtype=np.int64)
        how = f"validationFraction {frac}"
    else:
        k = max(1, int(round(n * frac)))
        val = np.sort(rng.permutation(n)[:k])
        how = f"validationFraction {frac}"
    train = np.setdiff1d(np.arange(n), val)
    if len(train) < 2 or len(val) < 1:
        raise DataError(f"{n} samples are too few to split into training and validation "
                        f"({len(train)} and {len(val)} with {how})")
    return train, val
