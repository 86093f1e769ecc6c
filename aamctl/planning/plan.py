"""plan: resolved objects -> the files a run needs: record, accelerate config, launch script or sbatch.

Pure functions: resolved objects, generation, dependency and provenance in; text out. No
processes, no SQLite, no file writes, no environment reads here.
"""
from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from aam_runtime.jobenv import job_env
from aam_runtime.runfolder import (ACCELERATE_CONFIG, EXIT_CODE, EXIT_DEPENDENCY_FAILED, LOCAL_SCRIPT, LOG, PID, RECORD,
                                   RESOLVED_KEY, RUNTIME_EXIT, SLURM_SCRIPT, WAITING)

from aamctl.api.resolve import Obj, Resolved
from aamctl.home import run_folder, slots_folder
from aamctl.planning.launch import TAKE_RUNTIME_EXIT, env_lines, launch_command, processes, shell_join, thread_setting
from aamctl.planning.slurm import render_sbatch

SLOTS_MODULE = "aam_runtime.localslots"


@dataclass(frozen=True)
class Dependency:
    """A run generation that must succeed before this one starts."""

    name: str
    generation: int
    executor: str
    folder: Path

    @property
    def label(self) -> str:
        return f"{self.name}/{self.generation}"


@dataclass(frozen=True)
class Upstream:
    """Where a run's starting weights come from, as apply found them."""

    checkpoints: tuple[str, ...]  # one, or one per run of an ensemble (initFrom.runs)
    stage: str | None = None  # the stage of the run(s) it comes from (None: a checkpoint path)
    dependencies: tuple[Dependency, ...] = ()  # those runs that have not yet succeeded


@dataclass
class RunPlan:
    name: str
    generation: int
    run_hash: str
    stage: str
    executor: str
    folder: Path
    files: dict[str, str] = field(default_factory=dict)  # file name -> content
    dependencies: tuple[Dependency, ...] = ()  # runs that must succeed first
    command: list[str] = field(default_factory=list)

    @property
    def after(self) -> str:
        """', after run/A, run/B' for messages ('' without dependencies)."""
        return ", after " + ", ".join(f"run/{d.name}" for d in self.dependencies) if self.dependencies else ""

    @property
    def entry(self) -> str:
        return SLURM_SCRIPT if self.executor == "slurm" else LOCAL_SCRIPT


def build_plan(res: Resolved, run: Obj, *, generation: int, run_hash: str, home: Path, upstream: Upstream | None,
               provenance: dict[str, str], python: str, host_bf16: bool = False) -> RunPlan:
    """All files of one run generation. Pure: everything it needs comes in as arguments
    (host_bf16: whether this machine's CPU has native bf16, for precision auto on the local
    executor)."""

    bundle = res.run_bundle(run)
    hw = bundle["hardware"].spec
    ds = bundle["dataset"].spec
    folder = run_folder(home, run.name, generation)
    ex = run.spec["executor"]["type"]
    plan = RunPlan(name=run.name, generation=generation, run_hash=run_hash, stage=run.spec["stage"],
                   executor=ex, folder=folder, dependencies=upstream.dependencies if upstream else ())
    nodes = run.spec["executor"]["slurm"].get("nodes") if ex == "slurm" else None
    stage_hw = hw if run.spec["stage"] != "baseline" else dict(hw, nodes=1, devicesPerNode=1)
    precision = effective_precision(run.spec["trainer"], hw, cpu_bf16=host_bf16 and ex == "local")
    settings = runtime_settings(res, run, generation=generation, run_hash=run_hash, upstream=upstream,
                                precision=precision)
    docs = record_documents(res, run, provenance, settings)
    plan.files[RECORD] = dump_documents(
        docs, f"record of run/{run.name} generation {generation}: apply it to reproduce the run")
    plan.files[ACCELERATE_CONFIG] = dump_documents([accelerate_config(stage_hw, run.spec, precision, nodes)])
    if ex == "local":
        plan.command = slots_command(python, home, run.name, stage_hw) + launch_command(python, folder, stage_hw)
        plan.files[LOCAL_SCRIPT] = render_local_script(plan, stage_hw, python)
    else:
        data_paths = [p for p in (ds.get("table"), ds.get("tree"), ds.get("distanceMatrix"),
                                  (ds.get("metadata") or {}).get("path")) if p]
        plan.files[SLURM_SCRIPT] = render_sbatch(run, run.spec, stage_hw, run.name, generation, folder, python,
                                                 data_paths)
    return plan


def effective_precision(trainer: dict, hw: dict, cpu_bf16: bool = False) -> str:
    """The one place precision is decided: the Run's choice, else the profile's; auto means bf16 on
    a GPU, and on a CPU bf16 where it has native bf16 instructions (cpu_bf16: known for the local
    executor's machine; a SLURM node's is not, so full precision there); fp16 on CPU (refused by
    validation for profiles) means no."""
    precision = trainer["precision"]
    if precision == "auto":
        precision = hw["precision"]
    if precision == "auto":
        precision = ("bf16" if cpu_bf16 else "no") if hw["accelerator"] == "cpu" else "bf16"
    if hw["accelerator"] == "cpu" and precision == "fp16":
        precision = "no"
    return precision


def runtime_settings(res: Resolved, run: Obj, *, generation: int, run_hash: str, upstream: Upstream | None,
                     precision: str) -> dict:
    """The `resolved:` section of a run's record: what aamctl decided and the runtime reads.

    It sits outside `spec` (so outside the content hash) and is ignored when a record is applied:
    the decisions are made again for the new place."""
    model = res.run_bundle(run).get("model")
    return {"generation": generation, "runHash": run_hash,
            "model": {"name": model.name, "spec": model.spec} if model else None,
            # one path, or a list for an ensemble (initFrom.runs)
            "initCheckpoint": (None if upstream is None else upstream.checkpoints[0] if len(upstream.checkpoints) == 1
                               else list(upstream.checkpoints)),
            "initStage": upstream.stage if upstream else None,
            "precision": precision}


def accelerate_config(hw: dict, run: dict, precision: str, nodes: int | None = None) -> dict:
    """A config for `accelerate launch --config_file` (keys as accelerate's config_args defines them)."""
    n, total = processes(hw, nodes)
    cfg = {
        "compute_environment": "LOCAL_MACHINE",
        "debug": False,
        "distributed_type": "NO",
        "downcast_bf16": "no",
        "enable_cpu_affinity": False,
        "gpu_ids": "all",
        "machine_rank": 0,
        "main_training_function": "main",
        "mixed_precision": precision,
        "num_machines": n,
        "num_processes": total,
        "rdzv_backend": "static",
        "same_network": True,
        "tpu_env": [],
        "tpu_use_cluster": False,
        "tpu_use_sudo": False,
        "use_cpu": hw["accelerator"] == "cpu",
    }
    if total > 1:
        cfg["distributed_type"] = "FSDP" if hw["strategy"] == "fsdp" else "MULTI_GPU"
        cfg["main_process_port"] = run["executor"]["slurm"]["port"]
        if n > 1:
            cfg["main_process_ip"] = "127.0.0.1"  # replaced per job by --main_process_ip
    if cfg["distributed_type"] == "FSDP":
        cfg["fsdp_config"] = {
            "fsdp_version": 1,
            "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "fsdp_sharding_strategy": "FULL_SHARD",
            "fsdp_state_dict_type": "FULL_STATE_DICT",
            "fsdp_offload_params": False,
            "fsdp_use_orig_params": True,
            "fsdp_sync_module_states": True,
            "fsdp_backward_prefetch": "BACKWARD_PRE",
            "fsdp_forward_prefetch": False,
            "fsdp_cpu_ram_efficient_loading": True,
        }
    return cfg


def slots_command(python: str, home: Path, name: str, hw: dict) -> list[str]:
    """argv prefix that waits for the run's share of this machine (aam_runtime.localslots), then
    runs the rest of the line with its threads and devices set."""
    cmd = [python, "-m", SLOTS_MODULE, "--slots", str(slots_folder(home)), "--label",
           f"run/{name}", "--cpus", str(hw["cpusPerTask"]), "--processes", str(processes(hw)[1]),
           "--accelerator", hw["accelerator"]]
    threads = thread_setting(hw)
    if threads is not None:
        cmd += ["--threads", threads]
    return cmd + ["--"]


def render_local_script(plan: RunPlan, hw: dict, python: str) -> str:
    """The detached local job: wait for its dependency, run, record the exit code."""
    folder = plan.folder
    q = shlex.quote
    lines = ["#!/usr/bin/env bash",
             f"# aam local job for run/{plan.name} generation {plan.generation} (written by aamctl; do not edit)",
             "set -u",
             f"cd {q(str(folder))} || exit 1",
             f"echo $$ > {PID}",
             *env_lines(job_env(hw)),
             "export PYTHONUNBUFFERED=1",
             f"finish() {{ echo \"$1\" > {EXIT_CODE}.tmp && mv -f {EXIT_CODE}.tmp {EXIT_CODE}; exit \"$1\"; }}"]
    for dependency in plan.dependencies:
        dep = q(str(dependency.folder))
        fail = f"finish {EXIT_DEPENDENCY_FAILED}"
        lines += [
            f"dep={dep}",
            f"echo waiting > {WAITING}",
            f"echo \"[$(date +%H:%M:%S)] waiting for run/{dependency.name} generation {dependency.generation}\" >> {LOG}",
            f'while [ ! -f "$dep/{EXIT_CODE}" ]; do',
            f'  if [ -f "$dep/{PID}" ] && ! kill -0 "$(cat "$dep/{PID}")" 2>/dev/null; then',
            f'    sleep 3; [ -f "$dep/{EXIT_CODE}" ] || {{ echo "dependency died without an exit status" >> {LOG}; '
            f'rm -f {WAITING}; {fail}; }}',
            "  fi",
            "  sleep 2",
            "done",
            f"rm -f {WAITING}",
            f'if [ "$(cat "$dep/{EXIT_CODE}")" != "0" ]; then',
            f'  echo "[$(date +%H:%M:%S)] run/{dependency.name} did not succeed; not starting" >> {LOG}',
            f"  {fail}",
            "fi",
        ]
    lines += [f"rm -f {RUNTIME_EXIT}",
              f"{shell_join(plan.command)} >> {LOG} 2>&1 < /dev/null",
              "rc=$?",
              *TAKE_RUNTIME_EXIT,
              'finish "$rc"', ""]
    return "\n".join(lines)


def record_documents(res: Resolved, run: Obj, annotations: dict[str, str], settings: dict) -> list[dict]:
    """The self-contained manifest list of a run: the Run (annotated, with its `resolved:` section)
    and everything it uses."""
    docs: list[dict] = []
    seen: set = set()

    def add(obj: Obj, main: bool = False):
        if obj.key in seen:
            return
        seen.add(obj.key)
        m = json.loads(json.dumps(obj.manifest))
        if main:
            m["metadata"]["annotations"] = {**{k: v for k, v in m["metadata"].get("annotations", {}).items()
                                               if not k.startswith("aam/")}, **annotations}
            m[RESOLVED_KEY] = settings
        else:
            m["metadata"]["annotations"] = {k: v for k, v in m["metadata"].get("annotations", {}).items()
                                            if not k.startswith("aam/")}
        docs.append(m)

    def closure(r: Obj, main=False):
        add(r, main)
        b = res.run_bundle(r)
        for key in ("dataset", "model", "hardware"):
            if key in b:
                add(b[key])
        for src in b.get("inits", []):
            closure(src)

    closure(run, main=True)
    return docs


def dump_documents(docs: list[dict], header: str | None = None) -> str:
    body = yaml.safe_dump_all(docs, sort_keys=False, default_flow_style=False, allow_unicode=True)
    return (f"# {header}\n" if header else "") + body

