"""A batch of trials as one SLURM job array: its script, and its submission."""
from __future__ import annotations

import json
import shlex
from pathlib import Path

from aam_runtime import runfolder as RF

from aamctl.errors import AamError
from aamctl.phases import RunPhase
from aamctl.runs.apply import dependency_jobs
from aamctl.runs.executors import SlurmExecutor
from aamctl.sweeps.folder import ARRAYS


def render_array(plans: list, sweep: str, generation: int, k: int, arrays: Path, parallelism: int) -> str:
    """One sbatch script for a batch of trials: task i runs trial plan i's own job script (which
    keeps its requeue-on-time-limit logic: in an array task, SLURM_JOB_ID is the task's own id)."""
    # each trial's folder was checked for SLURM-safe characters when its job.sbatch was rendered
    first = plans[0].files[RF.SLURM_SCRIPT]
    directives = [line for line in first.splitlines() if line.startswith("#SBATCH ")
                  and not line.split()[1].startswith(("--job-name", "--output", "--error"))]
    lines = ["#!/bin/bash",
             f"# aam SLURM job array for sweep/{sweep} generation {generation}, batch {k} (written by aamctl; do not edit)",
             f"#SBATCH --job-name=aam-{sweep}-g{generation}-b{k}",
             f"#SBATCH --array=0-{len(plans) - 1}%{max(1, parallelism)}",
             f"#SBATCH --output={arrays}/{k}-%a.out",
             f"#SBATCH --error={arrays}/{k}-%a.out",
             *directives,
             "set -u",
             "folders=(" + " ".join(shlex.quote(str(p.folder)) for p in plans) + ")",
             'folder="${folders[$SLURM_ARRAY_TASK_ID]}"',
             'echo "[$(date +%H:%M:%S)] array task $SLURM_ARRAY_TASK_ID: $folder"',
             f'exec bash "$folder/{RF.SLURM_SCRIPT}" >> "$folder/{RF.LOG}" 2>&1',
             ""]
    return "\n".join(lines)


def submit_array(store, folder: Path, sweep: str, generation: int, plans: list, parallelism: int) -> str:
    """Write the batch's array script into the sweep folder's arrays/ and submit it after the
    runs the trials start from; each trial's run row learns its task's job id. The job id."""
    arrays = folder / ARRAYS
    arrays.mkdir(exist_ok=True)
    k = len(list(arrays.glob("*.sbatch")))
    script = arrays / f"{k}.sbatch"
    RF.atomic_write(script, render_array(plans, sweep, generation, k, arrays, parallelism))
    try:
        info = SlurmExecutor().submit(script.parent, dependency=dependency_jobs(store, plans[0]), script=script)
    except AamError:
        for p in plans:
            store.set_phase(p.name, p.generation, RunPhase.FAILED, "submission failed")
        raise
    job = info["job_id"]
    for i, p in enumerate(plans):
        store.update_run(p.name, p.generation, job_id=f"{job}_{i}")
        store.add_event(p.name, p.generation, "Submitted", json.dumps({"job_id": f"{job}_{i}", "array": job}))
    return job
