"""trainer.profile: torch.profiler over optimizer steps A..B on rank 0.

Writes into the run folder (atomic renames, like every runtime file):
  profile/<stage>-trace.json   Chrome trace (chrome://tracing, ui.perfetto.dev)
  profile/<stage>-top.txt      the operations that took the most time (and memory)
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from aam_runtime.console import log
from aam_runtime.runfolder import PROFILE_DIR, atomic_write


class StepProfiler:
    """start(next_step) before a step's first batch, stop(step) after its optimizer step."""

    def __init__(self, spec: dict | None, folder, stage: str, device: torch.device, main: bool,
                 accelerator: str = "cpu"):
        self.spec = spec if (spec and main) else None
        if self.spec and self.spec.get("rocprof") and (accelerator != "rocm" or "SLURM_JOB_ID" not in os.environ):
            log("warning: trainer.profile.rocprof applies to ROCm jobs on SLURM only; "
                "this run gets the torch.profiler trace alone")
        self.folder, self.stage, self.device = folder, stage, device
        self.prof = None
        self.done = False

    @property
    def active(self) -> bool:
        return self.prof is not None

    def start(self, next_step: int) -> None:
        if self.spec is None or self.done or self.prof is not None:
            return
        first, last = self.spec["steps"]
        if not first <= next_step <= last:
            return
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU]
        if self.device.type == "cuda":
            activities.append(ProfilerActivity.CUDA)  # CUDA and ROCm (HIP) alike
        self.first = next_step
        self.prof = profile(activities=activities, record_shapes=True, profile_memory=self.spec.get("memory", True))
        self.prof.__enter__()

    def stop(self, step: int, force: bool = False) -> dict | None:
        """Finish and write once the last profiled step is done (or force: the loop ended early)."""
        if self.prof is None or not (force or step >= self.spec["steps"][1]):
            return None
        prof, self.prof, self.done = self.prof, None, True
        prof.__exit__(None, None, None)
        try:
            return self._write(prof, step)
        except OSError as exc:  # a profile is extra: a full disk here must not end the training
            log(f"warning: the profile of steps {self.first}..{step} could not be written: {exc.strerror or exc}")
            return None

    def finish(self, step: int, total_steps: int) -> dict | None:
        """At the end of a fit: write a window the run ended inside (stop never raises: a write
        error is a warning); say when the window was never reached."""
        if self.active:
            return self.stop(step, force=True)
        if self.spec is not None and not self.done:
            log(f"warning: trainer.profile.steps {self.spec['steps']} never ran: this stage took "
                f"{total_steps} optimizer steps (resumed at or past the window, or it is beyond the end)")
        return None

    def _write(self, prof, step: int) -> dict:
        out = Path(self.folder.file(PROFILE_DIR))
        out.mkdir(exist_ok=True)
        trace = out / f"{self.stage}-trace.json"
        fd, tmp = tempfile.mkstemp(prefix=".trace.", suffix=".json", dir=out)
        os.close(fd)
        try:
            prof.export_chrome_trace(tmp)
            os.replace(tmp, trace)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        # (torch names the GPU column device time, for CUDA and ROCm alike; cuda_time is gone)
        sort = "self_device_time_total" if self.device.type == "cuda" else "self_cpu_time_total"
        table = prof.key_averages().table(sort_by=sort, row_limit=30)
        header = f"# aam profile: {self.stage}, optimizer steps {self.first}..{step}, {self.device}\n"
        top = out / f"{self.stage}-top.txt"
        atomic_write(top, header + table + "\n")
        return {"steps": [self.first, step], "trace": str(trace.relative_to(out.parent)),
                "top": str(top.relative_to(out.parent))}
