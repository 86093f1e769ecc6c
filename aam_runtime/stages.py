"""One function per stage: set up, run, save. Called by __main__ with a RunConfig."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from aam_runtime import plots
from aam_runtime.config import RunConfig
from aam_runtime.console import log
from aam_runtime.data.prepare import target_std, unscale_target
from aam_runtime.data.table import DataError
from aam_runtime.metrics import probabilities
from aam_runtime.runfolder import (CONFUSION_PLOT, EMBEDDINGS, ID_HEADER, METRICS, PRED_PLOT, PREDICTIONS, RunFolder, atomic_write,
                                   checkpoint_name, q2_types_row, read_jsonl, target_plot)


def run_stage(cfg: RunConfig, folder: RunFolder) -> dict:
    return {"pretrain": train_stage, "finetune": train_stage, "predict": predict_stage,
            "baseline": baseline_stage}[cfg.stage](cfg, folder)


def _load_checkpoint(path: str | Path, folder: RunFolder) -> dict:
    """A checkpoint, read safely (checkpoints.load_checkpoint); this state's run folders are the
    parent of this run's (<home>/runs/<name>/<generation>)."""
    from aam_runtime.checkpoints import load_checkpoint

    return load_checkpoint(path, state_runs=folder.path.parent.parent)


def train_stage(cfg: RunConfig, folder: RunFolder) -> dict:
    """pretrain and finetune: prepare the data, fit, then write plots (and, for finetune, the
    validation predictions)."""
    from aam_runtime.data.prepare import prepare
    from aam_runtime.train import Trainer

    trainer = Trainer(cfg, folder)
    last = folder.path / checkpoint_name("last")
    resume = _load_checkpoint(last, folder) if last.exists() else None
    init_state = None
    if resume is None and cfg.init_checkpoint:
        init_state = _load_checkpoint(cfg.init_checkpoint, folder)["model"]
    data = prepare(cfg, folder, cfg.stage)
    if trainer.main:
        cfg.tracking_start(folder)
    t0 = time.time()
    result = trainer.fit(data, init_state=init_state, resume=resume)
    # a finetune's outputs and final metrics are those of the weights in best.pt (what BEST reports
    # and predict Runs use), not of the last validation's
    best_step = result.state["best_step"]
    use_best = cfg.stage == "finetune" and result.best_validation is not None
    v = result.best_validation if use_best else result.last_validation
    final = result.history[-1] if result.history else {}
    if use_best:
        final = next((h for h in reversed(result.history) if h.get("step") == best_step),
                     dict(v.metrics, step=best_step))
    summary = {k: x for k, x in final.items() if k != "split"}
    summary.update(best_metric=result.state["best"], best_step=best_step, train_seconds=round(time.time() - t0, 2))
    if use_best:
        summary.update(steps=result.state["step"], outputs_from=f"{checkpoint_name('best')} (step {best_step})")
    if trainer.main:
        images = {}
        p = plots.loss_curves(read_jsonl(folder.file(METRICS)), folder.plots)
        if p:
            images["loss"] = p
        if cfg.stage == "finetune" and v is not None and v.pred is not None and data.parts:
            images.update(_several_target_outputs(folder, data, trainer.meta["targets"], v.rows, v.pred))
        elif cfg.stage == "finetune" and v is not None and v.pred is not None:
            images.update(_target_outputs(folder, data, v.rows, v.pred, data.enc.targets[v.rows]))
            summary.update(_insight(cfg, folder, data, v.rows, v.pred, data.enc.targets[v.rows], None))
        if cfg.stage == "pretrain" and _asked(cfg, "embeddings"):
            summary.update(_pretrain_embeddings(cfg, folder, data))
        cfg.tracking_finish(summary=summary, images=images)
        log(f"done: {summary}")
    trainer.acc.wait_for_everyone()
    return summary


def _target_outputs(folder: RunFolder, data, rows, pred, y, name="validation", spread=None) -> dict:
    """The predictions file and the plot for target predictions. spread: the per-sample standard
    deviation over prediction passes (a `std` column: in the target's units for regression, of
    the predicted class's probability for classification). With quantile outputs the prediction
    is the level nearest 0.5 and every level gets its own column (q0.1, q0.5, ...)."""
    from aam_runtime.outputs import point_column

    ids = data.enc.prepared.sample_ids
    images = {}
    q = data.quantiles if data.target_type != "classification" else []
    classes = list(data.classes) if data.target_type == "classification" else []
    lines = [f"{ID_HEADER}\tsplit\tprediction\ttruth" + ("\tstd" if spread is not None else "")
             + "".join(f"\tq{level:g}" for level in q) + "".join(f"\t{PROBABILITY}:{c}" for c in classes)]
    if data.target_type == "classification":
        cls = pred.argmax(1)
        sd = spread[np.arange(len(cls)), cls] if spread is not None else None
        prob = probabilities(pred)
        for i, (r, c, t) in enumerate(zip(rows, cls, y)):
            truth = data.classes[t] if t >= 0 else ""
            extra = f"\t{sd[i]:.6g}" if sd is not None else ""
            extra += "".join(f"\t{v:.6g}" for v in prob[i])
            lines.append(f"{ids[r]}\t{name}\t{data.classes[c]}\t{truth}{extra}")
        ok = y >= 0
        if ok.any():
            images["confusion"] = plots.confusion(y[ok], cls[ok], data.classes, folder.plots, f"{data.target_name} ({name})")
    else:
        pred = pred.reshape(len(rows), -1)
        col = point_column(q)
        groups = data.target_groups(rows)
        p = unscale_target(pred[:, col], data.norm, groups)
        levels = [unscale_target(pred[:, j], data.norm, groups) for j in range(len(q))]
        t = unscale_target(y, data.norm, groups) if y is not None else np.full(len(p), np.nan)
        sd = None if spread is None else _spread_in_units(spread.reshape(len(rows), -1)[:, col], data.norm, groups, p)
        for i, (r, a, b) in enumerate(zip(rows, p, t)):
            extra = f"\t{sd[i]:.6g}" if sd is not None else ""
            extra += "".join(f"\t{lv[i]:.6g}" for lv in levels)
            lines.append(f"{ids[r]}\t{name}\t{a:.6g}\t{'' if not np.isfinite(b) else f'{b:.6g}'}{extra}")
        ok = np.isfinite(t)
        if ok.any():
            images["pred_vs_true"] = plots.scatter(t[ok], p[ok], folder.plots, f"{data.target_name} ({name})")
    categorical = {"split"} | ({"prediction", "truth"} if data.target_type == "classification" else set())
    lines.insert(1, q2_types_row(lines[0].split("\t"), categorical))
    atomic_write(folder.file(PREDICTIONS), "\n".join(lines) + "\n")
    return images


def _asked(cfg: RunConfig, output: str) -> bool:
    """Whether spec.outputs asks for this output (embeddings: true; errors: an object)."""
    value = (cfg.spec.get("outputs") or {}).get(output)
    return value is not None and value is not False


def _point_and_truth(data, rows, pred, y) -> tuple[list, list]:
    """Per row, the prediction and the truth in the target's units (class names for a
    classification; "" or NaN where there is no truth)."""
    from aam_runtime.outputs import point_column

    if data.target_type == "classification":
        return [data.classes[c] for c in pred.argmax(1)], [data.classes[t] if t >= 0 else "" for t in y]
    groups = data.target_groups(rows)
    p = unscale_target(pred.reshape(len(rows), -1)[:, point_column(data.quantiles)], data.norm, groups)
    return p.tolist(), unscale_target(y, data.norm, groups).tolist()


def _insight(cfg: RunConfig, folder: RunFolder, data, rows, pred, y, pooled: list | None) -> dict:
    """spec.outputs of a run of one target: its embeddings (predict) and its error analysis."""
    from aam_runtime import insight

    out = {}
    p, t = _point_and_truth(data, rows, pred, y)
    if pooled:
        known = any(v not in ("", None) and v == v for v in t)  # v == v: not NaN
        out.update(_write_embeddings(cfg, folder, data, rows, pooled[0], colour=np.asarray(t if known else p)))
    if _asked(cfg, "errors"):
        ids = [data.enc.prepared.sample_ids[r] for r in rows]
        out.update(insight.write_errors(folder, ids, p, t, data.target_type, data.enc.prepared.metadata,
                                        cfg.spec["outputs"]["errors"].get("by") or [], data.target_name))
    return out


def _write_embeddings(cfg: RunConfig, folder: RunFolder, data, rows, emb: np.ndarray, colour) -> dict:
    from aam_runtime import insight

    ids = [data.enc.prepared.sample_ids[r] for r in rows]
    insight.write_embeddings(folder, ids, emb)
    insight.pcoa_plot(folder, emb, colour, data.target_name or "", f"run/{cfg.name}: sample embeddings")
    log(f"outputs: {len(ids)} sample embeddings ({emb.shape[1]} dimensions) -> {folder.file(EMBEDDINGS)}")
    return {"embeddings": len(ids)}


def _pretrain_embeddings(cfg: RunConfig, folder: RunFolder, data) -> dict:
    """A pretraining's embeddings of all its samples (best.pt, else last.pt), coloured by the
    Dataset's first target where the metadata has it, and its fit to UniFrac."""
    from aam_runtime import insight

    path = folder.path / checkpoint_name("best")
    ck = _load_checkpoint(path if path.exists() else folder.path / checkpoint_name("last"), folder)
    rows = np.sort(np.concatenate([data.train, data.val]))
    emb = _embed(cfg, data, ck, rows)
    out = _write_embeddings(cfg, folder, data, rows, emb, colour=_metadata_colour(cfg, data, rows))
    if data.lookup is not None and len(rows) > 2:
        out.update(insight.unifrac_fit(folder, emb, data.lookup, rows, seed=cfg.seed))
        log(f"outputs: embedding distance against UniFrac: r = {out['embedding_unifrac_r']:.3f} over "
            f"{out['embedding_unifrac_pairs']} pairs")
    return out


def _metadata_colour(cfg: RunConfig, data, rows) -> np.ndarray | None:
    """The Dataset's first target, per row (numbers for regression), or None."""
    targets = cfg.dataset.get("targets") or []
    meta = data.enc.prepared.metadata
    if not targets or meta is None or targets[0]["name"] not in getattr(meta, "columns", []):
        return None
    values = meta[targets[0]["name"]].iloc[rows].to_numpy(dtype=str)
    if targets[0].get("type") == "classification":
        return values
    import pandas as pd

    return pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=float)


PROBABILITY = "probability"  # predictions.tsv: probability:CLASS (probability:TARGET:CLASS with several targets)


def _spread_in_units(sd: np.ndarray, norm: dict, groups, pred: np.ndarray) -> np.ndarray:
    """A standard deviation over passes on the model's scale -> the target's units (exact for
    affine scaling; through expm1 by the delta method). pred: the predictions in those units."""
    sd = sd * target_std(norm, groups)
    return sd * (1.0 + pred) if norm.get("log1p") else sd


def _several_target_outputs(folder: RunFolder, data, targets: list[dict], rows, pred, name="validation",
                            spread=None) -> dict:
    """predictions.tsv for a run with several targets: per target, prediction:NAME and
    truth:NAME (in its units or class names; std:NAME with several passes), and one plot each
    (pred_vs_true_NAME.png or confusion_NAME.png)."""
    from aam_runtime.outputs import point_column

    ids = data.enc.prepared.sample_ids
    header = [ID_HEADER, "split"]
    columns = []  # per target: list of formatted strings per row
    images = {}
    for t, view in zip(targets, data.parts):
        block = pred[:, t["start"]:t["stop"]]
        y = view.enc.targets[rows]
        sd = spread[:, t["start"]:t["stop"]] if spread is not None else None
        header += [f"prediction:{t['name']}", f"truth:{t['name']}"] + ([f"std:{t['name']}"] if sd is not None else [])
        if t["type"] == "classification":
            cls = block.argmax(1)
            cells = [[str(view.classes[c]), view.classes[v] if v >= 0 else ""] for c, v in zip(cls, y)]
            if sd is not None:
                for i, c in enumerate(cls):
                    cells[i].append(f"{sd[i, c]:.6g}")
            header += [f"{PROBABILITY}:{t['name']}:{c}" for c in view.classes]
            for i, row in enumerate(probabilities(block)):
                cells[i].extend(f"{v:.6g}" for v in row)
            ok = y >= 0
            if ok.any():
                plot = target_plot(CONFUSION_PLOT, t["name"])
                images[Path(plot).stem] = plots.confusion(y[ok], cls[ok], view.classes, folder.plots,
                                                          f"{t['name']} ({name})", name=plot)
        else:
            groups = view.target_groups(rows)
            col = point_column(t.get("quantiles") or [])
            p = unscale_target(block[:, col], view.norm, groups)
            truth = unscale_target(y, view.norm, groups)
            cells = [[f"{a:.6g}", f"{b:.6g}" if np.isfinite(b) else ""] for a, b in zip(p, truth)]
            if sd is not None:
                for i, v in enumerate(_spread_in_units(sd[:, col], view.norm, groups, p)):
                    cells[i].append(f"{v:.6g}")
            ok = np.isfinite(truth)
            if ok.any():
                plot = target_plot(PRED_PLOT, t["name"])
                images[Path(plot).stem] = plots.scatter(truth[ok], p[ok], folder.plots, f"{t['name']} ({name})",
                                                        name=plot)
        columns.append(cells)
    categorical = {"split"} | {f"{kind}:{t['name']}" for t in targets if t["type"] == "classification"
                               for kind in ("prediction", "truth")}
    lines = ["\t".join(header), q2_types_row(header, categorical)]
    for i, r in enumerate(rows):
        lines.append("\t".join([ids[r], name] + [c for cells in columns for c in cells[i]]))
    atomic_write(folder.file(PREDICTIONS), "\n".join(lines) + "\n")
    return images


def _checkpoint_model(cfg: RunConfig, ck: dict, meta: dict, n_outputs: int):
    """A checkpoint's network, in eval mode on the run's device."""
    from aam_runtime.model import build_model
    from aam_runtime.outputs import conditional_column

    model = build_model(meta["model_spec"], cfg.hardware, max_bp=meta["max_bp"], n_outputs=n_outputs,
                        categorical_sizes=[len(lv) for lv in meta["cat_levels"]], max_asvs=meta["max_asvs"],
                        conditional_column=conditional_column(meta["model_spec"], meta["cat_columns"]))
    model.load_state_dict(ck["model"])
    device = "cpu" if cfg.hardware["accelerator"] == "cpu" else "cuda"
    return model.to(device).eval(), device


def _predict_outputs(cfg: RunConfig, data, ck: dict, meta: dict, n_outputs: int,
                     pooled: list | None = None) -> tuple[list, int]:
    """The finetune checkpoint's network on the predict data: target outputs [n, n_outputs] of
    every pass (several passes draw other ASVs, with asvSelection random), and the pass count.
    pooled, when given, receives the sample vectors the target is read from (mean over passes)."""
    import torch

    from aam_runtime.data import batches as B
    from aam_runtime.device import inference_autocast

    model, device = _checkpoint_model(cfg, ck, meta, n_outputs)
    bs = cfg.trainer["batchSize"]
    random_asvs = cfg.dataset["asvSelection"] == "random"
    passes = int((cfg.spec.get("prediction") or {}).get("passes", 1)) if random_asvs else 1
    rows = data.val
    outputs, vectors = [], []
    for p in range(passes):
        if passes > 1:
            data.enc.redraw(cfg.dataset["maxAsvsPerSample"], B.pass_key(cfg.seed, p))
        preds, vecs = [], []
        with torch.no_grad(), inference_autocast(cfg.precision, device):
            for i in range(0, len(rows), bs):
                batch = B.to_torch(B.collate_numpy(data.enc, rows[i:i + bs]), device)
                res = model(batch, need_target=True)
                preds.append(res["target"].float().cpu().numpy())
                if pooled is not None:
                    vecs.append(res["pooled"].float().cpu().numpy())
        outputs.append(np.concatenate(preds))
        if pooled is not None:
            vectors.append(np.concatenate(vecs))
    if pooled is not None:
        pooled.append(np.mean(vectors, axis=0))
    return outputs, passes


def _embed(cfg: RunConfig, data, ck: dict, rows: np.ndarray) -> np.ndarray:
    """A pretrained checkpoint's sample embeddings (the encoder's pooled output) of rows."""
    import torch

    from aam_runtime.data import batches as B
    from aam_runtime.device import inference_autocast

    model, device = _checkpoint_model(cfg, ck, ck["meta"], 0)
    bs = cfg.trainer["batchSize"] if isinstance(cfg.trainer["batchSize"], int) else 8
    out = []
    with torch.no_grad(), inference_autocast(cfg.precision, device):
        for i in range(0, len(rows), bs):
            batch = B.to_torch(B.collate_numpy(data.enc, rows[i:i + bs]), device)
            out.append(model(batch)["embedding"].float().cpu().numpy())
    return np.concatenate(out)


# what every checkpoint of an ensemble must share: how samples are read and what the head predicts
_ENSEMBLE_KEYS = ("max_bp", "max_asvs", "cat_columns", "cat_levels", "target", "target_type", "classes")


def _check_ensemble(paths: list[str], cks: list[dict]) -> None:
    first = cks[0]["meta"]
    for path, ck in zip(paths[1:], cks[1:]):
        meta = ck["meta"]
        for key in _ENSEMBLE_KEYS:
            if meta.get(key) != first.get(key):
                raise DataError(f"{path}: cannot average with {paths[0]}: their {key} differ "
                                f"({meta.get(key)!r} vs {first.get(key)!r}); an ensemble's runs fine-tune the "
                                f"same target(s) on Datasets read the same way (maxBp, maxAsvsPerSample, categoricals)")
        mine, theirs = _head_outputs(meta), _head_outputs(first)
        if mine != theirs:
            raise DataError(f"{path}: cannot average with {paths[0]}: their target heads give different outputs "
                            f"({mine} vs {theirs}); use runs whose Models share targetHead.loss and quantiles")
        mine = [(t["name"], t["type"], t["classes"], t["start"], t["stop"]) for t in meta.get("targets") or []]
        theirs = [(t["name"], t["type"], t["classes"], t["start"], t["stop"]) for t in first.get("targets") or []]
        if mine != theirs:
            raise DataError(f"{path}: cannot average with {paths[0]}: their targets differ "
                            f"({[t[0] for t in mine]} vs {[t[0] for t in theirs]})")


def _head_outputs(meta: dict) -> list:
    """What a checkpoint's head emits: per target, its quantile levels (or [] for one value or
    class logits)."""
    if meta.get("targets"):
        return [list(t.get("quantiles") or []) for t in meta["targets"]]
    from aam_runtime.losses import TargetLoss

    return [list(TargetLoss(meta["model_spec"]["targetHead"], meta["target_type"]).quantiles)]


def _rescale(out: np.ndarray, norm: dict, first: dict, groups) -> np.ndarray:
    """Regression outputs on one member's target scale -> the first member's (units in between),
    column by column; the identity when both were scaled alike."""
    from aam_runtime.data.prepare import scale_target, unscale_target

    if norm == first or not norm or not first:
        return out
    cols = [scale_target(unscale_target(out[:, j].astype(np.float64), norm, groups), first, groups)
            for j in range(out.shape[1])]
    return np.stack(cols, axis=1).astype(out.dtype)


def _ensemble_outputs(cfg: RunConfig, data, cks: list[dict], n_outputs: int,
                      pooled: list | None = None) -> tuple[list, int]:
    """Every member's outputs over every pass, on the first member's target scale: the list that
    the passes average runs over. Returns (outputs, passes per member). pooled receives the first
    member's sample vectors (members' spaces differ: theirs are not averaged)."""
    first = cks[0]["meta"]
    rows = data.val
    outputs, passes = [], 1
    for k, ck in enumerate(cks):
        meta = ck["meta"]
        outs, passes = _predict_outputs(cfg, data, ck, meta, n_outputs, pooled=pooled if k == 0 else None)
        for o in outs:
            if meta.get("targets"):
                o = o.copy()
                for t, t0, view in zip(meta["targets"], first["targets"], data.parts):
                    if t["type"] != "classification":
                        o[:, t["start"]:t["stop"]] = _rescale(o[:, t["start"]:t["stop"]], t["norm"], t0["norm"],
                                                              view.target_groups(rows))
            elif meta["target_type"] != "classification":
                o = _rescale(o, meta["norm"], first["norm"], data.target_groups(rows))
            outputs.append(o)
    return outputs, passes


def _predict_several(cfg: RunConfig, folder: RunFolder, cks: list[dict], meta: dict) -> dict:
    """predict for a checkpoint fine-tuned on several targets: every target's outputs, and its
    metrics (metric:target) where the Dataset has the column."""
    from aam_runtime.data.prepare import prepare
    from aam_runtime.device import check_hardware
    from aam_runtime.outputs import average_blocks, target_metrics

    data = prepare(cfg, folder, "predict", ckpt_meta=meta)
    check_hardware(cfg)
    pooled = [] if _asked(cfg, "embeddings") else None
    outputs, passes = _ensemble_outputs(cfg, data, cks, meta["n_outputs"], pooled=pooled)
    rows = data.val
    pred, spread = average_blocks(outputs, [(t["start"], t["stop"], t["type"]) for t in meta["targets"]])
    cfg.tracking_start(folder)
    images = _several_target_outputs(folder, data, meta["targets"], rows, pred, name="predict",
                                     spread=spread if len(outputs) > 1 else None)
    summary = {"samples": int(len(rows)), "passes": passes, "models": len(cks)}
    for t, view in zip(meta["targets"], data.parts):
        y = view.enc.targets[rows]
        has_truth = (y >= 0).any() if t["type"] == "classification" else np.isfinite(y).any()
        if has_truth:
            view.quantiles = list(t.get("quantiles") or [])
            m = target_metrics(pred[:, t["start"]:t["stop"]], y, view, rows)
            summary.update({f"{k}:{t['name']}": v for k, v in m.items()})
    if pooled:
        summary.update(_write_embeddings(cfg, folder, data, rows, pooled[0], colour=None))
    if _asked(cfg, "errors"):
        log("warning: outputs.errors covers models of one target; this one predicts "
            f"{len(meta['targets'])}: no errors.tsv")
    folder.metric(split="predict", step=0, **summary)
    cfg.tracking_finish(summary=summary, images=images)
    log(f"predict: {len(rows)} samples, targets {', '.join(t['name'] for t in meta['targets'])} -> "
        f"{folder.file(PREDICTIONS)}; {summary}")
    return summary


def predict_stage(cfg: RunConfig, folder: RunFolder) -> dict:
    """Predictions of a finetuned checkpoint on any Dataset (unseen ASVs included), with metrics
    where the Dataset has the target."""
    from aam_runtime.data.prepare import prepare
    from aam_runtime.device import check_hardware
    from aam_runtime.losses import TargetLoss
    from aam_runtime.outputs import average_passes, target_metrics

    cks = []
    for path in cfg.init_checkpoints:
        ck = _load_checkpoint(path, folder)
        ck["meta"] = ck.get("meta") or {}
        if ck["meta"].get("stage") != "finetune":
            raise DataError(f"{path}: predict needs a finetune checkpoint (this one is from a "
                            f"{ck['meta'].get('stage', 'unknown')} run)")
        cks.append(ck)
    _check_ensemble(cfg.init_checkpoints, cks)
    meta = cks[0]["meta"]
    if meta.get("targets"):
        return _predict_several(cfg, folder, cks, meta)
    cfg.spec = dict(cfg.spec, target=meta["target"])
    if meta["target"] not in [t["name"] for t in cfg.dataset["targets"]]:
        # the column the model predicts, read as the finetune run read it (scaling comes from meta)
        cfg.dataset = dict(cfg.dataset, targets=list(cfg.dataset["targets"]) +
                           [{"name": meta["target"], "type": meta["target_type"], "normalize": "none"}])
    data = prepare(cfg, folder, "predict", ckpt_meta=meta)
    data.target_type = meta["target_type"]
    check_hardware(cfg)
    head = TargetLoss(meta["model_spec"]["targetHead"], meta["target_type"])
    data.quantiles = list(head.quantiles)
    pooled = [] if _asked(cfg, "embeddings") else None
    outputs, passes = _ensemble_outputs(cfg, data, cks, head.n_outputs(len(meta["classes"])), pooled=pooled)
    rows = data.val
    pred, spread = average_passes(outputs, data.target_type)
    y = data.enc.targets[rows] if data.enc.targets is not None else None
    cfg.tracking_start(folder)
    if y is None:
        y = np.full(len(rows), np.nan, dtype=np.float32) if data.target_type != "classification" else np.full(len(rows), -1)
    images = _target_outputs(folder, data, rows, pred, y, name="predict", spread=spread if len(outputs) > 1 else None)
    summary = {"samples": int(len(rows)), "passes": passes, "models": len(cks)}
    has_truth = (y >= 0).any() if data.target_type == "classification" else np.isfinite(y).any()
    if has_truth:
        summary.update(target_metrics(pred, y, data, rows))
    summary.update(_insight(cfg, folder, data, rows, pred, y, pooled))
    folder.metric(split="predict", step=0, **summary)
    cfg.tracking_finish(summary=summary, images=images)
    log(f"predict: {len(rows)} samples -> {folder.file(PREDICTIONS)}; {summary}")
    return summary


def baseline_stage(cfg: RunConfig, folder: RunFolder) -> dict:
    """Random forest on relative abundances with the transformer's split and metrics."""
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

    from aam_runtime.data.prepare import prepare
    from aam_runtime.outputs import target_metrics

    data = prepare(cfg, folder, "baseline")
    counts = data.enc.prepared.counts
    rel = counts.multiply(1.0 / np.maximum(np.asarray(counts.sum(axis=1)), 1e-12)).tocsr()
    bl = cfg.spec["baseline"]
    mf = None if bl["maxFeatures"] == "all" else bl["maxFeatures"]
    kw = dict(n_estimators=bl["trees"], max_features=mf, n_jobs=-1, random_state=cfg.seed)
    Model = RandomForestClassifier if data.target_type == "classification" else RandomForestRegressor
    folder.update_status(phase="Running", stage="baseline", step=0, total_steps=1)
    cfg.tracking_start(folder)
    t0 = time.time()
    y = data.enc.targets
    rf = Model(**kw).fit(rel[data.train], y[data.train])
    if data.target_type == "classification":
        proba = rf.predict_proba(rel[data.val])
        pred = np.full((len(data.val), len(data.classes)), -1e9)
        pred[:, rf.classes_] = np.log(np.clip(proba, 1e-9, 1))
    else:
        pred = rf.predict(rel[data.val]).reshape(-1, 1)
    summary = target_metrics(pred, y[data.val], data, data.val)
    summary["train_seconds"] = round(time.time() - t0, 2)
    images = _target_outputs(folder, data, data.val, pred, y[data.val])
    summary.update(_insight(cfg, folder, data, data.val, pred, y[data.val], None))
    folder.metric(split="validation", step=1, epoch=1, **summary)
    folder.update_status(step=1, val_metrics=summary)
    cfg.tracking_finish(summary=summary, images=images)
    log(f"baseline random forest ({bl['trees']} trees): {summary}")
    return summary
