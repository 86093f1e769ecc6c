"""The rules of a HardwareProfile that its JSON Schema cannot express."""
from __future__ import annotations

import re

from aamctl.api.resolve import Obj, Resolved
from aamctl.api.rules.common import time_seconds
from aamctl.errors import Diagnostic

# what a HardwareProfile's scratch path may name (the job script expands them on the node)
SCRATCH_VARIABLES = ("USER", "SLURM_JOB_ID", "SLURM_JOB_USER", "SLURM_ARRAY_TASK_ID")

# torch's SDPA: the flash kernel's CUDA/ROCm constraints refuse any attn_mask (sdp_utils
# check_for_attn_mask), so pinned to flash the first masked step would fail with "No available kernel"
FLASH_NO_MASK = ("SDPA's flash kernel on {acc} takes no attention mask, and AAM masks the padding of every "
                  "batch: the first training step would fail")


def check(res: Resolved, obj: Obj) -> list[Diagnostic]:
    d: list[Diagnostic] = []
    s = obj.spec
    total = s["nodes"] * s["devicesPerNode"]
    if s["strategy"] == "fsdp" and total < 2:
        d.append(obj.diag("strategy fsdp needs more than one device", ("spec", "strategy"),
                          hint="use strategy none for a single device, or raise devicesPerNode/nodes"))
    if s["strategy"] == "fsdp" and s["accelerator"] == "cpu":
        # accelerate turns FSDP on only for GPU-like distributed types (AcceleratorState: the
        # FSDP branch sits under MULTI_GPU/NPU/XPU/...), so on CPU it would silently train as DDP
        d.append(obj.diag("strategy fsdp needs GPUs: on CPU accelerate would silently train as ddp",
                          ("spec", "strategy"), hint="use strategy ddp on CPU (each process holds the whole model)"))
    if s["strategy"] == "none" and total > 1:
        d.append(obj.diag(f"{total} devices but strategy none", ("spec", "strategy"),
                          hint="use ddp (or fsdp) to train on several devices"))
    if s["accelerator"] == "cpu" and s["precision"] == "fp16":
        d.append(obj.diag("fp16 is not supported on CPU", ("spec", "precision"), hint="use bf16 or no"))
    if s["accelerator"] == "rocm" and s["compileAllowed"]:
        d.append(obj.diag("torch.compile fails on ROCm (inductor type error)", ("spec", "compileAllowed"),
                          hint="set compileAllowed: false"))
    if s["attentionBackend"] == "flash" and s["accelerator"] != "cpu":
        d.append(obj.diag(FLASH_NO_MASK.format(acc=s["accelerator"]), ("spec", "attentionBackend"),
                          hint="use auto (torch picks the fastest kernel that takes the mask), mem_efficient or math"))
    elif s["attentionBackend"] == "flash":
        d.append(obj.diag("flash attention is not available on cpu", ("spec", "attentionBackend"),
                          hint="use auto, math or mem_efficient"))
    scratch = s.get("scratch")
    if scratch:
        unknown = sorted(set(re.findall(r"\$([A-Za-z_0-9]*)", scratch)) - set(SCRATCH_VARIABLES))
        if unknown:
            d.append(obj.diag(f"scratch {scratch!r} uses ${unknown[0]}; the job expands only "
                              + ", ".join("$" + v for v in SCRATCH_VARIABLES), ("spec", "scratch"),
                              hint="write the rest of the path literally (e.g. /scratch/$USER/job_$SLURM_JOB_ID)"))
        if "/.." in scratch or "/./" in scratch or scratch.rstrip("/").count("/") < 2:
            d.append(obj.diag(f"scratch {scratch!r} must be a folder of its own, at least two levels deep, "
                              "without . or .. (the job removes it when it ends)", ("spec", "scratch"),
                              hint="e.g. /scratch/$USER/job_$SLURM_JOB_ID"))
        elif "$SLURM_JOB_ID" not in scratch:
            d.append(obj.diag(f"scratch {scratch!r} does not contain $SLURM_JOB_ID: two jobs on one node would "
                              "share it, and each removes it when it ends", ("spec", "scratch"),
                              hint="add $SLURM_JOB_ID to the path, e.g. /scratch/$USER/job_$SLURM_JOB_ID"))
    lim = s["slurm"]
    if lim.get("maxTimeLimit") and time_seconds(lim["defaultTimeLimit"]) > time_seconds(lim["maxTimeLimit"]):
        d.append(obj.diag("defaultTimeLimit exceeds maxTimeLimit", ("spec", "slurm", "defaultTimeLimit")))
    if lim.get("maxNodes") and s["nodes"] > lim["maxNodes"]:
        d.append(obj.diag(f"nodes {s['nodes']} exceeds maxNodes {lim['maxNodes']}", ("spec", "nodes")))
    return d
