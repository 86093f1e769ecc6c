"""What rank 0 reports while training: a train line every logEverySteps (metrics.jsonl, the
log, status.json, the tracker), each validation (the same, with the best metric so far), and
a profile window written."""
from __future__ import annotations

import torch

from aam_runtime.config import RunConfig
from aam_runtime.console import log
from aam_runtime.device import memory_kind
from aam_runtime.runfolder import RunFolder


def log_train(cfg: RunConfig, folder: RunFolder, device: torch.device, row: dict, total: int) -> None:
    folder.metric(split="train", **row)
    parts = " ".join(f"{k}={v:.4f}" for k, v in row.items()
                     if k not in ("step", "epoch", "lr", "samples_per_s", "peak_memory_mb"))
    log(f"step {row['step']}/{total} epoch {row['epoch']} {parts} lr={row['lr']:.2e} "
        f"{row['samples_per_s']:.1f} samples/s peak {row['peak_memory_mb']:.0f} MiB")
    folder.update_status(epoch=row["epoch"], step=row["step"], throughput=row["samples_per_s"],
                         peak_memory_mb=row["peak_memory_mb"], memory_kind=memory_kind(device),
                         last_metrics={k: v for k, v in row.items() if k not in ("step", "epoch")})
    cfg.tracking_log({f"train/{k}": v for k, v in row.items() if k != "step"}, step=row["step"])


def log_validation(cfg: RunConfig, folder: RunFolder, vm: dict, metric_name: str, state: dict) -> None:
    folder.metric(**vm)
    parts = " ".join(f"{k}={v:.4f}" for k, v in vm.items() if isinstance(v, float))
    log(f"validation epoch {vm['epoch']} step {vm['step']}: {parts}")
    folder.update_status(epoch=vm["epoch"], step=vm["step"], val_metrics=vm,
                         best_metric={"name": metric_name, "value": state["best"], "step": state["best_step"]})
    cfg.tracking_log({f"val/{k}": v for k, v in vm.items() if isinstance(v, (int, float)) and k != "step"},
                     step=vm["step"])


def log_profile(folder: RunFolder, info: dict | None) -> None:
    """A trainer.profile window was written (StepProfiler.stop/finish said so), or nothing."""
    if info:
        folder.event("profiled", **info)
        log(f"profile of steps {info['steps'][0]}..{info['steps'][1]} written: {info['trace']}, {info['top']}")
