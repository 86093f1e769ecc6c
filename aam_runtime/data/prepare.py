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

from aam_runtime.console import log
from aam_runtime.data import batches as B
from aam_runtime.data import table as T
from aam_runtime.data.split import make_split
from aam_runtime.data.unifrac import DistanceLookup
from aam_runtime.data.unifrac import compute as compute_unifrac
from aam_runtime.runfolder import ID_HEADER, SPLIT, RunFolder, atomic_write


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
    quantiles: list = field(default_factory=list)  # loss quantile: the level of each output column
    # several targets (Run spec.targets): one view per target (a Data sharing enc's samples, with
    # its own name, type, scaling, classes and 1-D enc.targets); enc.targets is then [n, T] float32
    parts: list = field(default_factory=list)

    @property
    def sample_ids(self) -> list[str]:
        return self.enc.prepared.sample_ids

    def target_groups(self, rows) -> np.ndarray | None:
        """normalizeBy: each row's category (as text), for per-category scaling; else None."""
        by = self.norm.get("by")
        if not by:
            return None
        meta = self.enc.prepared.metadata
        if by not in meta:
            return np.full(len(rows), "", dtype=object)  # predict data without the column: global statistics
        return meta[by].astype(str).to_numpy()[np.asarray(rows)]


def prepare(cfg, folder: RunFolder, stage: str, ckpt_meta: dict | None = None) -> Data:
    """All steps for one stage (cfg: a RunConfig; ckpt_meta: the finetune checkpoint's, for predict)."""
    ds = cfg.dataset
    target = cfg.target_name()
    ttype = cfg.target_type(target)
    several = cfg.target_list() if stage == "finetune" else None
    if stage == "predict" and ckpt_meta and ckpt_meta.get("targets"):
        several = ckpt_meta["targets"]
    need = [target] if (stage in ("finetune", "baseline") and target) else []
    if several and stage == "finetune":
        need = [t["name"] for t in several]
    prepared = T.load(ds, need_targets=need, seed=cfg.seed)
    log(f"data: {prepared.n_samples} samples, {len(prepared.asv_ids)} ASVs; report {prepared.report}")
    max_bp = (ckpt_meta or {}).get("max_bp", ds["maxBp"])
    enc = B.encode(prepared, max_bp, ds["maxAsvsPerSample"], ds["asvSelection"], seed=cfg.seed)
    cut = T.asv_cut_summary(prepared.counts, ds["maxAsvsPerSample"], ds["asvSelection"])
    if cut:
        log("warning: " + T.describe_cut(cut, ds["asvSelection"]))
    if enc.non_acgt_bases:
        log(f"warning: {enc.non_acgt_bases} bases other than A/C/G/T became padding (spec.nonACGT: pad)")
    data = Data(enc=enc, train=np.array([], dtype=np.int64), val=np.arange(prepared.n_samples),
                target_name=target, target_type=ttype)
    if stage != "predict":
        data.train, data.val = make_split(ds, prepared, ttype, target, cfg.spec.get("split"))
        write_split(folder, data)
    if stage in ("finetune", "predict"):
        targets = {t["name"] for t in several} if several else {target}
        columns = ckpt_meta.get("cat_columns", []) if stage == "predict" and ckpt_meta is not None else \
            [c for c in ds["categoricalColumns"] if c not in targets]
        code_categoricals(data, columns, (ckpt_meta or {}).get("cat_levels"))
    if several:
        encode_targets(data, several, stage)
    elif target and (stage in ("finetune", "baseline") or (stage == "predict" and target in prepared.metadata)):
        encode_target(data, cfg.target_normalize(target), ckpt_meta, strict=stage != "predict",
                      by=cfg.target_normalize_by(target))
    elif stage == "predict" and ckpt_meta is not None:
        data.classes = ckpt_meta.get("classes", [])
        data.norm = ckpt_meta.get("norm", {})
    if (stage == "pretrain" and cfg.loss_weight("unifrac") > 0) or \
            (stage == "finetune" and cfg.loss_weight("unifracWhenFinetuning") > 0):
        data.lookup = distance_lookup(ds, prepared)
    return data


def write_split(folder: RunFolder, data: Data) -> None:
    ids = data.sample_ids
    lines = [f"{ID_HEADER}\tsplit"] + [f"{ids[i]}\ttrain" for i in data.train] + \
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


def encode_target(data: Data, normalize: str, ckpt_meta: dict | None, strict: bool, by: str | None = None) -> None:
    """Class indices (-1: a class training never saw), or the value on the scale the model learns
    (see fit_target_scale; statistics from the training split, or the finetune checkpoint's for
    predict). strict: every value is numeric (the loader dropped the others); predict reads what it
    can and leaves the rest NaN."""
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
    else:
        data.norm = fit_target_scale(y[data.train], normalize, data.target_name)
        if by:
            groups = data.enc.prepared.metadata[by].astype(str).to_numpy()
            data.norm = fit_group_scale(y[data.train], groups[data.train], data.norm, by)
    everyone = np.arange(len(y))
    groups = data.target_groups(everyone)
    if groups is not None:
        unseen = sorted(set(groups) - set(data.norm["groups"]))
        if unseen:
            log(f"warning: target '{data.target_name}' normalized by '{data.norm['by']}': "
                f"{', '.join(repr(u) for u in unseen[:10])}{' ...' if len(unseen) > 10 else ''} never seen in "
                "training; those samples use the global statistics")
    data.enc.targets = scale_target(y, data.norm, groups).astype(np.float32)


def encode_targets(data: Data, targets: list[dict], stage: str) -> None:
    """Several targets: one view per target (encode_target on a copy of enc), their values side
    by side in data.enc.targets [n, T] (float32; class indices as numbers, -1 unknown). predict
    passes the checkpoint's per-target entries (scaling and classes learned in training); a column
    the predict data lacks is all missing."""
    import dataclasses

    meta = data.enc.prepared.metadata
    columns = []
    for t in targets:
        view = dataclasses.replace(data, enc=dataclasses.replace(data.enc), target_name=t["name"],
                                   target_type=t["type"], norm={}, classes=[], quantiles=[], parts=[])
        if stage == "predict":
            view.classes, view.norm = list(t.get("classes") or []), dict(t.get("norm") or {})
            if t["name"] in meta:
                encode_target(view, "none", {"classes": view.classes, "norm": view.norm}, strict=False)
            else:
                n = len(data.sample_ids)
                view.enc.targets = np.full(n, -1, dtype=np.int64) if t["type"] == "classification" else \
                    np.full(n, np.nan, dtype=np.float32)
        else:
            encode_target(view, t.get("normalize", "none"), None, strict=True, by=t.get("normalizeBy"))
        data.parts.append(view)
        columns.append(view.enc.targets.astype(np.float32))
    data.target_name = ",".join(t["name"] for t in targets)
    data.target_type = "several"
    data.enc.targets = np.stack(columns, axis=1)


def fit_group_scale(y: np.ndarray, groups: np.ndarray, norm: dict, by: str) -> dict:
    """normalizeBy: the same kind of statistics as `norm`, per category of `by` (training rows).
    A category with a single value keeps the global spread."""
    out = dict(norm, by=by, groups={})
    for g in sorted(set(groups)):
        sub = y[groups == g]
        sub = sub[np.isfinite(sub)]
        if not len(sub):
            continue
        one = fit_target_scale(sub, norm["kind"])
        std = one["std"] if sub.max() > sub.min() else norm["std"]  # one value: no spread of its own
        out["groups"][str(g)] = [one["mean"], std]
    return out


def _row_stats(norm: dict, groups) -> tuple:
    """(mean, std): scalars, or per-row arrays under normalizeBy (unseen categories: global)."""
    if groups is None or not norm.get("groups"):
        return norm["mean"], norm["std"]
    table = norm["groups"]
    mean = np.array([table.get(g, (norm["mean"], norm["std"]))[0] for g in groups], dtype=np.float64)
    std = np.array([table.get(g, (norm["mean"], norm["std"]))[1] for g in groups], dtype=np.float64)
    return mean, std


def fit_target_scale(y: np.ndarray, kind: str, name: str = "target") -> dict:
    """The Dataset's `normalize` as {log1p, mean, std}: optionally log1p, then (y - mean) / std.
    minmax maps the training range to [0, 1] (mean = min, std = max - min)."""
    y = np.asarray(y, dtype=np.float64)
    y = y[np.isfinite(y)]
    log1p = kind in ("log1p", "log1p_zscore", "log1p_minmax")
    if log1p:
        if len(y) and y.min() <= -1:
            raise T.DataError(f"target '{name}': normalize {kind} needs values above -1, found {y.min():g} in the "
                              "training split; use zscore or minmax")
        y = np.log1p(y)
    mean, std = 0.0, 1.0
    if kind in ("zscore", "log1p_zscore") and len(y):
        mean, std = float(y.mean()), float(y.std() or 1.0)
    elif kind in ("minmax", "log1p_minmax") and len(y):
        mean, std = float(y.min()), float((y.max() - y.min()) or 1.0)
    return {"kind": kind, "log1p": log1p, "mean": mean, "std": std}


def scale_target(y: np.ndarray, norm: dict, groups=None) -> np.ndarray:
    """Original units -> the model's scale (NaN stays NaN). groups: each row's normalizeBy
    category (Data.target_groups), when the statistics are per category."""
    y = np.asarray(y, dtype=np.float64)
    if norm.get("log1p"):
        with np.errstate(invalid="ignore", divide="ignore"):
            y = np.log1p(y)
    mean, std = _row_stats(norm, groups)
    return (y - mean) / std


def target_std(norm: dict, groups=None):
    """The scale factor from the model's scale to (log) original units, per row under normalizeBy."""
    return _row_stats(norm, groups)[1]


def unscale_target(z: np.ndarray, norm: dict, groups=None) -> np.ndarray:
    """The model's scale -> original units (what predictions.tsv and the metrics use)."""
    mean, std = _row_stats(norm, groups)
    y = np.asarray(z, dtype=np.float64) * std + mean
    if norm.get("log1p"):
        y = np.expm1(np.minimum(y, 700.0))  # no overflow warning for a wild output
    return y


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
