"""Resolved objects -> the files a run needs: record, accelerate config, launch script or sbatch.

Pure functions: manifests in, text out. No processes, no SQLite, no file writes here.
"""
from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from aam_runtime.runfolder import (ACCELERATE_CONFIG, EXIT_CODE, EXIT_DEPENDENCY_FAILED, LOCAL_SCRIPT, LOG, PID,
                                   SLURM_SCRIPT, WAITING)

from .resolve import Obj, Resolved

RUNTIME_MODULE = "aam_runtime"


@dataclass
class RunPlan:
    name: str
    generation: int
    run_hash: str
    stage: str
    executor: str
    folder: Path
    files: dict[str, str] = field(default_factory=dict)  # file name -> content
    depends_on: tuple[str, int] | None = None  # (run name, generation) that must succeed first
    depends_folder: Path | None = None
    command: list[str] = field(default_factory=list)

    @property
    def entry(self) -> str:
        return SLURM_SCRIPT if self.executor == "slurm" else LOCAL_SCRIPT


def processes(hw: dict, nodes: int | None = None) -> tuple[int, int]:
    """(nodes, processes in all) for a HardwareProfile spec."""
    n = nodes or hw["nodes"]
    return n, n * hw["devicesPerNode"]


def accelerate_config(hw: dict, run: dict, nodes: int | None = None) -> dict:
    """A config for `accelerate launch --config_file` (keys as accelerate's config_args defines them)."""
    n, total = processes(hw, nodes)
    precision = run["trainer"]["precision"]
    if precision == "auto":
        precision = hw["precision"]
    if precision == "auto":
        precision = "no" if hw["accelerator"] == "cpu" else "bf16"
    if hw["accelerator"] == "cpu" and precision == "fp16":
        precision = "no"
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
            "fsdp_transformer_layer_cls_to_wrap": "Block",
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


def launch_command(python: str, folder: Path, hw: dict, nodes: int | None = None, multinode: bool = False,
                   port: int = 29500) -> list[str]:
    """argv that starts the runtime: the runtime itself for one process, else accelerate launch."""
    n, total = processes(hw, nodes)
    if total == 1:
        return [python, "-m", RUNTIME_MODULE, str(folder)]
    cmd = [python, "-m", "accelerate.commands.launch", "--config_file", str(folder / ACCELERATE_CONFIG)]
    if multinode:
        # the per-node values are filled in by the job script from SLURM's environment
        cmd += ["--num_machines", str(n), "--num_processes", str(total), "--machine_rank", "${SLURM_NODEID}",
                "--main_process_ip", "${MAIN_ADDR}", "--main_process_port", str(port)]
    return cmd + ["-m", RUNTIME_MODULE, str(folder)]


def shell_join(argv: list[str]) -> str:
    """Quote every word, except the ${VAR} placeholders we put there ourselves (double-quoted)."""
    out = []
    for a in argv:
        if a.startswith("${") and a.endswith("}") and a[2:-1].isidentifier():
            out.append(f'"{a}"')
        else:
            out.append(shlex.quote(a))
    return " ".join(out)


def env_lines(env: dict[str, str]) -> list[str]:
    return [f"export {k}={shlex.quote(str(v))}" for k, v in sorted(env.items()) if k.isidentifier()]


def render_local_script(plan: RunPlan, hw: dict, python: str) -> str:
    """The detached local job: wait for its dependency, run, record the exit code."""
    folder = plan.folder
    q = shlex.quote
    lines = ["#!/usr/bin/env bash",
             f"# aam local job for run/{plan.name} generation {plan.generation} (written by aamctl; do not edit)",
             "set -u",
             f"cd {q(str(folder))} || exit 1",
             f"echo $$ > {PID}",
             *env_lines(hw.get("env", {})),
             "export PYTHONUNBUFFERED=1",
             f"finish() {{ echo \"$1\" > {EXIT_CODE}.tmp && mv -f {EXIT_CODE}.tmp {EXIT_CODE}; exit \"$1\"; }}"]
    if plan.depends_folder is not None:
        dep = q(str(plan.depends_folder))
        fail = f"finish {EXIT_DEPENDENCY_FAILED}"
        lines += [
            f"dep={dep}",
            f"echo waiting > {WAITING}",
            f"echo \"[$(date +%H:%M:%S)] waiting for run/{plan.depends_on[0]} generation {plan.depends_on[1]}\" >> {LOG}",
            f'while [ ! -f "$dep/{EXIT_CODE}" ]; do',
            f'  if [ -f "$dep/{PID}" ] && ! kill -0 "$(cat "$dep/{PID}")" 2>/dev/null; then',
            f'    sleep 3; [ -f "$dep/{EXIT_CODE}" ] || {{ echo "dependency died without an exit status" >> {LOG}; '
            f'rm -f {WAITING}; {fail}; }}',
            "  fi",
            "  sleep 2",
            "done",
            f"rm -f {WAITING}",
            f'if [ "$(cat "$dep/{EXIT_CODE}")" != "0" ]; then',
            f'  echo "[$(date +%H:%M:%S)] run/{plan.depends_on[0]} did not succeed; not starting" >> {LOG}',
            f"  {fail}",
            "fi",
        ]
    lines += [f"{shell_join(plan.command)} >> {LOG} 2>&1 < /dev/null", "finish $?", ""]
    return "\n".join(lines)


def record_documents(res: Resolved, run: Obj, annotations: dict[str, str]) -> list[dict]:
    """The self-contained manifest list of a run: the Run (annotated) and everything it uses."""
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
        if "init" in b:
            closure(b["init"])

    closure(run, main=True)
    return docs


def dump_documents(docs: list[dict], header: str | None = None) -> str:
    body = yaml.safe_dump_all(docs, sort_keys=False, default_flow_style=False, allow_unicode=True)
    return (f"# {header}\n" if header else "") + body

