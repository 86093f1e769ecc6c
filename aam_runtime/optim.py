"""Optimisation pieces set up once per fit: parameter groups with their rates, the optimizer,
the learning-rate schedule (a picklable factor per group), and the weight average (trainer.ema)."""
from __future__ import annotations

import math

import torch

from aam_runtime.console import log
from aam_runtime.data import table as T
from aam_runtime.model import AAM, param_group


def param_groups(model: AAM, tr: dict) -> list[dict]:
    """Trainable parameters by group (base, head, categorical), each split into decayed weights
    and undecayed biases/norms, with the group's peak rate (trainer.learningRates or learningRate)."""
    rates = tr.get("learningRates") or {}
    by: dict[str, list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        by.setdefault(param_group(name), []).append(p)
    out = []
    for group in ("base", "head", "categorical"):
        params = by.get(group, [])
        if not params:
            continue
        lr = rates.get(group) or tr["learningRate"]
        for decay in (True, False):
            ps = [p for p in params if (p.ndim >= 2) == decay]
            if ps:
                out.append({"params": ps, "weight_decay": tr["weightDecay"] if decay else 0.0, "lr": lr,
                            "group": group})
    return out


def make_optimizer(groups: list[dict], tr: dict) -> torch.optim.Optimizer:
    o = tr.get("optimizer") or {}
    kind = o.get("type", "adamw")
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=tr["learningRate"], momentum=o.get("momentum", 0.9),
                               nesterov=bool(o.get("nesterov")) and o.get("momentum", 0.9) > 0)
    if kind == "adam":
        return torch.optim.Adam(groups, lr=tr["learningRate"])
    return torch.optim.AdamW(groups, lr=tr["learningRate"])


class Schedule:
    """The learning-rate factor of one parameter group at an optimizer step (LambdaLR calls it).

    A callable object rather than a closure: LambdaLR's state_dict saves its attributes, so the
    plateau factor survives a resume. `hold`: the factor is 0 for the first `hold` steps (a
    frozen base in a freeze schedule)."""

    def __init__(self, tr: dict, warm: int, total: int, hold: int = 0):
        self.kind = tr["scheduler"]
        self.warm = 0 if self.kind == "onecycle" else warm
        self.total = max(1, total)
        self.hold = hold
        self.restarts = dict(tr.get("cosineRestarts") or {})
        self.one_cycle = dict(tr.get("oneCycle") or {})
        self.plateau = dict(tr.get("plateau") or {})
        self.factor = 1.0  # plateau: multiplied by plateau.factor at each cut
        self.bad = 0

    def __call__(self, step: int) -> float:
        if step < self.hold:
            return 0.0
        if self.warm and step < self.warm:
            return (step + 1) / self.warm
        t = step - self.warm
        span = max(1, self.total - self.warm)
        if self.kind == "constant":
            return 1.0
        if self.kind == "plateau":
            return self.factor
        if self.kind == "linear":
            return max(0.0, 1.0 - min(1.0, t / span))
        if self.kind == "cosine_restarts":
            period, mult = self.restarts.get("periodSteps", 1000), self.restarts.get("multiplier", 1)
            while t >= period:
                t -= period
                period *= mult
            low = self.restarts.get("minFactor", 0.0)
            return low + (1 - low) * 0.5 * (1.0 + math.cos(math.pi * t / period))
        if self.kind == "onecycle":
            c = self.one_cycle
            start = 1.0 / c.get("startDivisor", 25.0)
            end = start / c.get("endDivisor", 1e4)
            rise = max(1, int(c.get("peakFraction", 0.3) * self.total))
            if step < rise:
                return start + (1.0 - start) * 0.5 * (1.0 - math.cos(math.pi * step / rise))
            frac = min(1.0, (step - rise) / max(1, self.total - rise))
            return end + (1.0 - end) * 0.5 * (1.0 + math.cos(math.pi * frac))
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t / span)))

    def on_validation(self, better: bool) -> bool:
        """plateau: count a validation; cut the factor after patience bad ones. True on a cut."""
        if self.kind != "plateau":
            return False
        if better:
            self.bad = 0
            return False
        self.bad += 1
        if self.bad <= self.plateau.get("patience", 2):
            return False
        self.bad = 0
        self.factor = max(self.plateau.get("minFactor", 1e-3), self.factor * self.plateau.get("factor", 0.5))
        return True


def apply_schedule(o) -> None:
    """Set every group's rate from its schedule at the current step (after a plateau cut)."""
    sched = o.scheduler
    step = sched.last_epoch
    for group, base_lr, f in zip(o.optimizer.param_groups, sched.base_lrs, sched.lr_lambdas):
        group["lr"] = base_lr * f(step)
    sched._last_lr = [g["lr"] for g in o.optimizer.param_groups]


def ema_update(decay: float):
    """AveragedModel's multi_avg_fn for trainer.ema: ema <- ema + (1 - d) (current - ema), with
    d = min(decay, (1 + n) / (10 + n)) after n averaged steps (the usual warm-up: a fixed decay
    of 0.999 would still hold 13% of the starting weights after 2,000 steps)."""

    @torch.no_grad()
    def update(ema_params: list, current: list, n_averaged: torch.Tensor) -> None:
        n = int(n_averaged)
        d = min(decay, (1 + n) / (10 + n))
        if torch.is_floating_point(ema_params[0]):
            torch._foreach_lerp_(ema_params, current, 1 - d)
        else:  # integer buffers are counters: take the current value
            for e, c in zip(ema_params, current):
                e.copy_(c)

    return update


def make_ema(raw: AAM, spec: dict | None, acc, resume: dict | None) -> torch.nn.Module | None:
    """trainer.ema: an AveragedModel of the plain module (every rank keeps the same copy: DDP
    ranks hold the same weights after each step), restored from a resumed checkpoint."""
    if spec is None:
        return None
    from accelerate.utils import DistributedType
    from torch.optim.swa_utils import AveragedModel

    if acc.distributed_type == DistributedType.FSDP:
        raise T.DataError("trainer.ema cannot average weights sharded by FSDP; use strategy ddp (or none), "
                          "or set trainer.ema: null")
    ema = AveragedModel(raw, multi_avg_fn=ema_update(spec["decay"]), use_buffers=True)
    if resume is not None and "ema_steps" in resume:
        ema.module.load_state_dict(resume["model"])
        ema.n_averaged.fill_(int(resume["ema_steps"]))
    log(f"ema: averaging the weights with decay {spec['decay']:g} (ramped up over the first steps)")
    return ema
