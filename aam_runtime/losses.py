"""One function per loss, shared by training and validation.

Each takes the model's output dict (see model.AAM.forward) and the batch, and returns tensors;
the recipes weight and sum them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from aam_runtime.model import pairwise_unifrac_loss, sharded_unifrac_loss


def nucleotide(out: dict) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Masked-nucleotide cross-entropy and accuracy over the masked bases; None when no base was
    masked in this batch (masking off, or every base drew above the ratio)."""
    logits = out.get("nuc_logits")
    if logits is None or not logits.numel():
        return None
    loss = F.cross_entropy(logits.float(), out["nuc_targets"])
    accuracy = (logits.argmax(-1) == out["nuc_targets"]).float().mean().detach()
    return loss, accuracy


def count(out: dict, batch: dict) -> torch.Tensor:
    """MSE of the predicted log count of every real ASV slot."""
    mask = batch["mask"]
    return F.mse_loss(out["count_pred"][mask].float(), batch["log_counts"][mask])


class TargetLoss:
    """The target loss a Model's targetHead names, for one target.

    Regression: huber (delta) | mse | mae on the model's scale; quantile: the pinball loss over
    one output per level; asymmetric: separate weights for over- and under-prediction.
    Classification: cross-entropy with class weights and label smoothing.
    """

    def __init__(self, head: dict, target_type: str, class_weights: list[float] | None = None):
        self.target_type = target_type
        self.kind = "cross_entropy" if target_type == "classification" else head.get("loss", "huber")
        self.delta = float(head.get("huberDelta", 1.0))
        self.quantiles = [float(q) for q in head.get("quantiles") or [0.5]] if self.kind == "quantile" else []
        asym = head.get("asymmetric") or {}
        self.over, self.under = float(asym.get("over", 1.0)), float(asym.get("under", 1.0))
        self.smoothing = float(head.get("labelSmoothing", 0.0))
        self.class_weights = class_weights

    def n_outputs(self, n_classes: int) -> int:
        if self.target_type == "classification":
            return n_classes
        return len(self.quantiles) if self.kind == "quantile" else 1

    def __call__(self, pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.kind == "cross_entropy":
            w = None
            if self.class_weights is not None:
                w = torch.tensor(self.class_weights, dtype=torch.float32, device=pred.device)
            return F.cross_entropy(pred.float(), y, weight=w, label_smoothing=self.smoothing)
        p = pred.float()
        if self.kind == "quantile":
            tau = torch.tensor(self.quantiles, dtype=torch.float32, device=p.device)[None, :]
            err = y[:, None] - p  # > 0: under-prediction
            return torch.maximum(tau * err, (tau - 1.0) * err).mean()
        p = p.squeeze(-1)
        if self.kind == "asymmetric":
            err = p - y
            return (self.over * err.clamp(min=0) + self.under * (-err).clamp(min=0)).mean()
        if self.kind == "mse":
            return F.mse_loss(p, y)
        if self.kind == "mae":
            return F.l1_loss(p, y)
        return F.huber_loss(p, y, delta=self.delta)


def class_weights(spec, classes: list, train_labels) -> list[float] | None:
    """targetHead.classWeights as one weight per class: none -> None; balanced -> n / (k * count)
    over the training split; a map -> its weights (classes it does not name weigh 1). A name that
    is no class is a data error (ValueError, with the classes)."""
    import numpy as np

    if spec in (None, "none"):
        return None
    if spec == "balanced":
        labels = np.asarray(train_labels)
        labels = labels[labels >= 0]
        counts = np.bincount(labels, minlength=len(classes)).astype(float)
        return [float(len(labels) / (len(classes) * c)) if c else 1.0 for c in counts]
    names = [str(c) for c in classes]
    unknown = [k for k in spec if str(k) not in names]
    if unknown:
        raise ValueError(f"classWeights names {', '.join(map(repr, unknown))}, which "
                         f"{'is not a class' if len(unknown) == 1 else 'are not classes'} of the training split "
                         f"(classes: {', '.join(names)})")
    by = {str(k): float(v) for k, v in spec.items()}
    return [by.get(n, 1.0) for n in names]


def unifrac(emb: torch.Tensor, distances: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, MAE) of embedding distances against UniFrac over the pairs of one batch."""
    return pairwise_unifrac_loss(emb, distances)


def unifrac_global(emb: torch.Tensor, distances: torch.Tensor, acc) -> tuple:
    """(tensor to backpropagate, global UniFrac loss, global MAE) for this rank's embeddings when
    the pairs span the global batch of every data-parallel rank."""
    if acc.num_processes == 1:
        loss, mae = pairwise_unifrac_loss(emb, distances)
        return loss, loss, mae
    gathered = acc.gather(emb.detach())
    offset = acc.process_index * emb.shape[0]  # equal shards: training batches drop the last partial one
    return sharded_unifrac_loss(emb, gathered, offset, distances, acc.num_processes)
