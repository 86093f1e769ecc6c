"""aamctl convert's entry points: one command line or a whole script, converted in order, with
identical Datasets, Models and HardwareProfiles shared, unique names, a train that starts from an
earlier pretrain's Run, and a stand-in pretrain Run where a train names a reference checkpoint."""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

from aamctl.convert.converter import Converter
from aamctl.convert.flags import BY_COMMAND, PREDICT, PRETRAIN, TRAIN
from aamctl.convert.launch import ConvertError, Launch, commands_in_script, parse_launch, parse_options
from aamctl.convert.manifest import SECRET, Converted, Manifest, dns_name, name_for, render


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
