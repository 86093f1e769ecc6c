"""trainer.batchSize: auto (and gradientAccumulation: auto): the largest even batch whose training
step fits the memory budget, found before the optimiser is built.

The probe runs forward (masked nucleotides, the target head when there is one) and backward of a
throwaway copy of the model on the training split's largest samples (most ASVs per sample), for
batch 2, 4, 8, ... and then bisects between the last that fit and the first that did not.

What "fits" means:
- CUDA/ROCm: the allocator's peak (torch.cuda.max_memory_allocated) plus the optimiser's two
  AdamW moments, under memoryFraction x the budget; an out-of-memory error is "did not fit".
- CPU: no allocator counts, and a process past its memory is killed rather than told, so the
  step is estimated instead: every tensor autograd saves for backward (saved_tensors_hooks) times
  1.1 (BACKWARD_FACTOR, measured), plus weights, gradients and the two moments.

The choice is written to the run folder (autobatch.json), so a resumed run keeps the batch its
schedule was built for, and to status.json and the log.
"""
from __future__ import annotations

import json
import math
import os
import re

import numpy as np
import torch

from aam_runtime.console import log
from aam_runtime.data import batches as B
from aam_runtime.data import table as T
from aam_runtime.runfolder import AUTOBATCH, atomic_write, read_json

# CPU estimate: saved activations and the gradients flowing back through them. Measured (embedding
# 128, 2+2 layers, 150 bp; batch 8 x 64 ASVs, 8 x 256, 16 x 256): the process's peak RSS grows by
# 1.03 x the saved bytes (2.7, 10.8, 21.6 GB); 1.1 keeps the estimate just above that.
BACKWARD_FACTOR = 1.1
UNITS = {"": 1, "K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40}


def parse_memory(text: str) -> int:
    m = re.fullmatch(r"([0-9]+)([KMGT]?)", text)
    return int(m.group(1)) * UNITS[m.group(2)]


def cpu_available_bytes() -> int:
    """MemAvailable, or the cgroup's limit less its usage when that is lower."""
    avail = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        limit = open("/sys/fs/cgroup/memory.max").read().strip()
        used = int(open("/sys/fs/cgroup/memory.current").read())
        if limit != "max":
            room = int(limit) - used
            avail = room if avail is None else min(avail, room)
    except (OSError, ValueError):
        pass
    return avail if avail is not None else 8 * 2 ** 30


def budget_bytes(auto: dict, device: torch.device, local_world: int) -> tuple[int, str]:
    if auto.get("memoryLimit"):
        return parse_memory(auto["memoryLimit"]), f"memoryLimit {auto['memoryLimit']}"
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        return total, f"{torch.cuda.get_device_name(device)} {total / 2 ** 30:.0f} GiB"
    avail = cpu_available_bytes() // max(1, local_world)
    return avail, f"available memory / {local_world} process(es) on the node"


def largest_rows(data, n: int) -> np.ndarray:
    """n training rows with the most ASVs (repeated when the split is smaller)."""
    sizes = np.array([len(data.enc.sel_idx[r]) for r in data.train])
    order = data.train[np.argsort(-sizes, kind="stable")]
    return np.resize(order, n)


class Probe:
    def __init__(self, model, data, device: torch.device, autocast, n_outputs: int):
        self.model, self.data, self.device, self.autocast = model, data, device, autocast
        self.need_target = n_outputs > 0
        self.param_bytes = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)

    def step_bytes(self, b: int) -> int | None:
        """Memory of one training step at batch b; None when it does not fit (GPU out of memory)."""
        rows = largest_rows(self.data, b)
        batch = B.to_torch(B.collate_numpy(self.data.enc, rows), self.device)
        saved = [0]

        def pack(t):
            saved[0] += t.numel() * t.element_size()
            return t

        self.model.zero_grad(set_to_none=True)
        gpu = self.device.type == "cuda"
        try:
            if gpu:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(self.device)
                base = torch.cuda.memory_allocated(self.device)
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), self.autocast():
                out = self.model(batch, mask_nucleotides=True, need_target=self.need_target,
                                 generator=torch.Generator().manual_seed(0))
                loss = out["embedding"].float().pow(2).mean()
                if out.get("nuc_logits") is not None and out["nuc_logits"].numel():
                    loss = loss + out["nuc_logits"].float().logsumexp(-1).mean()
                if self.need_target:
                    loss = loss + out["target"].float().pow(2).mean()
            loss.backward()
            if gpu:
                torch.cuda.synchronize(self.device)
                peak = torch.cuda.max_memory_allocated(self.device) - base
                return int(peak + 2 * self.param_bytes + base)
        except torch.cuda.OutOfMemoryError:
            return None
        finally:
            self.model.zero_grad(set_to_none=True)
            del batch
            if gpu:
                torch.cuda.empty_cache()
        return int(saved[0] * BACKWARD_FACTOR + 4 * self.param_bytes)


def search(probe: Probe, limit: int, most: int) -> tuple[int, dict[int, int | None]]:
    """The largest even b <= most with probe(b) <= limit (2 at the least); every probe's bytes."""
    seen: dict[int, int | None] = {}

    def fits(b):
        if b not in seen:
            seen[b] = probe.step_bytes(b)
        return seen[b] is not None and seen[b] <= limit

    most = max(2, most - most % 2)
    if not fits(2):
        return 2, seen
    good, b = 2, 4
    while b <= most and fits(b):
        good, b = b, b * 2
    bad = min(b, most + 2)
    while bad - good > 2:  # bisect over even numbers
        mid = (good + bad) // 2
        mid -= mid % 2
        if fits(mid):
            good = mid
        else:
            bad = mid
    return good, seen


def mib(n: int | None) -> str:
    if n is None:
        return "?"
    v = n / 2 ** 20
    return f"{v:.0f} MiB" if v >= 100 else f"{v:.2g} MiB" if v < 10 else f"{v:.1f} MiB"


def accumulation_for(effective: int, batch: int, world: int) -> tuple[int, int]:
    """(batch, accumulation) that give about `effective` samples per optimizer step: as few
    accumulation steps as the largest batch allows, then the batch that spreads them evenly."""
    accum = max(1, math.ceil(effective / (batch * world)))
    b = max(2, effective // (world * accum))
    b -= b % 2
    return min(b, batch), accum


def resolve(trainer, data, n_outputs: int) -> dict | None:
    """Fill trainer.batchSize / gradientAccumulation 'auto' in cfg.trainer; returns the choice
    (None when neither is auto)."""
    tr = trainer.cfg.trainer
    if tr["batchSize"] != "auto" and tr["gradientAccumulation"] != "auto":
        return None
    folder = trainer.folder
    kept = read_json(folder.file(AUTOBATCH))
    if kept and kept.get("run_hash") == trainer.cfg.run_hash:
        choice = kept
        log(f"batch size {choice['batchSize']} x accumulation {choice['gradientAccumulation']} "
            f"(chosen at the first start: {choice['why']})")
    else:
        choice = _choose(trainer, data, n_outputs)
        if trainer.main:
            atomic_write(folder.file(AUTOBATCH), json.dumps(choice, indent=1) + "\n")
        log(f"batch size auto: {choice['why']}")
    tr["batchSize"], tr["gradientAccumulation"] = choice["batchSize"], choice["gradientAccumulation"]
    if trainer.main:
        folder.update_status(auto_batch={k: choice[k] for k in ("batchSize", "gradientAccumulation",
                                                                 "effective", "estimate_mb", "budget_mb")})
    return choice


def _choose(trainer, data, n_outputs: int) -> dict:
    tr, world = trainer.cfg.trainer, trainer.world
    auto = tr.get("autoBatch") or {}
    if tr["batchSize"] == "auto":
        local = int(os.environ.get("LOCAL_WORLD_SIZE") or trainer.cfg.hardware.get("devicesPerNode") or 1)
        budget, source = budget_bytes(auto, trainer.device, local)
        limit = int(budget * auto.get("memoryFraction", 0.8))
        most = min(auto.get("maxBatchSize", 256), max(2, len(data.train) // world))
        model = trainer.build_model(data, None, n_outputs).to(trainer.device).train()
        probe = Probe(model, data, trainer.device, trainer.acc.autocast, n_outputs)
        b, seen = search(probe, limit, most)
        del model, probe
        if world > 1:  # every rank trains the same batch: the smallest any rank could take
            t = torch.tensor([b], device=trainer.device)
            b = int(trainer.acc.gather(t).min())
        est = seen.get(b)
        how = "measured peak" if trainer.device.type == "cuda" else "estimated from saved activations"
        over = [k for k, v in sorted(seen.items()) if k > b]
        fit = (f"{b} ({how} {mib(est)} of {mib(limit)} = {auto.get('memoryFraction', 0.8):g} x {source}"
               + (f"; {over[0]} would need {mib(seen[over[0]])}" if over and seen[over[0]] else
                  f"; {over[0]} ran out of memory" if over else f"; capped at {most}") + ")")
        if est is not None and est > limit:
            if auto.get("memoryLimit"):  # the user's own budget cannot hold one step: say so, do not shrink silently
                raise T.DataError(f"trainer.autoBatch.memoryLimit {auto['memoryLimit']} leaves no room: even a batch of "
                                  f"2 needs {mib(est)}, over {mib(limit)} ({auto.get('memoryFraction', 0.8):g} x "
                                  f"{source}); raise memoryLimit (or memoryFraction), or set batchSize by hand")
            fit += "; even 2 is over the budget: training may run out of memory"
    else:
        b, est, limit, fit = tr["batchSize"], None, None, None
    accum = tr["gradientAccumulation"]
    if accum == "auto" and tr["batchSize"] == "auto":
        b, accum = accumulation_for(int(tr["effectiveBatchSize"]), b, world)
    elif accum == "auto":  # a batch written by hand stays; the accumulation comes nearest the target
        accum = max(1, round(int(tr["effectiveBatchSize"]) / (b * world)))
    why = f"batch {b}"
    if tr["gradientAccumulation"] == "auto":
        why += f" x accumulation {accum} x {world} process(es) = {b * world * accum} (asked {tr['effectiveBatchSize']})"
    if fit:
        why += f"; the largest that fits: {fit}"
    return {"batchSize": int(b), "gradientAccumulation": int(accum), "effective": int(b * world * accum),
            "estimate_mb": None if est is None else round(est / 2 ** 20, 1),
            "budget_mb": None if limit is None else round(limit / 2 ** 20, 1), "why": why,
            "run_hash": trainer.cfg.run_hash}
