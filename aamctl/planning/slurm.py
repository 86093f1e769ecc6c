"""Run + HardwareProfile -> job.sbatch (pure). The template lives in slurm/job.sbatch.tmpl."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

from aam_runtime.jobenv import job_env
from aam_runtime.runfolder import (CANCEL_FLAG, EXIT_CODE, EXIT_DATA_ERROR, EXIT_PREEMPTED, LOG, PREEMPT_FLAG,
                                   PROFILE_DIR, REQUEUES, RUNTIME_EXIT)

from aamctl.errors import AamError
from aamctl.planning.launch import (RUNTIME_MODULE, TAKE_RUNTIME_EXIT, env_lines, launch_command, shell_join,
                                    thread_setting)
from aamctl.resources import data_path

SAFE_PATH = re.compile(r"[A-Za-z0-9_./+@:=-]+")  # fullmatch: no trailing newline slips through


STAGE_MODULE = "aam_runtime.scratch_copy"


def template_path() -> Path:
    p = data_path("slurm/job.sbatch.tmpl", "templates/job.sbatch.tmpl")
    if p is not None:
        return p
    raise FileNotFoundError("job.sbatch.tmpl not found: reinstall aam (pip install aam)")


def check_path(p: str, what: str, obj) -> None:
    if not SAFE_PATH.fullmatch(p):
        raise AamError(obj.diag(f"{what} '{p}' has characters SLURM directives cannot carry (spaces, quotes, %)",
                                hint="use a folder whose path has only letters, digits and ._-/+@:="))


def cpu_directives(hw: dict, processes: int) -> list[str]:
    """The cores a job asks for: cpusPerTask x processes, or (auto) a whole node."""
    if hw["cpusPerTask"] == "auto":
        return ["--exclusive"]
    return [f"--cpus-per-task={hw['cpusPerTask'] * processes}"]


def thread_env_lines(hw: dict, processes: int) -> list[str]:
    """OMP_NUM_THREADS of each process when the profile's env does not set it: cpusPerTask, or
    (auto) the node's cores SLURM gave the job shared between its processes."""
    threads = thread_setting(hw)
    if threads is None:
        return []
    if threads == "auto":
        return [f'threads=$(( ${{SLURM_CPUS_ON_NODE:-1}} / {processes} )); [ "$threads" -ge 1 ] || threads=1',
                'export OMP_NUM_THREADS="$threads"']
    return [f"export OMP_NUM_THREADS={threads}"]


def sbatch_directives(run: dict, hw: dict, name: str, generation: int, folder: Path) -> list[str]:
    sl = run["executor"]["slurm"]
    hs = hw["slurm"]
    nodes = sl.get("nodes") or hw["nodes"]
    cpu = hw["accelerator"] == "cpu"
    # one task per node, the launcher: it starts devicesPerNode processes of cpusPerTask cores each
    d = [f"--job-name=aam-{name}-g{generation}",
         f"--output={folder}/{LOG}",
         f"--error={folder}/{LOG}",
         "--open-mode=append",
         f"--nodes={nodes}",
         "--ntasks-per-node=1",
         *cpu_directives(hw, hw["devicesPerNode"])]
    if not cpu:
        if hs["gpuFlag"] == "gpus-per-node":
            d.append(f"--gpus-per-node={hw['devicesPerNode']}")
        elif hs["gpuFlag"] == "gres":
            d.append(f"--gres={hs['gresName']}:{hw['devicesPerNode']}")
    if hw.get("memoryPerNode"):
        d.append(f"--mem={hw['memoryPerNode']}")
    d.append(f"--time={sl.get('timeLimit') or hs['defaultTimeLimit']}")
    for key, flag in (("partition", "partition"), ("account", "account"), ("qos", "qos")):
        value = sl.get(key) or hs.get(key)
        if value:
            d.append(f"--{flag}={value}")
    if hs.get("constraint"):
        d.append(f"--constraint={hs['constraint']}")
    if hs.get("exclusive") and "--exclusive" not in d:
        d.append("--exclusive")
    d.append(f"--signal=B:USR1@{sl['signalSecondsBeforeEnd']}")
    d.append("--requeue" if sl["requeue"] else "--no-requeue")
    return d


def render_sbatch(run_obj, run: dict, hw: dict, name: str, generation: int, folder: Path, python: str,
                  data_paths: list[str]) -> str:
    check_path(str(folder), "run folder", run_obj)
    sl = run["executor"]["slurm"]
    nodes = sl.get("nodes") or hw["nodes"]
    container = hw.get("container")
    if container:
        python = "python3"
    if nodes > 1 or hw["devicesPerNode"] > 1:
        # CPU and GPU alike: accelerate launch on every node, machine rank from SLURM, rendezvous
        # on the first node (gloo on CPU, NCCL/RCCL on GPUs)
        inner = "exec " + shell_join(launch_command(python, folder, hw, nodes, multinode=True, port=sl["port"]))
    else:
        inner = "exec " + shell_join([python, "-m", RUNTIME_MODULE, str(folder)])
    if ((run.get("trainer") or {}).get("profile") or {}).get("rocprof") and hw["accelerator"] == "rocm":
        # trainer.profile.rocprof: every node's launcher (and the processes it starts) under
        # rocprof --stats, one output folder per node
        out = shlex.quote(str(folder / PROFILE_DIR / "rocprof-"))
        inner = (f'rp={out}"$SLURMD_NODENAME"; mkdir -p "$rp" && '
                 + inner.replace("exec ", 'exec rocprof --stats -d "$rp" -o "$rp/results.csv" ', 1))
    wrapper = container_wrapper(hw, folder, data_paths) if container else []
    srun = ["srun", "--kill-on-bad-exit=1", f"--nodes={nodes}", "--ntasks-per-node=1", *wrapper, "bash", "-c", inner]
    stage_in, stage_out = staging_lines(hw, folder, nodes, wrapper, python) if hw.get("scratch") else ("", "")
    modules = "\n".join(["if command -v module >/dev/null 2>&1; then"] +
                        [f"  module load {shlex.quote(m)}" for m in hw["modules"]] + ["fi"]) \
        if hw["modules"] else ""
    text = template_path().read_text()
    env = job_env(hw)
    repl = {
        "%%NAME%%": name, "%%GENERATION%%": str(generation),
        "%%SBATCH%%": "\n".join("#SBATCH " + x for x in sbatch_directives(run, hw, name, generation, folder)),
        "%%RUN_DIR%%": shlex.quote(str(folder)),
        "%%MODULES%%": modules,
        "%%ENV%%": "\n".join(thread_env_lines(hw, hw["devicesPerNode"]) + env_lines(env)),
        "%%PORT%%": str(int(sl["port"])),
        "%%SRUN%%": " ".join(shlex.quote(a) for a in srun),
        "%%EXIT_PREEMPTED%%": str(EXIT_PREEMPTED),
        "%%EXIT_CODE%%": EXIT_CODE,
        "%%RUNTIME_EXIT%%": RUNTIME_EXIT,
        "%%TAKE_RUNTIME_EXIT%%": "\n".join(TAKE_RUNTIME_EXIT),
        "%%PREEMPT%%": PREEMPT_FLAG,
        "%%CANCEL%%": CANCEL_FLAG,
        "%%REQUEUE%%": "yes" if sl["requeue"] else "no",
        "%%REQUEUES%%": REQUEUES,
        "%%MAX_REQUEUES%%": str(-1 if sl.get("maxRequeues") is None else int(sl["maxRequeues"])),
        "%%STAGE_IN%%": stage_in,
        "%%STAGE_OUT%%": stage_out,
    }
    for k, v in repl.items():
        if not v and k.startswith("%%STAGE_"):
            text = text.replace(k + "\n", "")  # no staging: the script is as before
        text = text.replace(k, v)
    return text


def container_wrapper(hw: dict, folder: Path, data_paths: list[str]) -> list[str]:
    """The singularity/apptainer words before every srun task's command: the image, GPU
    support, and binds for the state folder, the data folders and the scratch path's fixed part."""
    container = hw["container"]
    binds = {str(folder.parent.parent)} | {str(Path(p).parent) for p in data_paths} | set(container["binds"])
    if hw.get("scratch"):  # the deepest folder of the scratch path that names no variable
        prefix = hw["scratch"].split("$", 1)[0]
        fixed = prefix.rstrip("/") if prefix.endswith("/") else str(Path(prefix).parent)
        if fixed not in ("", "/"):
            binds.add(fixed)
    wrapper = [container["runtime"], "exec", "--rocm" if hw["accelerator"] == "rocm" else "--nv",
               "--bind", ",".join(sorted(binds)), container["image"]]
    if hw["accelerator"] == "cpu":
        wrapper.remove("--nv")
    return wrapper


def staging_lines(hw: dict, folder: Path, nodes: int, wrapper: list[str], python: str) -> tuple[str, str]:
    """Node-local staging (HardwareProfile.scratch): one task per node copies the data in before
    training and removes the folder when the job ends (before a requeue too: the next start
    stages afresh). The job script's stage-in block and stage-out line."""
    def on_every_node(action: list[str]) -> str:
        return " ".join(shlex.quote(a) for a in ["srun", "--kill-on-bad-exit=1", f"--nodes={nodes}",
                                                 "--ntasks-per-node=1", *wrapper, "bash", "-c",
                                                 "exec " + shell_join([python, "-m", STAGE_MODULE, *action])])
    stage_in = "\n".join([
        "# node-local scratch (HardwareProfile.scratch): every node copies the data in, sha256-checked",
        f'export AAM_SCRATCH="{hw["scratch"]}"',
        f"if ! {on_every_node(['in', str(folder)])}; then",
        '  echo "[$(date +%H:%M:%S)] staging the data to $AAM_SCRATCH failed; not training"',
        f"  {on_every_node(['out'])}",
        f"  echo {EXIT_DATA_ERROR} > {EXIT_CODE}.tmp && mv -f {EXIT_CODE}.tmp {EXIT_CODE}",
        f"  exit {EXIT_DATA_ERROR}",
        "fi"])
    stage_out = on_every_node(["out"]) + " || true"
    return stage_in, stage_out
