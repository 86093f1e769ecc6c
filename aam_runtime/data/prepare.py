"""A run's data, ready for the model: loaded, tokenized, split, categoricals coded, the target
scaled, and (for UniFrac pretraining) the distance lookup. One function per step; `prepare`
runs them in order for a stage.

A predict run takes the coding and scaling that the finetune run learned (its checkpoint's
meta) instead of learning them from the data it is given.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ..console import log
from ..runfolder import SPLIT, RunFolder, atomic_write
from . import batches as B
from . import table as T
from .split import make_split
from .unifrac import DistanceLookup, compute as compute_unifrac


@dataclass
class Data:
    enc: B.Encoded
    train: np.ndarray
    val: np.ndarray
    lookup: DistanceLookup | None = None
    target_name: str | None = None
    target_type: str | None = None
    norm: dict = field(default_factory=dict)  # mean/std for regression
    classes: list = field(default_factory=list)
    cat_levels: list = field(default_factory=list)  # per categorical column: its levels
    cat_columns: list = field(default_factory=list)

    @property
    def sample_ids(self) -> list[str]:
        return self.enc.prepared.sample_ids


def prepare(cfg, folder: RunFolder, stage: str, ckpt_meta: dict | None = None) -> Data:
    """All steps for one stage (cfg: a RunConfig; ckpt_meta: the finetune checkpoint's, for predict)."""
    ds = cfg.dataset
    target = cfg.target_name()
    ttype = cfg.target_type(target)
    need = [target] if (stage in ("finetune", "baseline") and target) else []
    prepared = T.load(ds, need_targets=need, seed=cfg.seed)
    log(f"data: {prepared.n_samples} samples, {len(prepared.asv_ids)} ASVs; report {prepared.report}")
    max_bp = (ckpt_meta or {}).get("max_bp", ds["maxBp"])
    enc = B.encode(prepared, max_bp, ds["maxAsvsPerSample"], ds["asvSelection"], seed=cfg.seed)
    if enc.non_acgt_bases:
        log(f"warning: {enc.non_acgt_bases} bases other than A/C/G/T became padding (spec.nonACGT: pad)")
    data = Data(enc=enc, train=np.array([], dtype=np.int64), val=np.arange(prepared.n_samples),
                target_name=target, target_type=ttype)
    if stage != "predict":
        data.train, data.val = make_split(ds, prepared, ttype, target)
        write_split(folder, data)
    if stage in ("finetune", "predict"):
        columns = ckpt_meta.get("cat_columns", []) if stage == "predict" and ckpt_meta is not None else \
            [c for c in ds["categoricalColumns"] if c != target]
        code_categoricals(data, columns, (ckpt_meta or {}).get("cat_levels"))
    if target and (stage in ("finetune", "baseline") or (stage == "predict" and target in prepared.metadata)):
        encode_target(data, cfg.target_normalize(target), ckpt_meta, strict=stage != "predict")
    elif stage == "predict" and ckpt_meta is not None:
        data.classes = ckpt_meta.get("classes", [])
        data.norm = ckpt_meta.get("norm", {})
    if stage == "pretrain" and cfg.loss_weight("unifrac") > 0:
        data.lookup = distance_lookup(ds, prepared)
    return data


def write_split(folder: RunFolder, data: Data) -> None:
    ids = data.sample_ids
    lines = ["sample_id\tsplit"] + [f"{ids[i]}\ttrain" for i in data.train] + \
            [f"{ids[i]}\tvalidation" for i in data.val]
    atomic_write(folder.file(SPLIT), "\n".join(lines) + "\n")


def code_categoricals(data: Data, columns: list[str], levels: list | None = None) -> None:
    """Integer codes per categorical column, 1.. for the levels seen in training, 0 for unknown."""
    if not columns:
        return
    meta = data.enc.prepared.metadata
    levels = levels or [sorted(set(meta[c].iloc[data.train])) for c in columns]
    codes = np.zeros((len(data.sample_ids), len(columns)), dtype=np.int64)
    for j, (c, lv) in enumerate(zip(columns, levels)):
        lookup = {v: i + 1 for i, v in enumerate(lv)}
        codes[:, j] = [lookup.get(v, 0) for v in meta[c]] if c in meta else 0
    data.enc.categoricals = codes
    data.cat_columns, data.cat_levels = list(columns), levels


def encode_target(data: Data, normalize: str, ckpt_meta: dict | None, strict: bool) -> None:
    """Class indices (-1: a class training never saw), or the value scaled by the training
    split's mean and std (zscore) or left as it is (none). strict: every value is numeric (the
    loader dropped the others); predict reads what it can and leaves the rest NaN."""
    values = data.enc.prepared.metadata[data.target_name]
    if data.target_type == "classification":
        data.classes = (ckpt_meta or {}).get("classes") or sorted(set(values.iloc[data.train]))
        idx = {c: i for i, c in enumerate(data.classes)}
        data.enc.targets = np.array([idx.get(v, -1) for v in values], dtype=np.int64)
        return
    y = values.astype(float).to_numpy(dtype=np.float32) if strict else \
        np.array([_to_float(v) for v in values], dtype=np.float32)
    if ckpt_meta and "norm" in ckpt_meta:
        data.norm = ckpt_meta["norm"]
    elif normalize == "zscore":
        tr = y[data.train]
        data.norm = {"mean": float(tr.mean()), "std": float(tr.std() or 1.0)}
    else:
        data.norm = {"mean": 0.0, "std": 1.0}
    data.enc.targets = ((y - data.norm["mean"]) / data.norm["std"]).astype(np.float32)


def distance_lookup(ds: dict, prepared: T.Prepared) -> DistanceLookup:
    """The Dataset's distance matrix, or UniFrac computed from its tree (cached by content)."""
    if ds.get("distanceMatrix"):
        path = ds["distanceMatrix"]
    else:
        t0 = time.time()
        path = compute_unifrac(prepared.sample_ids, prepared.asv_ids, prepared.counts, ds["tree"],
                               ds["unifrac"]["metric"], ds["unifrac"]["backend"])
        log(f"unifrac: {ds['unifrac']['metric']} matrix ready in {time.time() - t0:.1f}s ({path})")
    return DistanceLookup(path, prepared.sample_ids)


def _to_float(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")
