"""A reference command line read as the reference's own parser would: the launcher words around
it (env assignments, srun, singularity/apptainer exec, torchrun, python -m), its command and
options (checked against flags.FLAGS, typed, defaults filled), and the aam commands of a script
(`VAR=value` lines expanded, #SBATCH lines read)."""
from __future__ import annotations

import difflib
import math
import os
import re
import shlex
from dataclasses import dataclass, field

from aamctl.convert.flags import BASELINE, BY_COMMAND, COMMANDS, TORCHRUN_FLAGS, TORCHRUN_VALUE, Flag
from aamctl.errors import AamError, Diagnostic

PROGRAMS = {"aam", "torchrun", "python", "python3", "srun", "singularity", "apptainer", "accelerate", "env"}
SBATCH = {"-p": "partition", "--partition": "partition", "-A": "account", "--account": "account", "-q": "qos",
          "--qos": "qos", "-t": "timeLimit", "--time": "timeLimit", "-N": "nodes", "--nodes": "nodes"}


class ConvertError(AamError):
    def __init__(self, message: str, hint: str | None = None, where: str = "aamctl convert"):
        super().__init__(Diagnostic(message, file=where, hint=hint), exit_code=1)


# ---------------------------------------------------------------- reading a command line

@dataclass
class Launch:
    command: str
    options: dict  # flag name -> value (bool for flags)
    given: set
    nproc: int = 1
    nnodes: int = 1
    torchrun: bool = False
    image: str | None = None
    container: str | None = None
    binds: list = field(default_factory=list)
    env: dict = field(default_factory=dict)
    slurm: dict = field(default_factory=dict)
    where: str = "aamctl convert"


def _take(argv: list[str], i: int, flag: str, where: str) -> tuple[str, int]:
    if "=" in argv[i]:
        return argv[i].split("=", 1)[1], i + 1
    if i + 1 >= len(argv):
        raise ConvertError(f"{flag} needs a value", where=where)
    return argv[i + 1], i + 2


def parse_launch(argv: list[str], where: str = "aamctl convert") -> Launch:
    """Peel the launchers off a reference command line and read the aam command's options."""
    argv = list(argv)
    env: dict = {}
    nproc = nnodes = 1
    torchrun = False
    image = container = None
    binds: list = []
    i = 0
    while i < len(argv) and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", argv[i]):
        k, v = argv[i].split("=", 1)
        env[k] = v
        i += 1
    while i < len(argv):
        word = argv[i]
        base = os.path.basename(word)
        if base == "env":
            i += 1
            while i < len(argv) and "=" in argv[i] and not argv[i].startswith("-"):
                k, v = argv[i].split("=", 1)
                env[k] = v
                i += 1
        elif base == "srun":
            i = _skip_srun(argv, i + 1)
        elif base in ("singularity", "apptainer"):
            container = base
            i, image, more = _container(argv, i)
            binds.extend(more)
        elif base == "torchrun" or (base.startswith("python") and argv[i + 1:i + 3] in
                                    (["-m", "torch.distributed.run"], ["-m", "torch.distributed.launch"])):
            torchrun = True
            i, nproc, nnodes = _torchrun(argv, i + (1 if base == "torchrun" else 3), where)
        elif base.startswith("python"):
            i += 1
            while i < len(argv) and argv[i] in ("-u", "-O", "-B"):
                i += 1
        elif word in ("-m", "--module") and i + 1 < len(argv) and argv[i + 1].startswith("aam"):
            i += 2
            break
        elif base == "aam" or word.endswith("aam/cli/__main__.py"):
            i += 1
            break
        elif word in COMMANDS:
            break
        else:
            raise ConvertError(f"'{' '.join(argv[:i + 1])}': expected an aam command (aam, python -m aam.cli, torchrun "
                               f"... -m aam.cli) but found '{word}'", where=where,
                               hint="give the reference's command line after --, e.g. aamctl convert -- aam train "
                                    "--table t.biom ...")
    if i >= len(argv):
        raise ConvertError("the command line names no aam command", where=where,
                           hint=f"one of: aam {', aam '.join(COMMANDS)}")
    command = argv[i]
    if command == "rf_baseline":
        command = BASELINE
    if command not in COMMANDS:
        near = difflib.get_close_matches(command, COMMANDS, n=1)
        raise ConvertError(f"unknown aam command '{command}'", where=where,
                           hint=f"did you mean '{near[0]}'?" if near else f"one of: {', '.join(COMMANDS)}")
    options, given = parse_options(command, argv[i + 1:], where)
    return Launch(command, options, given, nproc, nnodes, torchrun, image, container, binds, env, where=where)


def _skip_srun(argv: list[str], i: int) -> int:
    """Past srun's own options (its values too), to the command it runs."""
    while i < len(argv) and argv[i].startswith("-"):
        opt = argv[i]
        i += 1
        if "=" not in opt and opt in ("-n", "-N", "-c", "-p", "-A", "-t", "-G", "-J", "-o", "-e", "--ntasks",
                                      "--nodes", "--cpus-per-task", "--partition", "--account", "--time",
                                      "--gpus", "--gres", "--job-name", "--output", "--error", "--mpi"):
            i += 1
    return i


def _container(argv: list[str], i: int) -> tuple[int, str | None, list[str]]:
    """singularity/apptainer exec OPTIONS IMAGE: (index after the image, the image, its binds)."""
    image, binds = None, []
    i += 2 if i + 1 < len(argv) and argv[i + 1] in ("exec", "run") else 1
    while i < len(argv) and argv[i].startswith("-"):
        opt = argv[i]
        i += 1
        if opt in ("-B", "--bind") and i < len(argv):
            binds.extend(b for b in argv[i].split(",") if b)
            i += 1
        elif opt.startswith("--bind="):
            binds.extend(b for b in opt.split("=", 1)[1].split(",") if b)
        elif "=" not in opt and opt in ("--env", "--home", "--pwd", "-W", "--workdir", "--overlay", "-H"):
            i += 1
    if i < len(argv):
        image = argv[i]
        i += 1
    return i, image, binds


def _torchrun(argv: list[str], i: int, where: str) -> tuple[int, int, int]:
    """torchrun's options from index i: (index of what it runs, nproc_per_node, nnodes)."""
    nproc = nnodes = 1
    while i < len(argv) and argv[i].startswith("-"):
        opt = argv[i]
        name = opt.split("=", 1)[0]
        if name in ("-m", "--module"):
            break
        if name in TORCHRUN_VALUE:
            value, i = _take(argv, i, name, where)
            if name in ("--nproc_per_node", "--nproc-per-node"):
                nproc = _launcher_int(name, value, where, gpu_ok=True)
            elif name == "--nnodes":
                nnodes = _launcher_int(name, value.split(":")[-1], where)
        elif name in TORCHRUN_FLAGS:
            i += 1
        else:
            raise ConvertError(f"unknown torchrun option '{opt}'", where=where,
                               hint="convert reads --nproc_per_node and --nnodes; put the aam command after "
                                    "torchrun's own options")
    return i, nproc, nnodes


def _launcher_int(name, value, where, gpu_ok=False) -> int:
    if gpu_ok and value in ("gpu", "auto"):
        return 1
    try:
        return max(1, int(value))
    except ValueError:
        raise ConvertError(f"torchrun {name} '{value}' is not a whole number", where=where) from None


def parse_options(command: str, args: list[str], where: str) -> tuple[dict, set]:
    known = BY_COMMAND[command]
    negations = {f.negation: f for f in known.values() if f.negation}
    values = {name: f.default for name, f in known.items()}
    given: set = set()
    i = 0
    while i < len(args):
        word = args[i]
        name = word.split("=", 1)[0]
        if name in ("-h", "--help"):
            i += 1
            continue
        if not name.startswith("--"):
            raise ConvertError(f"aam {command}: unexpected argument '{word}' (its options all start with --)",
                               where=where, hint="quote values with spaces, e.g. --categorical-columns \"a,b\"")
        if name in negations:
            f = negations[name]
            values[f.name] = False
            given.add(f.name)
            i += 1
            continue
        f = known.get(name)
        if f is None:
            raise ConvertError(*_unknown(command, name), where=where)
        if f.kind in ("flag", "bool"):
            if "=" in word:
                raise ConvertError(f"aam {command} {name} takes no value ('{word}')", where=where)
            values[name] = True
            given.add(name)
            i += 1
            continue
        raw, i = _take(args, i, name, where)
        values[name] = _typed(command, f, raw, where)
        given.add(name)
    return values, given


def _unknown(command: str, name: str) -> tuple[str, str]:
    options = list(BY_COMMAND[command]) + [f.negation for f in BY_COMMAND[command].values() if f.negation]
    near = difflib.get_close_matches(name, options, n=1, cutoff=0.6)
    elsewhere = [c for c in COMMANDS if c != command and name in BY_COMMAND[c]]
    message = f"aam {command} has no option '{name}'"
    if near:
        hint = f"did you mean '{near[0]}'?"
    elif elsewhere:
        hint = f"'{name}' is an option of aam {elsewhere[0]}"
    else:
        hint = "the options are listed in docs/reference.md"
    return message, hint


def _typed(command: str, f: Flag, raw: str, where: str):
    if f.kind == "int":
        try:
            return int(raw)
        except ValueError:
            raise ConvertError(f"aam {command} {f.name}: '{raw}' is not a whole number", where=where) from None
    if f.kind == "float":
        try:
            value = float(raw)
        except ValueError:
            raise ConvertError(f"aam {command} {f.name}: '{raw}' is not a number", where=where) from None
        if not math.isfinite(value):
            raise ConvertError(f"aam {command} {f.name}: '{raw}' is not a finite number", where=where)
        return value
    if f.kind == "choice" and raw not in f.choices:
        raise ConvertError(f"aam {command} {f.name}: '{raw}' is not one of {', '.join(f.choices)}", where=where)
    return raw


# ---------------------------------------------------------------- scripts

def commands_in_script(text: str, path: str, environ: dict | None = None) -> list[tuple[int, list[str], dict]]:
    """(line, argv, #SBATCH settings) for every aam command in a shell script or a Markdown file
    of shell blocks. `VAR=value` lines are remembered and $VAR / ${VAR} expanded (else the
    environment's; an unknown variable is an error naming it)."""
    variables = dict(environ if environ is not None else os.environ)
    slurm: dict = {}
    out = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        start = i + 1
        line = lines[i]
        while line.rstrip().endswith("\\") and i + 1 < len(lines):
            i += 1
            line = line.rstrip()[:-1] + " " + lines[i]
        i += 1
        stripped = line.strip()
        if stripped.startswith("#SBATCH"):
            slurm.update(_sbatch(stripped[len("#SBATCH"):].strip()))
            continue
        if not stripped or stripped.startswith("#") or stripped.startswith("```"):
            continue
        m = re.match(r"^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$", stripped)
        if m and " " not in m.group(2).strip().strip("'\""):
            try:
                value = shlex.split(m.group(2), comments=True)
            except ValueError:
                continue
            variables[m.group(1)] = _expand(" ".join(value), variables, path, start)
            continue
        try:
            words = shlex.split(stripped, comments=True)
        except ValueError as exc:
            raise ConvertError(f"cannot read this shell line: {exc}", where=f"{path}:{start}") from None
        if not _is_aam(words):
            continue
        out.append((start, [_expand(w, variables, path, start) for w in words], dict(slurm)))
    return out


def _is_aam(words: list[str]) -> bool:
    """Does this line run aam (directly or through a launcher)? `conda activate aam` does not."""
    rest = [w for w in words if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", w)] if words else []
    if not rest or os.path.basename(rest[0]) not in PROGRAMS:
        return False
    for w in rest:
        base = os.path.basename(w)
        if base == "aam" or w.startswith("aam.cli") or w.endswith("aam/cli/__main__.py"):
            return True
    return False


def _expand(word: str, variables: dict, path: str, line: int) -> str:
    def one(m):
        name = m.group(1) or m.group(2)
        if name not in variables:
            raise ConvertError(f"${name} is not set", where=f"{path}:{line}",
                               hint=f"set {name}=... earlier in the file or in the environment")
        return variables[name]
    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)", one, word)


def _sbatch(text: str) -> dict:
    out = {}
    try:
        words = shlex.split(text, comments=True)
    except ValueError:
        return out
    i = 0
    while i < len(words):
        w = words[i]
        name, _, value = w.partition("=")
        if not value and name in SBATCH and i + 1 < len(words):
            value = words[i + 1]
            i += 1
        if name in SBATCH:
            out[SBATCH[name]] = value
        elif name == "--gres" and value.startswith("gpu"):
            count = value.split(":")[-1]
            if count.isdigit():
                out["gpus"] = int(count)
        elif name in ("--gpus-per-node", "--gpus") and value.split(":")[-1].isdigit():
            out["gpus"] = int(value.split(":")[-1])
        i += 1
    return out
