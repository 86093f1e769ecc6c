"""The metrics a run can select its best checkpoint by: one table, read by aamctl's rules and by
the trainer. Import-light on purpose (no numpy, no torch): aamctl imports it.

The Run schema's `trainer.earlyStopping.metric` and the Sweep schema's `objective.metric` enums
list the same names; a test keeps them equal, so adding a metric means one row here and one word
in each.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    name: str
    stages: tuple[str, ...]  # stages whose validation computes it
    higher_is_better: bool
    target_type: str | None = None  # regression | classification | None (any)


METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("val_loss", ("pretrain", "finetune"), False),
    Metric("mae", ("finetune",), False, "regression"),
    Metric("rmse", ("finetune",), False, "regression"),
    Metric("r2", ("finetune",), True, "regression"),
    Metric("accuracy", ("finetune",), True, "classification"),
    Metric("f1", ("finetune",), True, "classification"),
    Metric("auroc", ("finetune",), True, "classification"),
    Metric("unifrac_mae", ("pretrain",), False),
    Metric("nuc_accuracy", ("pretrain",), True),
)}


def split_metric(name: str) -> tuple[str, str | None]:
    """'mae:age' -> ('mae', 'age'): a target's metric in a run with several targets; 'mae' -> ('mae', None)."""
    base, _, target = name.partition(":")
    return base, (target or None)


def improved(metric: str, value: float, best: float | None) -> bool:
    """Is `value` better than the best so far (None: nothing yet)? metric may name a target (mae:age)."""
    if best is None:
        return True
    return value > best if METRICS[split_metric(metric)[0]].higher_is_better else value < best


def metrics_for(stage: str, target_type: str | None = None) -> list[str]:
    return [m.name for m in METRICS.values() if stage in m.stages
            and (m.target_type is None or target_type is None or m.target_type == target_type)]
