"""One objective per training stage: what a step's loss is and what a validation reports.

PretrainObjective: UniFrac distances over the global batch + masked nucleotides (+ counts).
FinetuneObjective: the target (+ masked nucleotides if weighted), metrics on the gathered rows.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from aam_runtime import losses as L
from aam_runtime.config import RunConfig
from aam_runtime.data.prepare import Data
from aam_runtime.outputs import average_blocks, average_passes, target_loss, target_metrics


def self_supervised_losses(res: dict, batch: dict, data: Data, acc, global_rows, *, unifrac: float,
                           nucleotide: float, count: float) -> tuple[torch.Tensor, dict]:
    """The weighted sum of the self-supervised terms (pairwise UniFrac over the global batch,
    masked nucleotides, log counts) that have a positive weight, and each term for the logs."""
    out: dict = {}
    loss = torch.zeros((), device=batch["tokens"].device)
    if unifrac > 0 and data.lookup is not None:
        dist = torch.from_numpy(data.lookup.sub(global_rows())).to(loss.device)
        surrogate, uf, mae = L.unifrac_global(res["embedding"], dist, acc)
        out["unifrac_loss"], out["unifrac_mae"] = uf.detach(), mae
        loss = loss + unifrac * surrogate
    nuc = L.nucleotide(res) if nucleotide > 0 else None
    if nuc is not None:
        out["nuc_loss"], out["nuc_accuracy"] = nuc
        loss = loss + nucleotide * nuc[0]
    if count > 0:
        out["count_loss"] = L.count(res, batch)
        loss = loss + count * out["count_loss"]
    return loss, out


class PretrainObjective:
    """UniFrac pairwise distances (global batch) + masked-nucleotide + count losses."""

    stage = "pretrain"
    n_outputs = 0  # no target head

    def __init__(self, cfg: RunConfig, data: Data):
        self.w = cfg.trainer["lossWeights"]
        self.data = data

    def train_losses(self, model, batch, gen, acc, global_rows) -> dict:
        w = self.w
        res = model(batch, mask_nucleotides=w["nucleotide"] > 0, generator=gen)
        loss, out = self_supervised_losses(res, batch, self.data, acc, global_rows, unifrac=w["unifrac"],
                                           nucleotide=w["nucleotide"], count=w["count"])
        out["loss"] = loss
        return out

    def validation_batch(self, model, batch, rows, gen) -> tuple[dict, np.ndarray | None]:
        res = model(batch, mask_nucleotides=self.w["nucleotide"] > 0, generator=gen)
        out = {}
        if self.data.lookup is not None and len(rows) >= 2:
            dist = torch.from_numpy(self.data.lookup.sub(rows)).to(res["embedding"].device)
            out["unifrac_loss"], out["unifrac_mae"] = (float(x) for x in L.unifrac(res["embedding"], dist))
        nuc = L.nucleotide(res)
        if nuc is not None:
            out["nuc_loss"], out["nuc_accuracy"] = float(nuc[0]), float(nuc[1])
        return out, None

    def summarize(self, means: dict, rows: np.ndarray, pred: np.ndarray) -> dict:
        return {**means, "val_loss": self.w["unifrac"] * means.get("unifrac_loss", 0.0)
                + self.w["nucleotide"] * means.get("nuc_loss", 0.0)}


@dataclass
class TargetPart:
    """One target of a run with several: its view of the data, loss, weight, and the block of
    head outputs [start, stop) that is its own; `column` is its column of enc.targets."""

    view: Data
    loss: L.TargetLoss
    weight: float
    column: int
    start: int
    stop: int

    @property
    def name(self) -> str:
        return self.view.target_name

    def y(self, values):
        """This target's column of a [n, T] target array (numpy or torch), typed for its loss."""
        col = values[:, self.column]
        if self.view.target_type == "classification":
            return col.long() if isinstance(col, torch.Tensor) else col.astype(np.int64)
        return col


def target_parts(cfg: RunConfig, data: Data) -> list[TargetPart]:
    """Run spec.targets: one TargetPart per target, output blocks laid side by side."""
    parts, start = [], 0
    for column, (t, view) in enumerate(zip(cfg.target_list(), data.parts)):
        head = dict(cfg.model["targetHead"], **({"loss": t["loss"]} if t.get("loss") else {}))
        loss = target_loss({"targetHead": head}, view)
        width = loss.n_outputs(len(view.classes))
        parts.append(TargetPart(view, loss, t["weight"], column, start, start + width))
        start += width
    return parts


class FinetuneObjective:
    """The target loss (with several targets, their weighted sum), plus the auxiliary losses
    weighted by lossWeights.*WhenFinetuning: masked nucleotides, pairwise UniFrac over the global
    batch, log counts."""

    stage = "finetune"

    def __init__(self, cfg: RunConfig, data: Data):
        self.w = {k: cfg.loss_weight(k) for k in ("target", "nucleotideWhenFinetuning", "unifracWhenFinetuning",
                                                  "countWhenFinetuning")}
        self.data = data
        self.parts = target_parts(cfg, data) if data.parts else []
        if self.parts:
            self.n_outputs = self.parts[-1].stop
        else:
            self.loss = target_loss(cfg.model, data)
            self.n_outputs = self.loss.n_outputs(len(data.classes))
        self.passes = int(cfg.trainer.get("validationPasses", 1)) if cfg.dataset["asvSelection"] == "random" else 1

    def _target_losses(self, res, batch) -> tuple[torch.Tensor, dict]:
        """The target loss, and with several targets each one's (target_loss:NAME)."""
        if not self.parts:
            return self.loss(res["target"], batch["targets"]), {}
        total, each = 0.0, {}
        for p in self.parts:
            value = p.loss(res["target"][:, p.start:p.stop], p.y(batch["targets"]))
            each[f"target_loss:{p.name}"] = value.detach()
            total = total + p.weight * value
        return total, each

    def train_losses(self, model, batch, gen, acc, global_rows) -> dict:
        w = self.w
        res = model(batch, mask_nucleotides=w["nucleotideWhenFinetuning"] > 0, generator=gen, need_target=True)
        aux, out = self_supervised_losses(res, batch, self.data, acc, global_rows, unifrac=w["unifracWhenFinetuning"],
                                          nucleotide=w["nucleotideWhenFinetuning"], count=w["countWhenFinetuning"])
        out.pop("nuc_accuracy", None)  # fine-tuning logs the nucleotide loss only, as before
        out["target_loss"], each = self._target_losses(res, batch)
        out.update(each)
        out["loss"] = w["target"] * out["target_loss"] + aux
        if "fusion_gate" in res:  # gated / gmu fusion: how much of the categorical signal passes
            out["fusion_gate"] = res["fusion_gate"]
        return out

    def validation_batch(self, model, batch, rows, gen) -> tuple[dict, np.ndarray | None]:
        res = model(batch, need_target=True)
        total, each = self._target_losses(res, batch)
        return {"target_loss": float(total), **{k: float(v) for k, v in each.items()}}, \
            res["target"].float().cpu().numpy()

    def summarize(self, means: dict, rows: np.ndarray, pred: np.ndarray | None) -> dict:
        pred = pred if pred is not None else np.zeros((0, self.n_outputs))
        out = {**means, "val_loss": means.get("target_loss", 0.0)}
        if not self.parts:
            out.update(target_metrics(pred, self.data.enc.targets[rows], self.data, rows))
        for p in self.parts:  # each target's metrics, named metric:target
            m = target_metrics(pred[:, p.start:p.stop], p.y(self.data.enc.targets[rows]), p.view, rows)
            out.update({f"{k}:{p.name}": v for k, v in m.items()})
        return out

    def average(self, outputs: list[np.ndarray]) -> np.ndarray:
        """Outputs of several validation passes -> their mean (per target block with several)."""
        if not self.parts:
            return average_passes(outputs, self.data.target_type)[0]
        return average_blocks(outputs, [(p.start, p.stop, p.view.target_type) for p in self.parts])[0]


OBJECTIVES = {"pretrain": PretrainObjective, "finetune": FinetuneObjective}
