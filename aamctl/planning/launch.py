"""How a job starts the runtime, shared by the local script and the sbatch script: the argv
(the runtime alone, or accelerate launch), the processes a HardwareProfile runs, the threads each
gets, shell quoting and environment lines, and taking rank 0's own exit code from the run folder."""
from __future__ import annotations

import shlex
from pathlib import Path

from aam_runtime.runfolder import ACCELERATE_CONFIG, RUNTIME_EXIT

RUNTIME_MODULE = "aam_runtime"


def processes(hw: dict, nodes: int | None = None) -> tuple[int, int]:
    """(nodes, processes in all) for a HardwareProfile spec."""
    n = nodes or hw["nodes"]
    return n, n * hw["devicesPerNode"]


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


def thread_setting(hw: dict) -> str | None:
    """OMP_NUM_THREADS of each process, as the job decides it: None when the profile's env sets
    it, 'auto' (its share of the cores it got) for cpusPerTask auto, else cpusPerTask."""
    if "OMP_NUM_THREADS" in hw["env"]:
        return None
    return "auto" if hw["cpusPerTask"] == "auto" else str(hw["cpusPerTask"])


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


# After the launcher exits with $rc: accelerate launch (torchrun) exits 1 whatever its workers
# returned, so a failure takes rank 0's own code from the run folder (both job scripts use this)
TAKE_RUNTIME_EXIT = [
    "# accelerate launch (torchrun) exits 1 whatever its workers returned: take the runtime's own code",
    f"runtime_rc=$(cat {RUNTIME_EXIT} 2>/dev/null)",
    "case \"$runtime_rc\" in ''|*[!0-9]*) ;; *) [ \"$rc\" -ne 0 ] && [ \"$runtime_rc\" -ne 0 ] && rc=$runtime_rc ;; esac",
]
