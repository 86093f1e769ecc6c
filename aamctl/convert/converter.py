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

from aamctl.convert.flags import BASELINE, BY_COMMAND, NOT_NEEDED, PREDICT, PRETRAIN, TRAIN
from aamctl.convert.launch import ConvertError, Launch
from aamctl.convert.manifest import SECRET, Converted, Manifest, _fmt
from aamctl.convert.model_fields import ModelFields
from aamctl.convert.trainer_fields import TrainerFields


class Converter(ModelFields, TrainerFields):
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
