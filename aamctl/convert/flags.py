"""Every flag of the reference implementation's CLI (jbk708/aam: `aam pretrain`, `aam train`,
`aam predict`, `aam rf-baseline`), with its default there and the manifest field it becomes here.

One table serves `aamctl convert` (parsing a reference command line) and docs/reference.md
(tests/test_convert.py keeps that page equal to what `reference_table_markdown` writes). The flags
and defaults were read from the reference's click options (aam/cli/*.py).
"""
from __future__ import annotations

from dataclasses import dataclass

from aamctl.api.schema import spec_defaults

PRETRAIN, TRAIN, PREDICT, BASELINE = "pretrain", "train", "predict", "rf-baseline"
COMMANDS = (PRETRAIN, TRAIN, PREDICT, BASELINE)
P, T, R, B = {PRETRAIN}, {TRAIN}, {PREDICT}, {BASELINE}
PT = P | T


@dataclass(frozen=True)
class Flag:
    name: str  # --lr
    commands: frozenset
    kind: str  # int | float | str | choice | flag (takes no value) | bool (--x/--no-x)
    default: object  # the reference's default
    field: str  # where it lands here (Kind.spec.path), or how it is handled
    note: str = ""  # why ours differs, or what we do instead
    choices: tuple = ()

    @property
    def negation(self) -> str | None:
        return "--no-" + self.name[2:] if self.kind == "bool" else None


def _f(name, commands, kind, default, field, note="", choices=()):
    return Flag(name, frozenset(commands), kind, default, field, note, tuple(choices))


NOT_NEEDED = "(nothing to set)"

FLAGS: list[Flag] = [
    # ---- data
    _f("--table", PT | R | B, "str", None, "Dataset.spec.table"),
    _f("--unifrac-matrix", PT, "str", None, "Dataset.spec.distanceMatrix",
       "The reference needs a precomputed matrix; aam also computes UniFrac from a tree (Dataset.spec.tree) and "
       "caches it."),
    _f("--metadata", T | R | B, "str", None, "Dataset.spec.metadata.path",
       "Sample ids in the column sample_id in both (Dataset.spec.metadata.sampleIdColumn)."),
    _f("--metadata-column", T | B, "str", None, "Dataset.spec.targets[].name, Run.spec.target"),
    _f("--classifier", T, "flag", False, "Dataset.spec.targets[].type: classification",
       "The column is also listed in categoricalColumns, as aam requires of a classification target."),
    _f("--out-dim", T, "int", 1, NOT_NEEDED,
       "aam sizes the head from the target: the number of classes, or of quantiles."),
    _f("--max-bp", PT, "int", 150, "Dataset.spec.maxBp"),
    _f("--token-limit", PT, "int", 1024, "Dataset.spec.maxAsvsPerSample"),
    _f("--asv-sampling", PT | R, "choice", "first", "Dataset.spec.asvSelection",
       "aam keeps the most abundant ASVs by default: with `first` the kept ASVs depend on the table's row order.",
       ("first", "abundance", "random")),
    _f("--rarefy-depth", PT, "int", 5000, "Dataset.spec.rarefyDepth",
       "aam does not rarefy unless asked: rarefying drops every sample with fewer reads."),
    _f("--test-size", PT, "float", 0.2, "Dataset.spec.split.validationFraction"),
    _f("--unifrac-metric", PT, "choice", "unifrac", "Dataset.spec.unifrac.metric",
       "unifrac is unweighted, weighted is weighted_normalized; faith_pd (a per-sample value) has no aam "
       "equivalent.", ("unifrac", "weighted", "faith_pd")),
    _f("--categorical-columns", T, "str", None, "Dataset.spec.categoricalColumns"),
    _f("--target-transform", T, "choice", None, "Dataset.spec.targets[].normalize",
       "Not given, the reference falls back to its legacy flags, whose default is minmax; aam's default is zscore. "
       "zscore-category is zscore with normalizeBy; log-minmax and log-zscore are log1p_minmax and log1p_zscore.",
       ("none", "minmax", "zscore", "zscore-category", "log-minmax", "log-zscore")),
    _f("--normalize-by", T, "str", None, "Dataset.spec.targets[].normalizeBy",
       "aam normalizes by one column; for several, add a column that joins them to the metadata."),
    _f("--normalize-targets", T, "bool", True, "Dataset.spec.targets[].normalize: minmax | none",
       "Deprecated in the reference (use --target-transform)."),
    _f("--normalize-targets-by", T, "str", None, "Dataset.spec.targets[].normalizeBy (normalize: zscore)",
       "Deprecated in the reference."),
    _f("--log-transform-targets", T, "flag", False, "Dataset.spec.targets[].normalize: log1p_minmax",
       "Deprecated in the reference."),
    _f("--seed", PT, "int", None, "Run.spec.trainer.seed, Dataset.spec.split.seed",
       "The reference draws a fresh seed when none is given; aam always seeds (42), so a run repeats."),
    # ---- model
    _f("--embedding-dim", PT, "int", 128, "Model.spec.embeddingDim"),
    _f("--attention-heads", PT, "int", 4, "Model.spec.{nucleotide,sample,encoderHead,targetHead}.heads"),
    _f("--attention-layers", PT, "int", 4, "Model.spec.{nucleotide,sample,encoderHead,targetHead}.layers",
       "The reference gives its target encoder as many layers as the others; aam's targetHead.layers defaults "
       "to 2 (a head on a pretrained base)."),
    _f("--count-embedding", PT, "bool", False, "Model.spec.countEmbedding: none | the method",
       "aam adds abundance by default (countEmbedding add): the reference's default ignores the counts the "
       "model is given."),
    _f("--count-embedding-method", PT, "choice", "add", "Model.spec.countEmbedding", "",
       ("add", "concat", "film")),
    _f("--nuc-mask-ratio", PT, "float", 0.15, "Model.spec.maskRatio"),
    _f("--nuc-mask-strategy", PT, "choice", "random", "Model.spec.maskSpanLength",
       "span masks runs of 3-5 bases in the reference; aam masks runs of a fixed length (4).", ("random", "span")),
    _f("--gradient-checkpointing", PT, "bool", True, "Model.spec.gradientCheckpointing",
       "Off by default in aam: it recomputes activations in the backward pass (slower), and per-batch ASV "
       "de-duplication already cuts memory (docs/benchmarks.md); turn it on where memory runs short."),
    _f("--attn-implementation", PT, "choice", "mem_efficient", "Model.spec.attentionBackend",
       "aam picks the kernel per HardwareProfile (auto), which knows the ROCm pitfalls (docs/hardware.md).",
       ("sdpa", "flash", "mem_efficient", "math")),
    _f("--asv-chunk-size", PT, "int", 256, NOT_NEEDED,
       "aam encodes each distinct ASV of a batch once instead of in chunks; results do not depend on it."),
    _f("--target-layer-norm", T, "bool", True, "Model.spec.targetHead.layerNorm"),
    _f("--bounded-targets", T, "flag", False, "Model.spec.targetHead.outputActivation: bounded",
       "The range is the training targets' (targetHead.bounds). The reference turns it on by itself with "
       "log-minmax; so does convert."),
    _f("--learnable-output-scale", T, "flag", False, "Model.spec.targetHead.outputScale"),
    _f("--categorical-embed-dim", T, "int", 16, "Model.spec.categoricalEmbeddingDim"),
    _f("--categorical-fusion", T, "choice", "concat", "Model.spec.categoricalFusion (+ categoricalAt)",
       "The reference's concat and add meet every ASV position (categoricalAt: asvs); aam's default fuses after "
       "pooling. perceiver has no aam equivalent (cross-attention is the nearest).",
       ("concat", "add", "gmu", "cross-attention", "perceiver")),
    _f("--cross-attn-heads", T, "int", 8, "Model.spec.targetHead.heads",
       "aam's cross-attention uses the target head's attention heads."),
    _f("--perceiver-num-latents", T, "int", 64, "not expressible", "No perceiver fusion in aam."),
    _f("--perceiver-num-layers", T, "int", 2, "not expressible", "No perceiver fusion in aam."),
    _f("--output-activation", T, "choice", "none", "Model.spec.targetHead.outputActivation", "",
       ("none", "relu", "softplus", "exp")),
    _f("--regressor-hidden-dims", T, "str", None, "Model.spec.targetHead.hidden"),
    _f("--regressor-dropout", T, "float", 0.0, "Model.spec.targetHead.hiddenDropout",
       "aam's hidden layers use the Model's dropout (0.1) unless hiddenDropout is set."),
    _f("--residual-regression-head", T, "flag", False, "Model.spec.targetHead.residual"),
    _f("--conditional-output-scaling", T, "str", None, "Model.spec.targetHead.conditionalScale",
       "One column in aam."),
    _f("--loss-type", T, "choice", "huber", "Model.spec.targetHead.loss", "",
       ("mse", "mae", "huber", "quantile", "asymmetric")),
    _f("--quantiles", T, "str", None, "Model.spec.targetHead.quantiles"),
    _f("--over-penalty", T, "float", 1.0, "Model.spec.targetHead.asymmetric.over"),
    _f("--under-penalty", T, "float", 1.0, "Model.spec.targetHead.asymmetric.under"),
    _f("--loss-config", T, "str", None, "not expressible",
       "Per-output losses of the reference's multi-output head (--out-dim above 1). aam's several targets are "
       "metadata columns: Run spec.targets, each with its own loss and weight."),
    _f("--class-weights", T, "str", None, "Model.spec.targetHead.classWeights",
       "The reference takes weights in class order; aam names the classes (convert numbers them by sorted "
       "class name, as both order classes)."),
    _f("--categorical-loss-weights", T, "str", None, "not expressible",
       "Per-category weighting of the target loss is not in aam."),
    _f("--categorical-loss-weight-column", T, "str", None, "not expressible",
       "Per-category weighting of the target loss is not in aam."),
    _f("--categorical-help", T, "flag", False, NOT_NEEDED, "Prints help in the reference; `aamctl explain` here."),
    # ---- losses
    _f("--penalty", PT, "float", 1.0, "Run.spec.trainer.lossWeights.unifrac (pretrain), .unifracWhenFinetuning (train)",
       "The reference keeps the UniFrac loss while fine-tuning; aam does not by default (docs/reference.md, "
       "auxiliary losses)."),
    _f("--nuc-penalty", PT, "float", 1.0, "Run.spec.trainer.lossWeights.nucleotide, .nucleotideWhenFinetuning",
       "As --penalty."),
    _f("--target-penalty", T, "float", 1.0, "Run.spec.trainer.lossWeights.target"),
    _f("--count-penalty", PT, "float", 1.0, "Run.spec.trainer.lossWeights.count, .countWhenFinetuning",
       "aam predicts counts only when asked (weight 0 by default)."),
    _f("--count-prediction", T, "bool", True, "Run.spec.trainer.lossWeights.countWhenFinetuning: 0 when off"),
    # ---- optimisation
    _f("--epochs", PT, "int", 100, "Run.spec.trainer.epochs"),
    _f("--batch-size", PT | R, "int", 8, "Run.spec.trainer.batchSize"),
    _f("--auto-batch-size", PT, "bool", True, "Run.spec.trainer.batchSize",
       "The search is batchSize: auto (on CPU too, by an estimate). convert keeps the --batch-size given and says so."),
    _f("--max-memory-fraction", PT, "float", 0.8, "Run.spec.trainer.autoBatch.memoryFraction",
       "Only used by the batch-size search."),
    _f("--target-effective-batch-size", PT, "int", None, "Run.spec.trainer.gradientAccumulation",
       "Computed: the target over batch size times processes, rounded up."),
    _f("--gradient-accumulation-steps", PT, "int", 1, "Run.spec.trainer.gradientAccumulation"),
    _f("--lr", PT, "float", 1e-4, "Run.spec.trainer.learningRate"),
    _f("--categorical-lr", T, "float", None, "Run.spec.trainer.learningRates.categorical"),
    _f("--patience", PT, "int", 10, "Run.spec.trainer.earlyStopping.patience"),
    _f("--warmup-steps", PT, "int", 10000, "Run.spec.trainer.warmupSteps",
       "aam caps warm-up at a tenth of the run's steps."),
    _f("--weight-decay", PT, "float", 0.01, "Run.spec.trainer.weightDecay"),
    _f("--optimizer", PT, "choice", "adamw", "Run.spec.trainer.optimizer.type", "", ("adamw", "adam", "sgd")),
    _f("--scheduler", PT, "choice", "warmup_cosine", "Run.spec.trainer.scheduler",
       "warmup_cosine is aam's cosine (with warmupSteps); the reference's cosine has no warm-up.",
       ("warmup_cosine", "cosine", "cosine_restarts", "plateau", "onecycle")),
    _f("--scheduler-t0", PT, "int", None, "Run.spec.trainer.cosineRestarts.periodSteps",
       "The reference's default is a quarter of the run's steps, which convert cannot know: it writes aam's."),
    _f("--scheduler-t-mult", PT, "int", 2, "Run.spec.trainer.cosineRestarts.multiplier"),
    _f("--scheduler-eta-min", PT, "float", 0.0, "Run.spec.trainer.cosineRestarts.minFactor",
       "aam takes a fraction of the peak rate: eta-min / lr."),
    _f("--scheduler-patience", PT, "int", 5, "Run.spec.trainer.plateau.patience"),
    _f("--scheduler-factor", PT, "float", 0.3, "Run.spec.trainer.plateau.factor"),
    _f("--scheduler-min-lr", PT, "float", 0.0, "Run.spec.trainer.plateau.minFactor",
       "aam takes a fraction of the peak rate: min-lr / lr."),
    _f("--max-grad-norm", PT, "float", None, "Run.spec.trainer.gradientClip",
       "aam clips at 1.0 by default: an unclipped step early in fine-tuning can wreck a pretrained base."),
    _f("--mixed-precision", PT, "choice", None, "Run.spec.trainer.precision",
       "Not given, the reference trains in fp32; aam picks per HardwareProfile (auto: bf16 where supported).",
       ("fp16", "bf16", "none")),
    _f("--compile-model", PT, "flag", False, "Run.spec.trainer.compile, HardwareProfile.spec.compileAllowed"),
    _f("--tf32", PT, "flag", False, "not expressible", "aam leaves torch's TF32 setting alone."),
    _f("--freeze-base", T, "flag", False, "Run.spec.freezeBase"),
    _f("--pretrained-encoder", T, "str", None, "Run.spec.initFrom.run",
       "A reference checkpoint cannot be loaded; convert the `aam pretrain` command that made it too (in one "
       "file, convert links them)."),
    _f("--resume-from", PT, "str", None, NOT_NEEDED,
       "An aam Run resumes from its own last checkpoint: `aamctl resume run NAME`."),
    _f("--best-metric", T, "choice", "val_loss", "Run.spec.trainer.earlyStopping.metric", "",
       ("val_loss", "r2", "mae", "accuracy", "f1")),
    _f("--val-prediction-passes", T, "int", 1, "Run.spec.trainer.validationPasses"),
    _f("--output-dir", PT, "str", None, "metadata.name",
       "aam writes into the Run's folder; the name comes from the folder's last part."),
    # ---- hardware and launch
    _f("--device", PT | R, "choice", "cuda", "HardwareProfile.spec.accelerator", "", ("cuda", "cpu")),
    _f("--num-workers", PT, "int", 4, NOT_NEEDED,
       "aam builds batches in the training process, thousands of times faster than the model consumes them."),
    _f("--use-expandable-segments", PT, "flag", False, "HardwareProfile.spec.env.PYTORCH_CUDA_ALLOC_CONF"),
    _f("--no-sequence-cache", PT | R, "flag", False, NOT_NEEDED, "aam tokenizes each ASV once per run."),
    _f("--distributed", PT, "flag", False, "HardwareProfile.spec.strategy: ddp",
       "Processes from torchrun's --nproc_per_node and --nnodes."),
    _f("--data-parallel", PT, "flag", False, "HardwareProfile.spec.strategy: ddp",
       "aam's UniFrac loss spans the global batch across DDP processes, the reason for DataParallel there."),
    _f("--sync-batchnorm", PT, "flag", False, NOT_NEEDED, "AAM has no BatchNorm."),
    _f("--fsdp", PT, "flag", False, "HardwareProfile.spec.strategy: fsdp"),
    _f("--fsdp-sharded-checkpoint", PT, "flag", False, NOT_NEEDED,
       "aam saves full state dicts, loadable at any process count."),
    _f("--memory-profile", P, "flag", False, NOT_NEEDED, "Peak memory is in the Run's status and metrics."),
    # ---- predict
    _f("--model", R, "str", None, "Run.spec.initFrom (run or checkpoint)"),
    _f("--output", R | B, "str", None, "metadata.name",
       "Predictions land in the Run's folder as predictions.tsv."),
    _f("--prediction-passes", R, "int", 1, "Run.spec.prediction.passes"),
    _f("--output-variance", R, "flag", False, NOT_NEEDED,
       "aam writes a std column whenever there is more than one pass."),
    # ---- random forest baseline
    _f("--train-samples", B, "str", None, "Dataset.spec.split.trainIds"),
    _f("--val-samples", B, "str", None, "Dataset.spec.split.validationIds"),
    _f("--n-estimators", B, "int", 500, "Run.spec.baseline.trees"),
    _f("--max-features", B, "str", "sqrt", "Run.spec.baseline.maxFeatures"),
    _f("--random-seed", B, "int", 42, "Run.spec.trainer.seed"),
    _f("--n-jobs", B, "int", -1, NOT_NEEDED, "aam's forest uses every core."),
]

BY_COMMAND: dict[str, dict[str, Flag]] = {
    c: {f.name: f for f in FLAGS if c in f.commands} for c in COMMANDS}

# torchrun's options that matter here, and the ones skipped
TORCHRUN_VALUE = {"--nproc_per_node", "--nproc-per-node", "--nnodes", "--node_rank", "--node-rank", "--master_addr",
                  "--master-addr", "--master_port", "--master-port", "--rdzv_backend", "--rdzv-backend",
                  "--rdzv_endpoint", "--rdzv-endpoint", "--rdzv_id", "--rdzv-id", "--rdzv_conf", "--rdzv-conf",
                  "--max_restarts", "--max-restarts", "--monitor_interval", "--monitor-interval", "--log_dir",
                  "--log-dir", "--redirects", "--tee", "--local_addr", "--local-addr", "--start_method",
                  "--start-method", "--role", "--run_path", "--run-path"}
TORCHRUN_FLAGS = {"--standalone", "--no_python", "--no-python", "--module", "-m"}


def _our_default(field: str):
    """aam's default for a field written as Kind.spec.path (from the schema), else None."""
    import re

    m = re.match(r"^(Dataset|Model|Run|HardwareProfile)\.spec\.([A-Za-z.]+)$", field)
    if not m:
        return None
    node = spec_defaults(m.group(1))
    for key in m.group(2).split("."):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return ("value", node)


def _show(value) -> str:
    import json

    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return value
    return json.dumps(value)


REQUIRED = {"--table", "--unifrac-matrix", "--metadata-column", "--output-dir", "--model", "--output",
            "--train-samples", "--val-samples"}
# aam's default where the field is not one plain schema path
OURS = {"--target-transform": "zscore", "--normalize-targets": "zscore", "--log-transform-targets": "zscore",
        "--seed": "42", "--attention-heads": "4 (targetHead: 4)", "--attention-layers": "4 (targetHead: 2)",
        "--count-embedding": "add", "--penalty": "1.0 (pretrain), 0.0 (finetune)",
        "--nuc-penalty": "1.0 (pretrain), 0.0 (finetune)", "--count-penalty": "0.0", "--count-prediction": "0.0",
        "--bounded-targets": "none", "--categorical-fusion": "concat (categoricalAt: pooled)",
        "--distributed": "none", "--data-parallel": "none", "--fsdp": "none", "--compile-model": "off",
        "--use-expandable-segments": "unset", "--device": "cpu (hardwareRef: cpu)", "--table": "(required)",
        "--model": "(initFrom required)", "--classifier": "regression"}


def reference_table_markdown() -> str:
    """docs/reference.md: reference flag -> manifest field -> reference default -> ours -> why."""
    lines = [
        "# Coming from the reference implementation",
        "",
        "Every flag of the reference's `aam pretrain`, `aam train`, `aam predict` and `aam rf-baseline`",
        "(github.com/jbk708/aam), where it lands in aam's manifests, the two defaults, and why ours",
        "differs. `aamctl convert -- aam train ...` (or `aamctl convert -f script.sh`) applies this",
        "table to a command line and prints the manifests, reproducing the reference's defaults with a",
        "comment wherever they differ from ours. The table is generated from `aamctl/convert/flags.py`",
        "(a test keeps the two equal).",
        "",
        "Launchers are read too: `torchrun --nproc_per_node N --nnodes M` (HardwareProfile",
        "devicesPerNode and nodes), `singularity`/`apptainer exec IMAGE` (container), `VAR=value`",
        "prefixes (env; names that look like secrets are left out), and in files `#SBATCH` partition,",
        "account, qos, time and nodes (the Run's SLURM executor).",
        "",
        "| flag | commands | aam field | reference default | aam default | notes |",
        "|---|---|---|---|---|---|",
    ]
    for f in FLAGS:
        cmds = ", ".join(c for c in COMMANDS if c in f.commands)
        name = f"`{f.name}`" + (f" / `{f.negation}`" if f.negation else "")
        ours = _our_default(f.field)
        ours_text = OURS.get(f.name) or (_show(ours[1]) if ours else "-")
        ref = "(required)" if f.name in REQUIRED else "off" if f.kind == "flag" else \
            "random" if f.name == "--seed" else _show(f.default)
        note = f.note.replace("|", "\\|")
        if f.choices:
            note = (note + " " if note else "") + f"Choices: {', '.join(f.choices)}."
        lines.append(f"| {name} | {cmds} | {f.field} | {ref} | {ours_text} | {note} |")
    lines += [
        "",
        "## Auxiliary losses while fine-tuning",
        "",
        "The reference keeps the UniFrac, nucleotide and count losses (weight 1 each) in `aam train`.",
        "aam's `lossWeights.unifracWhenFinetuning`, `nucleotideWhenFinetuning` and `countWhenFinetuning`",
        "default to 0; `convert` writes the reference's 1.0 so a converted run behaves as it did there.",
        "The measurement behind aam's defaults is in docs/benchmarks.md (Auxiliary losses).",
        "",
    ]
    return "\n".join(lines)
