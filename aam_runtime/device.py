"""The devices a run trains on: the Accelerator every stage uses, the check that the record's
hardware and precision are here, and the peak memory the logs report."""
from __future__ import annotations

import torch

from aam_runtime.config import RunConfig
from aam_runtime.console import log
from aam_runtime.errors import HardwareMissing


def make_accelerator(accelerator: str, precision: str):
    """The Accelerator every stage uses. Heads a stage does not train (the nucleotide head with
    its weight at 0, the count head) get no gradient: without find_unused_parameters DDP would
    wait for them forever and silently skip the gradient all-reduce."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    return Accelerator(cpu=accelerator == "cpu", mixed_precision=precision,
                       kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])


def check_hardware(cfg: RunConfig) -> None:
    """The devices and precision the record asks for are here, or HardwareMissing (exit 5)."""
    hw = cfg.hardware
    if hw["accelerator"] in ("cuda", "rocm") and not torch.cuda.is_available():
        build = "ROCm" if getattr(torch.version, "hip", None) else ("CUDA" if torch.version.cuda else "CPU-only")
        raise HardwareMissing(f"HardwareProfile '{cfg.spec['hardwareRef']}' expects {hw['accelerator']} devices, but "
                              f"torch {torch.__version__} ({build} build) sees none here; run on a GPU node "
                              "(executor slurm), or use hardwareRef: cpu")
    if cfg.precision == "bf16" and hw["accelerator"] != "cpu" and not torch.cuda.is_bf16_supported():
        if cfg.spec["trainer"].get("precision", "auto") == "auto" and hw.get("precision", "auto") == "auto":
            # auto was planned as bf16 without seeing the GPU: this one has none, fp16 is what it has
            log(f"precision auto: {torch.cuda.get_device_name(0)} has no bf16; training in fp16 (with loss scaling)")
            cfg.precision = "fp16"
            return
        raise HardwareMissing(f"precision bf16 was planned for HardwareProfile '{cfg.spec['hardwareRef']}', but "
                              f"{torch.cuda.get_device_name(0)} has no bf16; set precision: fp16 (or no) in the "
                              "profile or in spec.trainer.precision")


def memory_kind(device: torch.device) -> str:
    """What peak_memory_mb measures: the accelerator's allocator on CUDA/ROCm, else the process."""
    return "device max allocated" if device.type == "cuda" else "process peak RSS"


def peak_memory_mb(device: torch.device) -> float:
    """The run's peak memory so far in MiB (this process; rank 0's in a distributed run): the
    device's max allocated tensors on CUDA/ROCm (torch.cuda covers both), else the peak resident
    set of the process (ru_maxrss, KiB on Linux)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def inference_autocast(precision: str, device: str):
    """The autocast a stage without an Accelerator (predict, the insight outputs) runs its model
    under: the run's precision, as training and validation ran under accelerate's, so a predict
    Run from a checkpoint gives the numbers the finetune's validation gave."""
    import contextlib

    if precision == "bf16":
        return torch.autocast(device_type=device, dtype=torch.bfloat16)
    if precision == "fp16":
        return torch.autocast(device_type=device, dtype=torch.float16)
    return contextlib.nullcontext()
