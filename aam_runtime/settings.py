"""spec.trainer as the fit loop reads it: a small typed object made once from the record (the
way torchtune's recipes carry their config), so the loop reads attributes, not nested dicts.
Setup-time readers (param_groups, make_optimizer, Schedule, autobatch) take the recipe's own
sections."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrainerSettings:
    seed: int
    epochs: int
    max_steps: int | None  # None: the epochs bound the run
    batch_size: int  # per process; autobatch has replaced an `auto` before this is read
    accumulation: int  # gradientAccumulation: batches per optimizer step
    validate_every: int  # epochs between validations
    log_every: int  # optimizer steps between train log lines
    checkpoint_every: int  # optimizer steps between mid-epoch `last` checkpoints
    gradient_clip: float | None
    metric: str  # earlyStopping.metric: the best checkpoint's measure
    patience: int | None  # validations without improvement before stopping (None: never)
    warmup_steps: int
    ema: dict | None  # trainer.ema ({decay}), else None
    profile: dict | None  # trainer.profile ({steps, ...}), else None

    @classmethod
    def read(cls, tr: dict) -> TrainerSettings:
        if tr["batchSize"] == "auto" or tr["gradientAccumulation"] == "auto":
            raise ValueError("trainer settings read before autobatch chose batchSize / gradientAccumulation")
        return cls(seed=int(tr["seed"]), epochs=int(tr["epochs"]), max_steps=int(tr["maxSteps"]) if tr.get("maxSteps") else None,
                   batch_size=int(tr["batchSize"]), accumulation=int(tr["gradientAccumulation"]),
                   validate_every=int(tr["validateEvery"]), log_every=int(tr["logEverySteps"]),
                   checkpoint_every=int(tr["checkpoint"]["everySteps"]),
                   gradient_clip=float(tr["gradientClip"]) if tr.get("gradientClip") else None,
                   metric=tr["earlyStopping"]["metric"], patience=tr["earlyStopping"].get("patience") or None,
                   warmup_steps=int(tr.get("warmupSteps") or 0), ema=tr.get("ema"), profile=tr.get("profile"))

    def total_steps(self, steps_per_epoch: int) -> int:
        return self.max_steps or steps_per_epoch * self.epochs

    def warmup(self, total: int) -> int:
        """Warm-up steps, at most a tenth of the run."""
        return min(self.warmup_steps, max(1, int(0.1 * total))) if self.warmup_steps else 0
