"""aamctl convert: a reference command line (jbk708/aam) -> Dataset, Model, Run and
HardwareProfile manifests.

    argv -> launcher (env assignments, srun, singularity/apptainer exec, torchrun, python -m)
         -> command and options (checked against convert.flags.FLAGS)
         -> the four manifests, each value that differs from our default commented with why

The reference's defaults are reproduced: where a flag is absent and the reference's default
differs from ours, the manifest says the reference's value, with ours in the comment. A flag we
cannot express becomes a comment at the top of the Run. Scripts (`-f`) may hold several
commands, `VAR=value` lines and #SBATCH lines; commands are converted in order, identical
Datasets, Models and HardwareProfiles are shared, and a `train` whose --pretrained-encoder lies
under an earlier `pretrain`'s --output-dir starts from that Run.
"""
from __future__ import annotations

import difflib
import json
import math
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from aamctl.errors import AamError, Diagnostic
from aamctl.convert.flags import (BASELINE, BY_COMMAND, COMMANDS, PREDICT, PRETRAIN, TORCHRUN_FLAGS, TORCHRUN_VALUE,
                              TRAIN, Flag)
from aamctl.api.schema import API_VERSION, spec_defaults
from aamctl.convert.flags import NOT_NEEDED

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
            i += 1
            while i < len(argv) and argv[i].startswith("-"):
                opt = argv[i]
                i += 1
                if "=" not in opt and opt in ("-n", "-N", "-c", "-p", "-A", "-t", "-G", "-J", "-o", "-e", "--ntasks",
                                              "--nodes", "--cpus-per-task", "--partition", "--account", "--time",
                                              "--gpus", "--gres", "--job-name", "--output", "--error", "--mpi"):
                    i += 1
        elif base in ("singularity", "apptainer"):
            container = base
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
        elif base == "torchrun" or (base.startswith("python") and argv[i + 1:i + 3] in
                                    (["-m", "torch.distributed.run"], ["-m", "torch.distributed.launch"])):
            torchrun = True
            i += 1 if base == "torchrun" else 3
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


# ---------------------------------------------------------------- building the manifests

class Manifest:
    """A manifest under construction, with a comment per field path."""

    def __init__(self, kind: str, name: str):
        self.kind, self.name = kind, name
        self.spec: dict = {}
        self.comments: dict[str, str] = {}
        self.header: list[str] = []
        self.defaults = spec_defaults(kind)

    def set(self, path: str, value, comment: str | None = None) -> None:
        node = self.spec
        keys = path.split(".")
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
        if comment:
            self.comments[path] = comment

    def default(self, path: str):
        node = self.defaults
        for k in path.split("."):
            if not isinstance(node, dict) or k not in node:
                return None
            node = node[k]
        return node

    def document(self) -> dict:
        return {"apiVersion": API_VERSION, "kind": self.kind, "metadata": {"name": self.name}, "spec": self.spec}


def _fmt(v) -> str:
    return json.dumps(v) if isinstance(v, (list, dict, str)) else yaml.safe_dump(v).split("\n")[0]


@dataclass
class Converted:
    dataset: Manifest
    model: Manifest | None
    hardware: Manifest
    run: Manifest


class Converter:
    def __init__(self, launch: Launch, name: str):
        self.l = launch
        self.o = launch.options
        self.given = launch.given
        self.name = name
        self.ds = Manifest("Dataset", name)
        self.model = Manifest("Model", name) if launch.command in (PRETRAIN, TRAIN) else None
        self.hw = Manifest("HardwareProfile", name)
        self.run = Manifest("Run", name)
        stage = {PRETRAIN: "pretrain", TRAIN: "finetune", PREDICT: "predict", BASELINE: "baseline"}[launch.command]
        self.run.set("stage", stage)
        self.run.set("datasetRef", name)
        if self.model is not None:
            self.run.set("modelRef", name)
        self.run.set("hardwareRef", name)

    def ref(self, m: Manifest, path: str, flag: str, value, why: str = "") -> None:
        """Write `value` (the flag's, mapped) when the flag was given or the reference's default
        differs from ours; comment the reference's default when ours differs."""
        ours = m.default(path)
        if flag in self.given:
            comment = f"{flag}" + (f"; aam's default: {_fmt(ours)}" if ours != value else "")
            m.set(path, value, comment + (f" ({why})" if why and ours != value else ""))
        elif value != ours:
            m.set(path, value, f"the reference's default ({flag}); aam's: {_fmt(ours)}" + (f". {why}" if why else ""))

    def note(self, flag: str, text: str) -> None:
        self.run.header.append(f"{flag}: {text}")

    def convert(self) -> Converted:
        self.data()
        if self.model is not None:
            self.architecture()
        self.training()
        self.hardware()
        self.unexpressed()
        return Converted(self.ds, self.model, self.hw, self.run)

    # -- Dataset
    def data(self) -> None:
        c, o, ds = self.l.command, self.o, self.ds
        ds.set("table", o["--table"], "--table")
        if o.get("--unifrac-matrix"):
            ds.set("distanceMatrix", o["--unifrac-matrix"], "--unifrac-matrix")
        if o.get("--metadata"):
            ds.set("metadata", {"path": o["--metadata"]}, "--metadata (sample ids in column sample_id)")
        if c in (PRETRAIN, TRAIN):
            self.ref(ds, "maxBp", "--max-bp", o["--max-bp"])
            self.ref(ds, "maxAsvsPerSample", "--token-limit", o["--token-limit"])
            self.ref(ds, "rarefyDepth", "--rarefy-depth", o["--rarefy-depth"],
                     "aam keeps every sample unless asked to rarefy")
            if o["--test-size"] != 0.2 or "--test-size" in self.given:
                ds.set("split", {"validationFraction": o["--test-size"]}, "--test-size")
            metric = o["--unifrac-metric"]
            if metric == "weighted":
                ds.set("unifrac", {"metric": "weighted_normalized"}, "--unifrac-metric weighted")
            elif metric == "faith_pd":
                self.note("--unifrac-metric faith_pd", "a per-sample value, not a distance; aam has no equivalent "
                          "(the distance matrix given is used as it is)")
        if c in (PRETRAIN, TRAIN, PREDICT):
            self.ref(ds, "asvSelection", "--asv-sampling", o["--asv-sampling"],
                     "aam keeps the most abundant ASVs by default")
        if c in (PRETRAIN, TRAIN) and o["--seed"] is not None:
            ds.set("split.seed", o["--seed"], "--seed")
        if c == BASELINE:
            ds.set("split", {"trainIds": o["--train-samples"], "validationIds": o["--val-samples"]},
                   "--train-samples, --val-samples")
        if c in (TRAIN, BASELINE):
            self.target()

    def target(self) -> None:
        o, ds = self.o, self.ds
        column = o["--metadata-column"]
        if not column:
            raise ConvertError(f"aam {self.l.command} needs --metadata-column (it is required there too)",
                               where=self.l.where)
        classification = bool(o.get("--classifier"))
        t = {"name": column, "type": "classification" if classification else "regression"}
        comment = "--metadata-column" + (" --classifier" if classification else "")
        cats = [x.strip() for x in (o.get("--categorical-columns") or "").split(",") if x.strip()]
        if not classification and self.l.command == TRAIN:
            norm, by, why = self.normalization()
            t["normalize"] = norm
            if by:
                t["normalizeBy"] = by
            comment += f"; {why}"
        if classification and column not in cats:
            cats = [column] + cats
        ds.set("targets", [t], comment)
        if cats:
            ds.set("categoricalColumns", cats, "--categorical-columns" + (" (with the classification target)"
                                                                          if classification else ""))
        self.run.set("target", column, "--metadata-column")

    def normalization(self) -> tuple[str, str | None, str]:
        o = self.o
        transform = o["--target-transform"]
        by_cols = o.get("--normalize-by") or o.get("--normalize-targets-by")
        if transform is None:  # the reference's legacy flags decide
            if o.get("--normalize-targets-by"):
                transform = "log-zscore" if o["--log-transform-targets"] else "zscore-category"
            elif o["--normalize-targets"]:
                transform = "log-minmax" if o["--log-transform-targets"] else "minmax"
            else:
                transform = "none"
            why = (f"no --target-transform: the reference's legacy flags give {transform}; aam's default normalize "
                   "is zscore")
        else:
            why = f"--target-transform {transform}"
        norm = {"none": "none", "minmax": "minmax", "zscore": "zscore", "zscore-category": "zscore",
                "log-minmax": "log1p_minmax", "log-zscore": "log1p_zscore"}[transform]
        by = None
        if transform == "zscore-category":
            cols = [x.strip() for x in (by_cols or "").split(",") if x.strip()]
            if not cols:
                raise ConvertError("--target-transform zscore-category needs --normalize-by (the reference "
                                   "refuses it too)", where=self.l.where)
            by = cols[0]
            if len(cols) > 1:
                self.note("--normalize-by", f"aam normalizes by one column; add a column joining "
                          f"{', '.join(cols)} to the metadata and name it in normalizeBy (now: {by})")
        if transform == "log-minmax" and not o["--bounded-targets"]:
            self.auto_bounded = True
        return norm, by, why

    # -- Model
    def architecture(self) -> None:
        o, m = self.o, self.model
        c = self.l.command
        self.ref(m, "embeddingDim", "--embedding-dim", o["--embedding-dim"])
        for level in ("nucleotide", "sample", "encoderHead") + (("targetHead",) if c == TRAIN else ()):
            self.ref(m, f"{level}.heads", "--attention-heads", o["--attention-heads"])
            self.ref(m, f"{level}.layers", "--attention-layers", o["--attention-layers"],
                     "the reference gives every encoder, the target's too, this many layers")
        count = o["--count-embedding-method"] if o["--count-embedding"] else "none"
        flag = "--count-embedding" + (f" --count-embedding-method {count}" if count != "none" else "")
        if "--count-embedding" in self.given or "--count-embedding-method" in self.given or count != m.default(
                "countEmbedding"):
            m.set("countEmbedding", count, flag if "--count-embedding" in self.given or "--count-embedding-method" in
                  self.given else "the reference's default (--count-embedding off); aam's: add")
        self.ref(m, "maskRatio", "--nuc-mask-ratio", o["--nuc-mask-ratio"])
        if o["--nuc-mask-strategy"] == "span":
            m.set("maskSpanLength", 4, "--nuc-mask-strategy span (the reference draws spans of 3-5 bases)")
        self.ref(m, "gradientCheckpointing", "--gradient-checkpointing", o["--gradient-checkpointing"],
                 "it trades compute for memory")
        attn = o["--attn-implementation"]
        if "--attn-implementation" in self.given:
            m.set("attentionBackend", {"sdpa": "auto"}.get(attn, attn), f"--attn-implementation {attn}")
        else:
            m.set("attentionBackend", "auto", "the reference's default is mem_efficient; aam picks the kernel per "
                                              "HardwareProfile (auto)")
        if c == TRAIN:
            self.head()

    def head(self) -> None:
        o, m = self.o, self.model
        self.ref(m, "targetHead.layerNorm", "--target-layer-norm", o["--target-layer-norm"])
        if o["--learnable-output-scale"]:
            m.set("targetHead.outputScale", True, "--learnable-output-scale")
        if o["--regressor-hidden-dims"]:
            try:
                hidden = [int(x) for x in o["--regressor-hidden-dims"].split(",") if x.strip()]
            except ValueError:
                raise ConvertError(f"--regressor-hidden-dims '{o['--regressor-hidden-dims']}' is not a comma-separated "
                                   "list of whole numbers", where=self.l.where) from None
            m.set("targetHead.hidden", hidden, "--regressor-hidden-dims")
            self.ref(m, "targetHead.hiddenDropout", "--regressor-dropout", o["--regressor-dropout"],
                     "aam's hidden layers otherwise use the Model's dropout")
        if o["--residual-regression-head"] and o["--regressor-hidden-dims"]:
            m.set("targetHead.residual", True, "--residual-regression-head")
        elif o["--residual-regression-head"]:
            self.note("--residual-regression-head", "without --regressor-hidden-dims the head is one linear layer; "
                      "there is nothing for a skip path to go around (aam's residual needs hidden widths)")
        act = o["--output-activation"]
        if o["--bounded-targets"] or getattr(self, "auto_bounded", False):
            m.set("targetHead.outputActivation", "bounded",
                  "--bounded-targets" if o["--bounded-targets"] else
                  "the reference bounds outputs by itself with log-minmax (range: the training targets)")
        elif act != "none":
            m.set("targetHead.outputActivation", act, "--output-activation")
        if o["--conditional-output-scaling"]:
            cols = [x.strip() for x in o["--conditional-output-scaling"].split(",") if x.strip()]
            missing = [x for x in cols if x not in self.ds.spec.get("categoricalColumns", [])]
            if missing:
                raise ConvertError(f"--conditional-output-scaling names {', '.join(missing)}, which --categorical-columns "
                                   "does not list (the reference refuses this too)", where=self.l.where)
            m.set("targetHead.conditionalScale", cols[0], "--conditional-output-scaling")
            if len(cols) > 1:
                self.note("--conditional-output-scaling", f"aam scales by one column; {', '.join(cols[1:])} dropped")
        loss = o["--loss-type"]
        if not o.get("--classifier"):
            self.ref(m, "targetHead.loss", "--loss-type", loss)
            if loss == "quantile":
                if not o["--quantiles"]:
                    raise ConvertError("--loss-type quantile needs --quantiles (the reference refuses it too)",
                                       where=self.l.where)
                try:
                    qs = [float(x) for x in o["--quantiles"].split(",") if x.strip()]
                except ValueError:
                    raise ConvertError(f"--quantiles '{o['--quantiles']}' is not a comma-separated list of numbers",
                                       where=self.l.where) from None
                m.set("targetHead.quantiles", qs, "--quantiles")
            if loss == "asymmetric":
                m.set("targetHead.asymmetric", {"over": o["--over-penalty"], "under": o["--under-penalty"]},
                      "--over-penalty, --under-penalty")
        if o["--class-weights"]:
            self.note("--class-weights", "given in class order in the reference; aam names the classes: write "
                      "targetHead.classWeights as {class: weight} (classes sorted by name: "
                      f"{o['--class-weights']})")
        fusion = o["--categorical-fusion"]
        cats = self.ds.spec.get("categoricalColumns", [])
        if cats and [x for x in cats if x != o["--metadata-column"]]:
            if fusion in ("concat", "add"):
                m.set("categoricalFusion", fusion, f"--categorical-fusion {fusion}" if "--categorical-fusion" in
                      self.given else "the reference's default (concat)")
                m.set("categoricalAt", "asvs", "the reference adds concat/add at every ASV position; aam's "
                                               "default fuses after pooling")
            elif fusion == "perceiver":
                m.set("categoricalFusion", "cross-attention", "--categorical-fusion perceiver has no aam equivalent; "
                                                              "cross-attention is the nearest")
            else:
                m.set("categoricalFusion", fusion, "--categorical-fusion")
            if fusion in ("cross-attention", "perceiver"):
                self.ref(m, "targetHead.heads", "--cross-attn-heads", o["--cross-attn-heads"],
                         "aam's cross-attention uses the target head's attention heads")
            self.ref(m, "categoricalEmbeddingDim", "--categorical-embed-dim", o["--categorical-embed-dim"])

    # -- Run
    def training(self) -> None:
        c, o, r = self.l.command, self.o, self.run
        if c == BASELINE:
            if o["--n-estimators"] != 500 or "--n-estimators" in self.given:
                r.set("baseline.trees", o["--n-estimators"], "--n-estimators")
            mf = o["--max-features"]
            if mf not in ("sqrt", "log2"):
                if mf in ("None", "none", "1.0", "all"):
                    r.set("baseline.maxFeatures", "all", f"--max-features {mf}")
                else:
                    self.note("--max-features", f"'{mf}' is not expressible (aam: sqrt, log2 or all); sqrt is used")
            elif mf != "sqrt":
                r.set("baseline.maxFeatures", mf, "--max-features")
            self.ref(r, "trainer.seed", "--random-seed", o["--random-seed"])
            return
        if c == PREDICT:
            self.ref(r, "trainer.batchSize", "--batch-size", o["--batch-size"])
            if o["--prediction-passes"] > 1 and o["--asv-sampling"] == "random":
                r.set("prediction.passes", o["--prediction-passes"], "--prediction-passes (a std column comes with it)")
            elif o["--prediction-passes"] > 1:
                self.note("--prediction-passes", "passes differ only with --asv-sampling random (the reference "
                          "repeats identical passes); one pass")
            r.set("initFrom", {"checkpoint": o["--model"]},
                  "--model: must be an aam finetune checkpoint (a reference checkpoint cannot be read; convert the "
                  "aam train command too)")
            return
        t = "trainer."
        self.ref(r, t + "epochs", "--epochs", o["--epochs"])
        self.ref(r, t + "batchSize", "--batch-size", o["--batch-size"])
        accum = o["--gradient-accumulation-steps"]
        if o["--target-effective-batch-size"]:
            per_step = o["--batch-size"] * self.l.nproc * self.l.nnodes
            accum = max(accum, math.ceil(o["--target-effective-batch-size"] / per_step))
            r.set(t + "gradientAccumulation", accum, f"--target-effective-batch-size {o['--target-effective-batch-size']}"
                  f" over {per_step} samples per step")
        else:
            self.ref(r, t + "gradientAccumulation", "--gradient-accumulation-steps", accum)
        self.ref(r, t + "learningRate", "--lr", o["--lr"])
        if c == TRAIN and o["--categorical-lr"] is not None:
            if [x for x in self.ds.spec.get("categoricalColumns", []) if x != o["--metadata-column"]]:
                r.set(t + "learningRates.categorical", o["--categorical-lr"], "--categorical-lr")
            else:
                self.note("--categorical-lr", "no --categorical-columns, so no categorical parameters to give it to")
        self.ref(r, t + "earlyStopping.patience", "--patience", o["--patience"])
        self.ref(r, t + "warmupSteps", "--warmup-steps", o["--warmup-steps"])
        self.ref(r, t + "weightDecay", "--weight-decay", o["--weight-decay"])
        self.ref(r, t + "optimizer.type", "--optimizer", o["--optimizer"])
        self.scheduler()
        clip = o["--max-grad-norm"]
        self.ref(r, t + "gradientClip", "--max-grad-norm", clip)
        mp = o["--mixed-precision"]
        if mp is not None:
            r.set(t + "precision", "no" if mp == "none" else mp, "--mixed-precision")
        else:
            r.set(t + "precision", "no", "the reference trains in fp32 unless --mixed-precision; aam's default: auto "
                                         "(bf16 where the hardware has it)")
        if o["--compile-model"]:
            r.set(t + "compile", "on", "--compile-model")
        seed = o["--seed"]
        if seed is not None:
            r.set(t + "seed", seed, "--seed")
        else:
            r.set(t + "seed", r.default(t + "seed"), "no --seed: the reference draws a random one; aam seeds every run "
                                                     "(this value) so it repeats")
        if o["--auto-batch-size"] and o["--device"] == "cuda":
            self.note("--auto-batch-size", "on by default in the reference: on a GPU it searches the largest batch "
                      "that fits (and may train with another size than --batch-size); this manifest keeps batchSize as "
                      "written: set batchSize: auto for the same search")
        w = t + "lossWeights."
        if c == PRETRAIN:
            self.ref(r, w + "unifrac", "--penalty", o["--penalty"])
            self.ref(r, w + "nucleotide", "--nuc-penalty", o["--nuc-penalty"])
            self.ref(r, w + "count", "--count-penalty", o["--count-penalty"],
                     "aam predicts counts only when asked")
        else:
            self.ref(r, w + "target", "--target-penalty", o["--target-penalty"])
            self.ref(r, w + "unifracWhenFinetuning", "--penalty", o["--penalty"],
                     "the reference keeps the UniFrac loss while fine-tuning")
            self.ref(r, w + "nucleotideWhenFinetuning", "--nuc-penalty", o["--nuc-penalty"],
                     "the reference keeps the nucleotide loss while fine-tuning")
            count = o["--count-penalty"] if o["--count-prediction"] else 0.0
            self.ref(r, w + "countWhenFinetuning", "--count-penalty", count,
                     "the reference keeps the count loss while fine-tuning")
            metric = o["--best-metric"]
            kind = "classification" if o["--classifier"] else "regression"
            if metric in (("accuracy", "f1") if kind == "regression" else ("r2", "mae")):
                raise ConvertError(f"--best-metric {metric} does not fit a {kind} target",
                                   where=self.l.where, hint="r2 or mae for regression, accuracy or f1 with --classifier")
            self.ref(r, t + "earlyStopping.metric", "--best-metric", metric)
            if o["--val-prediction-passes"] > 1 and o["--asv-sampling"] == "random":
                r.set(t + "validationPasses", o["--val-prediction-passes"], "--val-prediction-passes")
            elif o["--val-prediction-passes"] > 1:
                self.note("--val-prediction-passes", "ignored by the reference too without --asv-sampling random")
            if o["--freeze-base"] and o["--pretrained-encoder"]:
                r.set("freezeBase", True, "--freeze-base")
            elif o["--freeze-base"]:
                self.note("--freeze-base", "without --pretrained-encoder the base is random; aam does not freeze "
                          "random weights (left out)")
            if o["--pretrained-encoder"]:
                self.note("--pretrained-encoder", f"{o['--pretrained-encoder']} is a reference checkpoint, which aam "
                          "cannot load: convert the aam pretrain command that made it and set initFrom: {run: NAME}; "
                          "as written this Run trains from random weights")

    def scheduler(self) -> None:
        o, r, t = self.o, self.run, "trainer."
        s = o["--scheduler"]
        mapped = {"warmup_cosine": "cosine", "cosine": "cosine"}.get(s, s)
        self.ref(r, t + "scheduler", "--scheduler", mapped)
        lr = o["--lr"]
        if s == "cosine":
            r.set(t + "warmupSteps", 0, "--scheduler cosine: the reference's cosine has no warm-up")
        if s == "cosine_restarts":
            if o["--scheduler-t0"]:
                r.set(t + "cosineRestarts.periodSteps", o["--scheduler-t0"], "--scheduler-t0")
            else:
                r.comments[t + "scheduler"] = ("--scheduler cosine_restarts; the reference's first period is a quarter "
                                               "of the run's steps; aam's cosineRestarts.periodSteps default: 1000")
            r.set(t + "cosineRestarts.multiplier", o["--scheduler-t-mult"] or 2,
                  "--scheduler-t-mult" if o["--scheduler-t-mult"] else "the reference's default (2); aam's: 1")
            if o["--scheduler-eta-min"]:
                r.set(t + "cosineRestarts.minFactor", o["--scheduler-eta-min"] / lr, "--scheduler-eta-min / --lr")
        if s == "plateau":
            r.set(t + "plateau.factor", o["--scheduler-factor"] or 0.3,
                  "--scheduler-factor" if o["--scheduler-factor"] else "the reference's default (0.3); aam's: 0.5")
            r.set(t + "plateau.patience", o["--scheduler-patience"] or 5,
                  "--scheduler-patience" if o["--scheduler-patience"] else "the reference's default (5); aam's: 2")
            r.set(t + "plateau.minFactor", (o["--scheduler-min-lr"] or 0.0) / lr,
                  "--scheduler-min-lr / --lr" if o["--scheduler-min-lr"] else
                  "the reference's default min-lr (0); aam's minFactor: 0.001")
        if s == "onecycle":
            r.set(t + "oneCycle.peakFraction", 0.3, "the reference's pct_start")
            r.set(t + "warmupSteps", 0, "onecycle warms up by itself in the reference")

    # -- HardwareProfile
    def hardware(self) -> None:
        o, l, h = self.o, self.l, self.hw
        device = o.get("--device", "cpu") if self.l.command != BASELINE else "cpu"
        h.set("accelerator", device, "--device" if "--device" in self.given else
              ("the reference's default device (cuda); on Cosmos (ROCm) use accelerator: rocm or hardwareRef: "
               "cosmos-mi300a" if device == "cuda" else None))
        procs = l.nproc if l.torchrun else 1
        if l.slurm.get("gpus") and device == "cuda" and not l.torchrun:
            procs = l.slurm["gpus"]
        if procs > 1:
            h.set("devicesPerNode", procs, "torchrun --nproc_per_node" if l.torchrun else "#SBATCH --gres")
        if l.nnodes > 1:
            h.set("nodes", l.nnodes, "torchrun --nnodes")
        strategy = "fsdp" if o.get("--fsdp") else "ddp" if (o.get("--distributed") or o.get("--data-parallel")) \
            else None
        which = "--fsdp" if strategy == "fsdp" else "--distributed" if o.get("--distributed") else "--data-parallel"
        if strategy and procs * l.nnodes == 1:
            self.note(which, "one process on this command line (no torchrun --nproc_per_node or --nnodes above 1): "
                      "strategy none; set HardwareProfile devicesPerNode to use several devices")
        elif strategy:
            h.set("strategy", strategy, which + (" (aam's UniFrac loss spans every process's batch)"
                                                 if which == "--data-parallel" else ""))
        elif procs > 1 or l.nnodes > 1:
            h.set("strategy", "ddp", "several processes and no --distributed/--fsdp: the reference would run "
                                     "them unsynchronised; aam uses DDP")
        mp = o.get("--mixed-precision")
        if mp:
            h.set("precision", "no" if mp == "none" else mp, "--mixed-precision")
        if o.get("--compile-model"):
            h.set("compileAllowed", True, "--compile-model")
        env = {k: v for k, v in l.env.items() if not SECRET.search(k)}
        if o.get("--use-expandable-segments"):
            env["PYTORCH_CUDA_ALLOC_CONF"] = "expandable_segments:True"
        if env:
            h.set("env", env, "environment of the command line" + (" and --use-expandable-segments"
                                                                  if o.get("--use-expandable-segments") else ""))
        dropped = sorted(k for k in l.env if k not in env)
        if dropped:
            self.note("environment", f"{', '.join(dropped)} look like secrets and are left out")
        if l.image:
            h.set("container", {"image": l.image, "runtime": l.container or "singularity",
                                **({"binds": l.binds} if l.binds else {})}, f"{l.container} exec")
        if l.slurm:
            slurm = {k: v for k, v in l.slurm.items() if k in ("partition", "account", "qos", "timeLimit")}
            if l.slurm.get("nodes"):
                try:
                    slurm["nodes"] = int(str(l.slurm["nodes"]).split("-")[0])
                except ValueError:
                    pass
            self.run.set("executor", {"type": "slurm", **({"slurm": slurm} if slurm else {})}, "#SBATCH lines")

    def unexpressed(self) -> None:
        """Flags that were given but have no field: a comment each (at the top of the Run)."""
        handled_elsewhere = {"--class-weights", "--pretrained-encoder", "--normalize-by", "--conditional-output-scaling",
                             "--max-features"}
        for name in sorted(self.given):
            f = BY_COMMAND[self.l.command][name]
            if name in handled_elsewhere:
                continue
            if f.field == "not expressible":
                self.note(name, "not expressible in aam: " + f.note)
            elif f.field == NOT_NEEDED:
                self.note(name, "nothing to set: " + f.note)
        if self.l.command == TRAIN and self.o["--categorical-fusion"] == "perceiver":
            self.note("--categorical-fusion perceiver", "not in aam; cross-attention is used")
        if self.l.command == TRAIN and self.o["--loss-type"] in ("quantile", "asymmetric") and self.o.get("--classifier"):
            self.note("--loss-type", "a classification target uses cross-entropy")


# ---------------------------------------------------------------- output

def dns_name(text: str, fallback: str) -> str:
    name = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    name = re.sub(r"-{2,}", "-", name)[:63].strip("-")
    return name or fallback


def name_for(launch: Launch) -> str:
    o = launch.options
    where = o.get("--output-dir") or o.get("--output")
    if where:
        stem = Path(where.rstrip("/")).name
        if launch.command in (PREDICT, BASELINE):
            stem = Path(stem).stem
        return dns_name(stem, launch.command)
    return dns_name(launch.command, "run")


def render(m: Manifest) -> str:
    lines = [f"# {h}" for h in m.header]
    lines += [f"apiVersion: {API_VERSION}", f"kind: {m.kind}", "metadata:", f"  name: {m.name}", "spec:"]
    lines += _render_map(m.spec, m.comments, "", 1)
    return "\n".join(lines) + "\n"


def _scalar(v) -> str:
    if isinstance(v, (list, tuple)) and all(not isinstance(x, (dict, list)) for x in v):
        return "[" + ", ".join(_scalar(x) for x in v) + "]"
    if isinstance(v, dict) and all(not isinstance(x, (dict, list)) for x in v.values()):
        return "{" + ", ".join(f"{_key(k)}: {_scalar(x)}" for k, x in v.items()) + "}"
    text = yaml.safe_dump(v, default_flow_style=True, width=10_000).strip()
    if text.endswith("\n..."):
        text = text[:-4].rstrip()
    return text


def _key(k) -> str:
    return str(k) if re.match(r"^[A-Za-z_][A-Za-z0-9_.-]*$", str(k)) else _scalar(str(k))


def _render_map(node: dict, comments: dict, prefix: str, depth: int) -> list[str]:
    """Block style where a nested field carries its own comment (or holds more structure),
    flow style for small leaves."""
    pad = "  " * depth
    out = []
    for k, v in node.items():
        path = f"{prefix}{k}"
        comment = comments.get(path)
        tail = f"  # {comment}" if comment else ""
        nested_comment = any(c.startswith(path + ".") for c in comments)
        if isinstance(v, dict) and (nested_comment or any(isinstance(x, (dict, list)) for x in v.values())):
            out.append(f"{pad}{_key(k)}:{tail}")
            out += _render_map(v, comments, path + ".", depth + 1)
        elif isinstance(v, list) and any(isinstance(x, dict) for x in v):
            out.append(f"{pad}{_key(k)}:{tail}")
            for item in v:
                out.append(f"{pad}  - {_scalar(item)}")
        else:
            out.append(f"{pad}{_key(k)}: {_scalar(v)}{tail}")
    return out


def convert_commands(commands: list[tuple[str, list[str], dict]], name: str | None = None) -> str:
    """Manifests for each (where, argv, #SBATCH settings), shared where identical. A train's
    --pretrained-encoder and a predict's --model under an earlier run's output folder become
    initFrom: {run: ...}; a --pretrained-encoder from elsewhere gets a stand-in pretrain Run (a
    reference checkpoint cannot be loaded), shared by every train that names it."""
    emitted: dict[tuple, str] = {}  # (kind, spec json) -> name
    taken: dict[str, set] = {}
    outputs: list[tuple[str, str, str]] = []  # (output dir, run name, command)
    docs: list[str] = []
    for n, (where, argv, slurm) in enumerate(commands):
        launch = parse_launch(argv, where)
        launch.slurm = slurm
        base = name if name and len(commands) == 1 else (f"{name}-{n + 1}" if name else name_for(launch))
        conv = Converter(launch, base).convert()
        linked = _link(conv, launch, outputs)
        fresh = []
        for m in (conv.dataset, conv.model, conv.hardware):
            if m is None:
                continue
            key = (m.kind, json.dumps(m.spec, sort_keys=True))
            if key in emitted:
                m.name = emitted[key]
            else:
                m.name = _unique(base if name else _object_name(m, base), taken.setdefault(m.kind, set()))
                emitted[key] = m.name
                fresh.append(m)
        runs = []
        if not linked and launch.command == TRAIN and launch.options.get("--pretrained-encoder"):
            stand_in = _stand_in_pretrain(conv, launch, taken.setdefault("Run", set()))
            outputs.append((stand_in.out_dir, stand_in.name, PRETRAIN))
            _link(conv, launch, outputs)
            runs.append(stand_in)
        conv.run.name = _unique(base, taken.setdefault("Run", set()))
        for r in runs + [conv.run]:
            r.spec["datasetRef"] = conv.dataset.name
            if conv.model is not None:
                r.spec["modelRef"] = conv.model.name
            r.spec["hardwareRef"] = conv.hardware.name
        runs.append(conv.run)
        out_dir = launch.options.get("--output-dir")
        if out_dir:
            outputs.append((out_dir.rstrip("/"), conv.run.name, launch.command))
        header = f"# from {where}: {' '.join(shlex.quote(_redact(a)) for a in argv)}\n"
        docs.append(header + "\n---\n".join(render(m) for m in fresh + runs))
    return "\n---\n".join(docs)


# what a train command says about the pretraining it builds on: data, architecture, hardware (not
# its optimisation, which was the pretrain command's own)
STAND_IN_FLAGS = {"--table", "--unifrac-matrix", "--max-bp", "--token-limit", "--asv-sampling", "--rarefy-depth",
                  "--test-size", "--unifrac-metric", "--seed", "--embedding-dim", "--attention-heads",
                  "--attention-layers", "--count-embedding", "--count-embedding-method", "--nuc-mask-ratio",
                  "--nuc-mask-strategy", "--gradient-checkpointing", "--attn-implementation", "--device",
                  "--distributed", "--fsdp", "--data-parallel", "--mixed-precision", "--use-expandable-segments",
                  "--batch-size"}


SECRET = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD", re.I)


def _redact(word: str) -> str:
    """VAR=value with a secret-looking VAR: the value never reaches the output."""
    name, eq, _ = word.partition("=")
    return f"{name}=<redacted>" if eq and re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name) and SECRET.search(name) else word


def _stand_in_pretrain(conv: Converted, launch: Launch, taken_runs: set) -> Manifest:
    """A pretrain Run with the train command's data, architecture and hardware flags, standing in
    for the reference run that wrote the checkpoint given to --pretrained-encoder."""
    ckpt = launch.options["--pretrained-encoder"]
    folder = Path(ckpt).parent
    if folder.name == "checkpoints":  # the reference's layout: <output-dir>/checkpoints/best_model.pt
        folder = folder.parent
    args = []
    for flag in sorted(launch.given & STAND_IN_FLAGS):
        f = BY_COMMAND[PRETRAIN][flag]
        value = launch.options[flag]
        if f.kind in ("flag", "bool"):
            args.append(flag if value else f.negation)
        else:
            args += [flag, str(value)]
    options, given = parse_options(PRETRAIN, args + ["--output-dir", str(folder)], launch.where)
    pre = Launch(PRETRAIN, options, given, launch.nproc, launch.nnodes, launch.torchrun, launch.image,
                 launch.container, launch.binds, launch.env, launch.slurm, launch.where)
    run = Converter(pre, "x").convert().run
    stem = folder.name if "pretrain" in folder.name else f"pretrain-{folder.name}"
    run.name = _unique(dns_name(stem, "pretrain"), taken_runs)
    run.header = [f"stands in for the aam pretrain run that wrote {ckpt}: aam cannot load a reference checkpoint, so "
                  "it pretrains its own on the same data and architecture (the train command's data, model and hardware "
                  "flags, the reference's pretrain defaults otherwise; replace this Run with your converted aam "
                  "pretrain command where its settings differed)"] + run.header
    run.out_dir = str(folder)
    return run


def _object_name(m: Manifest, base: str) -> str:
    """A Dataset is named after its table, a HardwareProfile after its shape; a Model after its
    first Run (a later identical one shares it)."""
    if m.kind == "Dataset":
        return dns_name(Path(str(m.spec.get("table", ""))).stem, base)
    if m.kind == "HardwareProfile":
        s = m.spec
        shape = f"{s['accelerator']}"
        if s.get("nodes", 1) > 1 or s.get("devicesPerNode", 1) > 1:
            shape += f"-{s.get('nodes', 1)}x{s.get('devicesPerNode', 1)}"
        if s.get("strategy"):
            shape += f"-{s['strategy']}"
        return dns_name(shape + ("-container" if s.get("container") else ""), base)
    return base


def _unique(base: str, taken: set) -> str:
    name, k = base, 2
    while name in taken:
        suffix = f"-{k}"
        name = base[:63 - len(suffix)].rstrip("-") + suffix
        k += 1
    taken.add(name)
    return name


def _link(conv: Converted, launch: Launch, outputs: list) -> bool:
    o = launch.options
    path = o.get("--pretrained-encoder") if launch.command == TRAIN else o.get("--model") \
        if launch.command == PREDICT else None
    if not path:
        return False
    want = PRETRAIN if launch.command == TRAIN else TRAIN
    for out_dir, run_name, command in reversed(outputs):
        if command == want and (path == out_dir or path.startswith(out_dir + "/")):
            conv.run.set("initFrom", {"run": run_name}, f"{'--pretrained-encoder' if want == PRETRAIN else '--model'} "
                         f"{path} is written by that run")
            conv.run.header = [h for h in conv.run.header if not h.startswith("--pretrained-encoder")]
            return True
    return False


def convert_argv(argv: list[str], name: str | None = None) -> str:
    if not argv:
        raise ConvertError("give a reference command line after --, or -f FILE",
                           hint="aamctl convert -- aam train --table t.biom --metadata m.tsv --metadata-column age ...")
    return convert_commands([("aamctl convert", argv, {})], name)


def convert_file(path: str, name: str | None = None) -> str:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConvertError(f"cannot read: {exc.strerror if isinstance(exc, OSError) else exc}", where=path) from None
    found = commands_in_script(text, path)
    if not found:
        raise ConvertError("no aam command found (aam ..., python -m aam.cli ..., torchrun ... -m aam.cli ...)",
                           where=path)
    return convert_commands([(f"{path}:{line}", argv, slurm) for line, argv, slurm in found], name)
