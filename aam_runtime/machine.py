"""What this machine has for the local executor: cores, GPUs, memory, native bf16. Torch-free.

Read from the kernel (sched affinity, /proc, /sys), never by starting a GPU runtime, so aamctl
answers in milliseconds and a job script asks it before torch is imported. Two variables tell
the local executor a smaller (or, for tests, an imagined) machine:
  AAM_LOCAL_CPUS   cores the local executor may hand out (default: those this process may run on)
  AAM_LOCAL_GPUS   GPUs it may hand out (default: the devices the driver shows, narrowed by
                   CUDA_VISIBLE_DEVICES / HIP_VISIBLE_DEVICES when they are set)
"""
from __future__ import annotations

import glob
import os

CPUS_VAR = "AAM_LOCAL_CPUS"
GPUS_VAR = "AAM_LOCAL_GPUS"
# the variable that narrows a process to some devices, per accelerator
VISIBLE_VAR = {"cuda": "CUDA_VISIBLE_DEVICES", "rocm": "HIP_VISIBLE_DEVICES"}


class MachineError(ValueError):
    """A variable that describes the machine holds something that is not a count."""


def _count_var(name: str) -> int | None:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return None
    try:
        n = int(raw)
    except ValueError:
        raise MachineError(f"{name}={raw!r} is not a whole number (it tells aam how many the local executor "
                           f"may use)") from None
    if n < 0 or (name == CPUS_VAR and n < 1):
        raise MachineError(f"{name}={raw!r} must be at least {1 if name == CPUS_VAR else 0}")
    return n


def usable_cpus() -> int:
    """Cores the local executor shares out: AAM_LOCAL_CPUS, else the cores this process may use."""
    n = _count_var(CPUS_VAR)
    if n is not None:
        return n
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _driver_gpus(accelerator: str) -> int:
    if accelerator == "cuda":
        return len(glob.glob("/proc/driver/nvidia/gpus/*"))
    if accelerator == "rocm":  # KFD topology: CPU nodes report gpu_id 0
        n = 0
        for path in glob.glob("/sys/class/kfd/kfd/topology/nodes/*/gpu_id"):
            try:
                with open(path) as f:
                    n += f.read().strip() not in ("", "0")
            except OSError:
                pass
        return n
    return 0


def visible_gpu_ids(accelerator: str) -> list[str]:
    """The device ids the local executor may hand out, in order: the entries of
    CUDA_VISIBLE_DEVICES/HIP_VISIBLE_DEVICES when set, else 0..n-1 (n from AAM_LOCAL_GPUS or the
    driver)."""
    if accelerator not in VISIBLE_VAR:
        return []
    n = _count_var(GPUS_VAR)
    visible = os.environ.get(VISIBLE_VAR[accelerator])
    if visible is not None and visible.strip() != "":
        ids = [x.strip() for x in visible.split(",") if x.strip()]
        return ids[:n] if n is not None else ids
    return [str(i) for i in range(n if n is not None else _driver_gpus(accelerator))]


def memory_bytes() -> int | None:
    """Physical memory (MemTotal), None when unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def cpu_bf16_flags(cpuinfo: str = "/proc/cpuinfo") -> list[str]:
    """The CPU's native bf16 instruction sets, from the kernel's flags ([] when unknown)."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    return [x for x in ("avx512_bf16", "amx_bf16") if x in have]
    except OSError:
        pass
    return []


def parse_size(text: str) -> int | None:
    """SLURM-style memory ('64G', '512M', '1T', a bare number is MiB) in bytes; None if unreadable."""
    text = str(text).strip().upper()
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    mult = 1 << 20
    if text and text[-1] in units:
        mult, text = units[text[-1]], text[:-1]
    try:
        return int(float(text) * mult)
    except ValueError:
        return None
