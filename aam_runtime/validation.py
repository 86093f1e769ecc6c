"""Validation: every rank's share of the validation split through the evaluated weights, the
outputs gathered and, with several passes (random ASV selection: each pass draws other ASVs),
averaged; metrics on the gathered rows, as the stage's objective names them."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from aam_runtime.config import RunConfig
from aam_runtime.data import batches as B
from aam_runtime.data.prepare import Data


@dataclass
class Validation:
    metrics: dict
    rows: np.ndarray  # dataset rows, in the order of pred
    pred: np.ndarray | None  # target outputs (finetune), else None


@torch.no_grad()
def validate(acc, cfg: RunConfig, model, objective, data: Data) -> Validation:
    from accelerate.utils import gather_object

    passes = getattr(objective, "passes", 1)
    saved = (data.enc.sel_idx, data.enc.sel_cnt)
    model.eval()
    rows_out, pred_out, parts = [], [], {}
    for p in range(passes):
        if passes > 1:
            data.enc.redraw(cfg.dataset["maxAsvsPerSample"], B.pass_key(cfg.seed, p))
        rows_out, preds = _one_pass(acc, int(cfg.trainer["batchSize"]), model, objective, data, parts)
        pred_out.append(preds)
    data.enc.sel_idx, data.enc.sel_cnt = saved
    gathered = gather_object([{"rows": rows_out, "pred": pred_out, "parts": parts}])
    model.train()
    merged: dict[str, list] = {}
    rows_all, preds_all = [], []
    for g in gathered:
        for k, v in g["parts"].items():
            merged.setdefault(k, []).extend(v)
        rows_all.extend(g["rows"])
        if g["pred"][0]:  # this rank had rows and the stage predicts a target
            preds_all.append(objective.average([np.concatenate(pp) for pp in g["pred"]]))
    means = {k: float(np.average([a for a, _ in v], weights=[n for _, n in v])) for k, v in merged.items()}
    rows = np.concatenate(rows_all) if rows_all else np.array([], dtype=np.int64)
    pred = np.concatenate(preds_all) if preds_all else None
    return Validation(metrics=objective.summarize(means, rows, pred), rows=rows, pred=pred)


def _one_pass(acc, batch_size: int, model, objective, data: Data, parts: dict) -> tuple[list, list]:
    """This rank's share of the validation rows, in batches; each batch's values go into parts."""
    mine = data.val[acc.process_index::acc.num_processes]
    rows_out, pred_out = [], []
    gen = torch.Generator().manual_seed(12345)
    for i in range(0, len(mine), batch_size):
        rows = mine[i:i + batch_size]
        batch = B.to_torch(B.collate_numpy(data.enc, rows), acc.device)
        with acc.autocast():
            values, pred = objective.validation_batch(model, batch, rows, gen)
        for k, v in values.items():
            parts.setdefault(k, []).append((v, len(rows)))
        if pred is not None:
            pred_out.append(pred)
        rows_out.append(rows)
    return rows_out, pred_out


def with_best_validation(acc, cfg: RunConfig, o, objective, data: Data, folder, result):
    """A finetune's FitResult with the validation of its best checkpoint: the one the loop kept,
    or, when this process never ran it (the run resumed after its best step), best.pt validated
    again once the fit is over (o: the fit's Optimisation; every rank takes part, validation
    gathers). Not under FSDP (a full state dict into shards): there the last validation stands."""
    if cfg.stage == "finetune" and result.best_validation is None and result.state["best_step"] is not None:
        result.best_validation = _validate_saved(acc, cfg, o, objective, data, folder)
    return result


def _validate_saved(acc, cfg: RunConfig, o, objective, data: Data, folder) -> Validation | None:
    from accelerate.utils import DistributedType

    from aam_runtime.checkpoints import load_checkpoint
    from aam_runtime.console import log
    from aam_runtime.runfolder import checkpoint_name

    path = folder.path / checkpoint_name("best")
    if not path.exists() or acc.distributed_type == DistributedType.FSDP:
        return None
    weights = load_checkpoint(path, state_runs=folder.path.parent.parent)["model"]
    (o.ema.module if o.ema is not None else o.raw).load_state_dict(weights)
    log(f"outputs: validating {path.name} again: it was written before this process resumed")
    return validate(acc, cfg, o.evaluated, objective, data)
