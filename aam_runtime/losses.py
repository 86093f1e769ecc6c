"""One function per loss, shared by training and validation.

Each takes the model's output dict (see model.AAM.forward) and the batch, and returns tensors;
the recipes weight and sum them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .model import pairwise_unifrac_loss, sharded_unifrac_loss


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


def target(pred: torch.Tensor, y: torch.Tensor, target_type: str, regression_loss: str) -> torch.Tensor:
    """Cross-entropy for a class; mse, mae or huber on the (scaled) value for a regression target."""
    if target_type == "classification":
        return F.cross_entropy(pred.float(), y)
    p = pred.float().squeeze(-1)
    if regression_loss == "mse":
        return F.mse_loss(p, y)
    if regression_loss == "mae":
        return F.l1_loss(p, y)
    return F.huber_loss(p, y)


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
