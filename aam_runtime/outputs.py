"""A target head's outputs, from the loss they train under to the predictions and metrics they
become: the target loss of a run (class weights from its data), the column a conditional scale
reads, the bounds of a bounded activation, several passes (or target blocks) averaged, metrics on
the original scale, the point column of a quantile head. Shared by training and the stages."""
from __future__ import annotations

import numpy as np

from aam_runtime import losses as L
from aam_runtime import metrics as M
from aam_runtime.data import table as T
from aam_runtime.data.prepare import Data, scale_target, unscale_target


def target_loss(model_spec: dict, data: Data) -> L.TargetLoss:
    """The target loss of a finetune run (class weights from its training split); also sets
    data.quantiles, which the metrics and the predictions file read."""
    head = model_spec["targetHead"]
    weights = None
    if data.target_type == "classification":
        try:
            weights = L.class_weights(head.get("classWeights"), data.classes, data.enc.targets[data.train])
        except ValueError as exc:
            raise T.DataError(f"model targetHead.classWeights: {exc}") from None
    loss = L.TargetLoss(head, data.target_type, weights)
    data.quantiles = list(loss.quantiles)
    return loss


def conditional_column(model_spec: dict, cat_columns: list[str]) -> int | None:
    """Index of targetHead.conditionalScale's column among the run's categorical columns."""
    col = model_spec["targetHead"].get("conditionalScale")
    if not col:
        return None
    if col not in cat_columns:
        raise T.DataError(f"model targetHead.conditionalScale: '{col}' is not one of the run's categorical columns "
                        f"({', '.join(cat_columns) or 'none'}); add it to the Dataset's categoricalColumns")
    return cat_columns.index(col)


def output_bounds(head: dict, data: Data) -> tuple[float, float]:
    """outputActivation bounded: [min, max] on the model's scale, each end given (original units)
    or taken from the training targets."""
    b = head.get("bounds") or {}
    y = data.enc.targets[data.train]
    y = y[np.isfinite(y)]
    lo = float(scale_target(np.array([b["min"]]), data.norm)[0]) if b.get("min") is not None else float(y.min())
    hi = float(scale_target(np.array([b["max"]]), data.norm)[0]) if b.get("max") is not None else float(y.max())
    if not np.isfinite(lo) or not np.isfinite(hi) or hi <= lo:
        raise T.DataError(f"model targetHead.bounds: the range [{lo:g}, {hi:g}] on the model's scale is empty "
                        "(bounds.min must lie below bounds.max and below the training maximum)")
    return lo, hi


def average_passes(preds: list[np.ndarray], target_type: str | None) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) over passes of [n, k] outputs: regression outputs directly; class logits as
    the log of the mean probability (std of the probabilities)."""
    stack = np.stack(preds)  # [passes, n, k]
    if target_type == "classification":
        prob = M.probabilities(stack)
        return np.log(np.clip(prob.mean(0), 1e-12, 1.0)), prob.std(0)
    return stack.mean(0), stack.std(0)


def average_blocks(outputs: list[np.ndarray], blocks: list[tuple]) -> tuple[np.ndarray, np.ndarray]:
    """average_passes for a head with several targets: each (start, stop, target_type) block of
    the outputs averaged as its kind of target, side by side again."""
    done = [average_passes([o[:, a:b] for o in outputs], kind) for a, b, kind in blocks]
    return np.concatenate([m for m, _ in done], axis=1), np.concatenate([sd for _, sd in done], axis=1)


def target_metrics(pred: np.ndarray, y: np.ndarray, data: Data, rows: np.ndarray) -> dict:
    """Regression metrics on the original scale, or classification metrics; rows without a
    truth (NaN value, unknown class) are left out."""
    if data.target_type == "classification":
        ok = y >= 0
        return M.classification(y[ok], pred[ok], len(data.classes))
    pred = pred.reshape(len(y), -1)
    groups = data.target_groups(rows)
    t = unscale_target(y, data.norm, groups)
    ok = np.isfinite(t)
    q = data.quantiles
    p = unscale_target(pred[:, point_column(q)], data.norm, groups)
    out = M.regression(t[ok], p[ok])
    if len(q) > 1 and ok.any():  # share of truths inside the outer quantiles, against its nominal share
        lo, hi = unscale_target(pred[:, 0], data.norm, groups), unscale_target(pred[:, -1], data.norm, groups)
        out["coverage"] = float(((t >= lo) & (t <= hi))[ok].mean())
        out["coverage_nominal"] = round(q[-1] - q[0], 6)
    return out


def point_column(quantiles: list) -> int:
    """The output column that is the point prediction: the quantile nearest 0.5, or the only one."""
    if not quantiles:
        return 0
    return min(range(len(quantiles)), key=lambda i: abs(quantiles[i] - 0.5))
