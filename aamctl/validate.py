"""validate: the checks a set of documents must pass before anything is planned.

`validate(docs, store)` is the controller's validation step, in three parts:
1. every document against its kind's JSON Schema, and names unique per kind;
2. resolution (resolve.py: defaults, absolute paths, references), which reports missing
   references and initFrom cycles;
3. the cross-field rules JSON Schema cannot express (this module), on the resolved objects.
Every problem of a part is reported together; a later part runs only when the earlier ones pass.
"""
from __future__ import annotations

import re

from pathlib import Path

from aam_runtime.metric_table import METRICS, metrics_for, split_metric

from .errors import AamError, Diagnostic
from .parse import Document
from .resolve import Obj, Resolved, Store, effective_model_ref, init_field, resolve, run_split
from .schema import field_schema, validate_document


# Model fields a fine-tuning run may change over its pretrained model: they shape only what is
# trained afresh on top of the base (the target head, categorical conditioning, dropout)
HEAD_FIELDS = ("targetHead", "categoricalFusion", "categoricalAt", "categoricalEmbeddingDim", "dropout")


def validate(docs: list[Document], store: Store | None = None) -> Resolved:
    """Documents -> resolved objects that pass every check; raises AamError listing all problems."""
    check_documents(docs)
    res = resolve(docs, store)
    diags = [d for obj in res.given for d in check_rules(res, obj)]
    if diags:
        raise AamError(diags)
    return res


def check_documents(docs: list[Document]) -> None:
    """Schema validity and unique names, for every document; raises AamError with all problems."""
    diags: list[Diagnostic] = []
    first: dict[tuple[str, str], Document] = {}
    for doc in docs:
        problems = validate_document(doc)
        if problems:
            diags.extend(problems)
            continue
        key = (doc.data["kind"], doc.data["metadata"]["name"])
        if key in first:
            f = first[key]
            diags.append(doc.diag(f"duplicate {key[0]} named '{key[1]}'", ("metadata", "name"),
                                  hint=f"first defined at {f.file}:{f.where(('metadata', 'name'))[0]}; "
                                       "names are unique per kind"))
            continue
        first[key] = doc
    if diags:
        raise AamError(diags)


def _time_seconds(text: str) -> int:
    """SLURM time (MM, MM:SS, HH:MM:SS, D-HH[:MM[:SS]]) -> seconds."""
    days = 0
    if "-" in text:
        d, text = text.split("-", 1)
        days = int(d)
        parts = [int(x) for x in text.split(":")] + [0, 0]
        h, m, s = parts[0], parts[1], parts[2]
    else:
        parts = [int(x) for x in text.split(":")]
        if len(parts) == 1:
            h, m, s = 0, parts[0], 0
        elif len(parts) == 2:
            h, m, s = 0, parts[0], parts[1]
        else:
            h, m, s = parts
    return ((days * 24 + h) * 60 + m) * 60 + s


# what a HardwareProfile's scratch path may name (the job script expands them on the node)
SCRATCH_VARIABLES = ("USER", "SLURM_JOB_ID", "SLURM_JOB_USER", "SLURM_ARRAY_TASK_ID")


def check_rules(res: Resolved, obj: Obj) -> list[Diagnostic]:
    """Cross-field rules that JSON Schema cannot express."""
    d: list[Diagnostic] = []
    s = obj.spec
    if obj.kind == "Dataset":
        split = s["split"]
        if bool(split.get("trainIds")) != bool(split.get("validationIds")):
            d.append(obj.diag("trainIds and validationIds go together", ("spec", "split"),
                              hint="give both files, or neither to split by validationFraction"))
        names = [t["name"] for t in s["targets"]]
        for i, t in enumerate(s["targets"]):
            if t["type"] == "classification" and t["name"] not in s["categoricalColumns"]:
                d.append(obj.diag(f"classification target '{t['name']}' is not a categorical column",
                                  ("spec", "targets", i, "name"),
                                  hint=f"add '{t['name']}' to spec.categoricalColumns"))
            by = t.get("normalizeBy")
            if by:
                at = ("spec", "targets", i, "normalizeBy")
                if t["type"] == "classification":
                    d.append(obj.diag(f"normalizeBy scales a regression target; '{t['name']}' is classification", at,
                                      hint="remove normalizeBy"))
                elif by == t["name"]:
                    d.append(obj.diag(f"target '{t['name']}' cannot be normalized by itself", at,
                                      hint="name another metadata column (a category such as site or study)"))
                elif t.get("normalize", "zscore") not in ("zscore", "minmax", "log1p_zscore", "log1p_minmax"):
                    d.append(obj.diag(f"normalizeBy needs statistics to take per category, but normalize is "
                                      f"{t.get('normalize')}", at,
                                      hint="use normalize zscore, minmax, log1p_zscore or log1p_minmax with it, or remove normalizeBy"))
            if names.count(t["name"]) > 1 and names.index(t["name"]) != i:
                d.append(obj.diag(f"target '{t['name']}' is listed twice", ("spec", "targets", i, "name")))
        if _missing_fold(split):
            d.append(obj.diag(_missing_fold(split), ("spec", "split", "fold"),
                              hint=f"use a fold from 0 to {split['folds'] - 1}, or raise spec.split.folds"))
        strat = split.get("stratifyBy")
        if strat and strat not in s["categoricalColumns"]:
            d.append(obj.diag(f"stratifyBy column '{strat}' is not a categorical column",
                              ("spec", "split", "stratifyBy"), hint=f"add '{strat}' to spec.categoricalColumns"))
    elif obj.kind == "Model":
        dim = s["embeddingDim"]
        by_default: dict[int, list[str]] = {}
        for level in ("nucleotide", "sample", "encoderHead", "targetHead"):
            heads = s[level]["heads"]
            if dim % heads == 0:
                continue
            written = obj.doc is not None and ("spec", level, "heads") in obj.doc.key_positions
            if written:
                d.append(obj.diag(f"embeddingDim {dim} is not divisible by {heads} heads",
                                  ("spec", level, "heads"), hint="choose heads that divide embeddingDim"))
            else:
                by_default.setdefault(heads, []).append(level)
        for heads, levels in by_default.items():
            d.append(obj.diag(f"embeddingDim {dim} is not divisible by {heads} heads (the default of "
                              f"{', '.join(levels)})", ("spec", "embeddingDim"),
                              hint=f"use a multiple of {heads}, or set heads for those levels"))
        d.extend(_check_target_head(obj))
    elif obj.kind == "HardwareProfile":
        total = s["nodes"] * s["devicesPerNode"]
        if s["strategy"] == "fsdp" and total < 2:
            d.append(obj.diag("strategy fsdp needs more than one device", ("spec", "strategy"),
                              hint="use strategy none for a single device, or raise devicesPerNode/nodes"))
        if s["strategy"] == "fsdp" and s["accelerator"] == "cpu":
            # accelerate turns FSDP on only for GPU-like distributed types (AcceleratorState: the
            # FSDP branch sits under MULTI_GPU/NPU/XPU/...), so on CPU it would silently train as DDP
            d.append(obj.diag("strategy fsdp needs GPUs: on CPU accelerate would silently train as ddp",
                              ("spec", "strategy"), hint="use strategy ddp on CPU (each process holds the whole model)"))
        if s["strategy"] == "none" and total > 1:
            d.append(obj.diag(f"{total} devices but strategy none", ("spec", "strategy"),
                              hint="use ddp (or fsdp) to train on several devices"))
        if s["accelerator"] == "cpu" and s["precision"] == "fp16":
            d.append(obj.diag("fp16 is not supported on CPU", ("spec", "precision"), hint="use bf16 or no"))
        if s["accelerator"] == "rocm" and s["compileAllowed"]:
            d.append(obj.diag("torch.compile fails on ROCm (inductor type error)", ("spec", "compileAllowed"),
                              hint="set compileAllowed: false"))
        if s["attentionBackend"] == "flash" and s["accelerator"] != "cpu":
            d.append(obj.diag(_FLASH_NO_MASK.format(acc=s["accelerator"]), ("spec", "attentionBackend"),
                              hint="use auto (torch picks the fastest kernel that takes the mask), mem_efficient or math"))
        elif s["attentionBackend"] == "flash":
            d.append(obj.diag("flash attention is not available on cpu", ("spec", "attentionBackend"),
                              hint="use auto, math or mem_efficient"))
        scratch = s.get("scratch")
        if scratch:
            unknown = sorted(set(re.findall(r"\$([A-Za-z_0-9]*)", scratch)) - set(SCRATCH_VARIABLES))
            if unknown:
                d.append(obj.diag(f"scratch {scratch!r} uses ${unknown[0]}; the job expands only "
                                  + ", ".join("$" + v for v in SCRATCH_VARIABLES), ("spec", "scratch"),
                                  hint="write the rest of the path literally (e.g. /scratch/$USER/job_$SLURM_JOB_ID)"))
            if "/.." in scratch or "/./" in scratch or scratch.rstrip("/").count("/") < 2:
                d.append(obj.diag(f"scratch {scratch!r} must be a folder of its own, at least two levels deep, "
                                  "without . or .. (the job removes it when it ends)", ("spec", "scratch"),
                                  hint="e.g. /scratch/$USER/job_$SLURM_JOB_ID"))
            elif "$SLURM_JOB_ID" not in scratch:
                d.append(obj.diag(f"scratch {scratch!r} does not contain $SLURM_JOB_ID: two jobs on one node would "
                                  "share it, and each removes it when it ends", ("spec", "scratch"),
                                  hint="add $SLURM_JOB_ID to the path, e.g. /scratch/$USER/job_$SLURM_JOB_ID"))
        lim = s["slurm"]
        if lim.get("maxTimeLimit") and _time_seconds(lim["defaultTimeLimit"]) > _time_seconds(lim["maxTimeLimit"]):
            d.append(obj.diag("defaultTimeLimit exceeds maxTimeLimit", ("spec", "slurm", "defaultTimeLimit")))
        if lim.get("maxNodes") and s["nodes"] > lim["maxNodes"]:
            d.append(obj.diag(f"nodes {s['nodes']} exceeds maxNodes {lim['maxNodes']}", ("spec", "nodes")))
    elif obj.kind == "Run":
        d.extend(_check_run(res, obj))
    elif obj.kind == "Sweep":
        from .sweep import check_sweep
        d.extend(check_sweep(res, obj))
    return d


def _set(obj: Obj, *path) -> bool:
    """Does this field differ from the schema's default? (Not "was it written": a record writes
    every default out, and must validate exactly as its manifest did.)"""
    value = obj.spec
    for key in path[1:]:
        value = (value or {}).get(key)
    node = field_schema(obj.kind, tuple(path)) or {}
    default = node.get("default")
    if isinstance(default, dict) and isinstance(value, dict):
        sub = {k: (node.get("properties") or {}).get(k, {}).get("default") for k in value}
        return any(value[k] != sub.get(k) for k in value)
    return value != default


# targetHead fields that only mean something with one loss or activation: written with another,
# they would be silently ignored
_LOSS_ONLY = {"huberDelta": ("huber",), "quantiles": ("quantile",), "asymmetric": ("asymmetric",)}


def _check_target_head(obj: Obj) -> list[Diagnostic]:
    """targetHead options that contradict each other, on the Model alone."""
    d: list[Diagnostic] = []
    th = obj.spec["targetHead"]
    at = ("spec", "targetHead")
    q = th.get("quantiles") or []
    if any(b <= a for a, b in zip(q, q[1:])):
        d.append(obj.diag(f"quantiles must increase, found {q}", (*at, "quantiles"),
                          hint=f"write them in order: {sorted(set(q))}"))
    for key, losses in _LOSS_ONLY.items():
        if _set(obj, *at, key) and th["loss"] not in losses:
            d.append(obj.diag(f"{key} is used by loss {losses[0]}, but the loss is {th['loss']}", (*at, key),
                              hint=f"set loss: {losses[0]}, or remove {key}"))
    if th.get("residual") and not th.get("hidden"):
        d.append(obj.diag("residual needs an MLP to go around (hidden is empty)", (*at, "residual"),
                          hint="give hidden widths, e.g. hidden: [64, 32], or remove residual"))
    if th.get("hiddenDropout") is not None and not th.get("hidden"):
        d.append(obj.diag("hiddenDropout acts between hidden layers, but hidden is empty", (*at, "hiddenDropout"),
                          hint="give hidden widths, or remove hiddenDropout"))
    if obj.spec.get("categoricalAt") == "asvs" and obj.spec["categoricalFusion"] in ("gated", "gmu", "cross-attention"):
        why = "attends per ASV position already" if obj.spec["categoricalFusion"] == "cross-attention" else \
            "gates the pooled vector"
        d.append(obj.diag(f"categoricalAt asvs applies to concat, add and film; {obj.spec['categoricalFusion']} {why}",
                          ("spec", "categoricalAt"), hint="remove categoricalAt, or use concat, add or film"))
    b = th.get("bounds") or {}
    if (b.get("min") is not None or b.get("max") is not None) and th.get("outputActivation") != "bounded":
        d.append(obj.diag(f"bounds apply to outputActivation bounded, but it is {th.get('outputActivation')}",
                          (*at, "bounds"), hint="set outputActivation: bounded, or remove bounds"))
    elif b.get("min") is not None and b.get("max") is not None and b["min"] >= b["max"]:
        d.append(obj.diag(f"bounds.min {b['min']:g} is not below bounds.max {b['max']:g}", (*at, "bounds", "min")))
    return d


def _check_target_recipe(run: Obj, ds: Obj, model: Obj) -> list[Diagnostic]:
    """A finetune run's target against its Model's targetHead: a loss for the other kind of
    target, an activation the target's normalization contradicts, a conditioning column the
    Dataset does not have."""
    d: list[Diagnostic] = []
    s = run.spec
    targets = ds.spec["targets"]
    tname = s.get("target") or (targets[0]["name"] if targets else None)
    t = next((x for x in targets if x["name"] == tname), None)
    if t is None:
        return d
    th = model.spec["targetHead"]
    where = ("spec", "target") if s.get("target") else \
        ("spec", "modelRef") if s.get("modelRef") else ("spec", "initFrom", "run")
    about = f"target '{tname}' is {t['type']}, but Model '{model.name}'"
    if t["type"] == "classification":
        wrong = [k for k in ("loss", "huberDelta", "quantiles", "asymmetric", "outputActivation", "bounds",
                             "conditionalScale") if _set(model, "spec", "targetHead", k)]
        if wrong:
            named = [f"{k} {th[k]}" if isinstance(th[k], (str, int, float)) else k for k in wrong]
            d.append(run.diag(f"{about} sets targetHead.{', targetHead.'.join(named)}, which only regression uses",
                              where, hint="classification uses cross-entropy: set classWeights or labelSmoothing "
                                          "instead, or fine-tune on a regression target"))
    else:
        wrong = [k for k in ("classWeights", "labelSmoothing") if _set(model, "spec", "targetHead", k)]
        if wrong:
            d.append(run.diag(f"{about} sets targetHead.{', targetHead.'.join(wrong)}, which only classification uses",
                              where, hint="remove them, or fine-tune on a classification target"))
        act, norm = th.get("outputActivation", "none"), t.get("normalize", "none")
        if act in ("softplus", "relu", "exp") and norm in ("zscore", "log1p_zscore"):
            d.append(run.diag(f"Model '{model.name}' keeps outputs non-negative (outputActivation {act}), but target "
                              f"'{tname}' is normalized by {norm}, which makes about half the training targets negative",
                              where, hint="use normalize none, minmax or log1p on the target, or outputActivation "
                                          "bounded (or none)"))
        col = th.get("conditionalScale")
        if col and (col not in ds.spec["categoricalColumns"] or col == tname):
            why = "is the target itself" if col == tname else f"is not a categorical column of Dataset '{ds.name}'"
            d.append(run.diag(f"Model '{model.name}' scales its output per category of '{col}' (conditionalScale), "
                              f"which {why}", where,
                              hint=f"add '{col}' to the Dataset's categoricalColumns, or name one of: "
                                   f"{', '.join(c for c in ds.spec['categoricalColumns'] if c != tname) or 'none'}"))
    return d


def _finetune_targets(res: Resolved, run: Obj) -> list[str]:
    """The target column(s) a finetune Run's head predicts."""
    s = run.spec
    if s.get("targets"):
        return [t["name"] for t in s["targets"]]
    if s.get("target"):
        return [s["target"]]
    declared = res.get("Dataset", s["datasetRef"]).spec.get("targets") or []
    return [declared[0]["name"]] if declared else []


def _check_ensemble(res: Resolved, run: Obj) -> list[Diagnostic]:
    """initFrom.runs: a predict run only, over finetune runs that predict the same target(s)."""
    s = run.spec
    if s["stage"] != "predict":
        return [run.diag(f"initFrom.runs (an ensemble) is for predict runs; a {s['stage']} run starts from one run",
                         ("spec", "initFrom", "runs"), hint="initFrom: {run: NAME}")]
    d: list[Diagnostic] = []
    first = None
    for name in s["initFrom"]["runs"]:
        src = res.get("Run", name)
        if src.spec["stage"] != "finetune":
            d.append(run.diag(f"initFrom.runs: '{name}' is a {src.spec['stage']} run", init_field(s, name),
                              hint="an ensemble averages finetune runs that predict the same target"))
            continue
        targets = _finetune_targets(res, src)
        model_ref = effective_model_ref(res, src)
        th = res.get("Model", model_ref).spec.get("targetHead", {}) if model_ref else {}
        levels = list(th.get("quantiles") or [0.5]) if th.get("loss") == "quantile" else []
        if first is None:
            first = (name, targets, levels)
        elif levels != first[2]:
            desc = lambda q: f"quantiles {', '.join(f'{x:g}' for x in q)}" if q else "one value"  # noqa: E731
            d.append(run.diag(f"initFrom.runs: '{name}' predicts {desc(levels)}, but '{first[0]}' predicts "
                              f"{desc(first[2])}", init_field(s, name),
                              hint="average runs whose Models share targetHead.loss and quantiles"))
        elif targets != first[1]:
            d.append(run.diag(f"initFrom.runs: '{name}' predicts {', '.join(targets) or 'nothing'}, but "
                              f"'{first[0]}' predicts {', '.join(first[1])}", init_field(s, name),
                              hint="every run of an ensemble predicts the same target(s), in the same order"))
    return d


def _check_targets(run: Obj, ds: Obj, model: Obj | None) -> list[Diagnostic]:
    """spec.targets (several targets): finetune only, instead of target, each a target of the
    Dataset once; per-target losses for regression only; a head every target can share; the
    best metric names one of them."""
    d: list[Diagnostic] = []
    s = run.spec
    at = ("spec", "targets")
    if s["stage"] != "finetune":
        return [run.diag(f"targets is for finetune runs; a {s['stage']} run takes one target", at,
                         hint="use spec.target (predict reads the targets from the checkpoint)")]
    if s.get("target"):
        d.append(run.diag("target and targets are both set", ("spec", "target"),
                          hint="list every column in targets, and remove target"))
    declared = {t["name"]: t for t in ds.spec["targets"]}
    seen: set = set()
    for i, t in enumerate(s["targets"]):
        if t["name"] not in declared:
            d.append(run.diag(f"'{t['name']}' is not a target of Dataset '{ds.name}'", (*at, i, "name"),
                              hint=f"one of: {', '.join(declared) or 'none (add spec.targets to the Dataset)'}"))
        elif t["name"] in seen:
            d.append(run.diag(f"'{t['name']}' is listed twice", (*at, i, "name")))
        elif t.get("loss") and declared[t["name"]]["type"] == "classification":
            d.append(run.diag(f"'{t['name']}' is a classification target, which uses cross-entropy, not "
                              f"{t['loss']}", (*at, i, "loss"), hint="remove loss (classWeights and labelSmoothing "
                                                                    "on the Model's targetHead tune it)"))
        seen.add(t["name"])
    if s["targets"] and all(t.get("weight", 1.0) == 0 for t in s["targets"]):
        d.append(run.diag("every target's weight is 0: the run would train nothing", at,
                          hint="give at least one target a positive weight (weight 0 reports a target's "
                               "metrics without training on it)"))
    if model is not None:
        th = model.spec["targetHead"]
        for key, bad in (("loss", "quantile"), ("outputActivation", "bounded"), ("outputActivation", "softplus"),
                         ("outputActivation", "relu"), ("outputActivation", "exp")):
            if th.get(key) == bad:
                d.append(run.diag(f"Model '{model.name}' sets targetHead.{key} {bad}, which one head shared by "
                                  "several targets cannot apply (it would reach every target's outputs)", at,
                                  hint=f"remove targetHead.{key} from the Model, or fine-tune one target per Run"))
        col = th.get("conditionalScale")
        if col and col in seen:
            d.append(run.diag(f"Model '{model.name}' scales outputs per category of '{col}', which is one of the "
                              "targets", at, hint="name another categorical column in conditionalScale"))
    field_ = ("spec", "trainer", "earlyStopping", "metric")
    name = s["trainer"]["earlyStopping"]["metric"]
    base, target = split_metric(name)
    if base != "val_loss":
        kinds = {t["name"]: declared[t["name"]]["type"] for t in s["targets"] if t["name"] in declared}
        choices = [f"{m}:{n}" for n, k in kinds.items() for m in metrics_for("finetune", k) if m != "val_loss"]
        if target is None or target not in kinds or METRICS[base].target_type != kinds[target]:
            why = "must name its target" if target is None else \
                f"names '{target}', which is not one of the targets" if target not in kinds else \
                f"needs a {METRICS[base].target_type} target, and '{target}' is {kinds[target]}"
            d.append(run.diag(f"metric '{name}' {why}", field_,
                              hint=f"use val_loss (the weighted sum) or one of: {', '.join(choices[:8])}"))
    return d


def _check_recipe(res: Resolved, run: Obj, ds: Obj) -> list[Diagnostic]:
    """Recipe fields that make no sense together (issue: every option rejects nonsense)."""
    d: list[Diagnostic] = []
    s = run.spec
    stage = s["stage"]
    tr = s["trainer"]
    lw = tr["lossWeights"]
    if s.get("unfreezeBaseAfterEpochs") and not s["freezeBase"]:
        d.append(run.diag("unfreezeBaseAfterEpochs needs freezeBase: true", ("spec", "unfreezeBaseAfterEpochs"),
                          hint="set freezeBase: true (frozen for N epochs, then unfrozen), or remove unfreezeBaseAfterEpochs"))
    if tr["batchSize"] == "auto" and stage not in ("pretrain", "finetune"):
        d.append(run.diag(f"batchSize auto searches a training batch; a {stage} run trains nothing",
                          ("spec", "trainer", "batchSize"), hint="give a number (predict batches only bound memory)"))
    if tr["gradientAccumulation"] == "auto" and not tr.get("effectiveBatchSize"):
        d.append(run.diag("gradientAccumulation auto needs trainer.effectiveBatchSize (samples per optimizer step)",
                          ("spec", "trainer", "gradientAccumulation"), hint="add effectiveBatchSize: 256, or give a number"))
    if tr.get("effectiveBatchSize") and tr["gradientAccumulation"] != "auto":
        d.append(run.diag("effectiveBatchSize is used by gradientAccumulation: auto only",
                          ("spec", "trainer", "effectiveBatchSize"),
                          hint="set gradientAccumulation: auto, or remove effectiveBatchSize"))
    if stage == "finetune" and lw.get("unifracWhenFinetuning", 0) > 0 and tr["batchSize"] != "auto":
        if tr["batchSize"] < 2 or tr["batchSize"] % 2:
            d.append(run.diag(f"the UniFrac loss needs an even batch size of at least 2, found {tr['batchSize']}",
                              ("spec", "trainer", "batchSize"), hint="pairs of samples are compared; use 8, 16, 32..."))
        if not ds.spec.get("tree") and not ds.spec.get("distanceMatrix"):
            d.append(run.diag(f"lossWeights.unifracWhenFinetuning needs UniFrac distances, but Dataset '{ds.name}' has "
                              "neither tree nor distanceMatrix", ("spec", "trainer", "lossWeights", "unifracWhenFinetuning"),
                              hint="add spec.tree or spec.distanceMatrix to the Dataset, or set it to 0"))
    rates = tr.get("learningRates") or {}
    if stage == "pretrain":
        for group in ("head", "categorical"):
            if rates.get(group) is not None:
                d.append(run.diag(f"a pretrain run has no {group} parameters to give a learning rate",
                                  ("spec", "trainer", "learningRates", group),
                                  hint="remove it (pretraining trains the base only), or set it on the finetune run"))
    if stage == "finetune" and rates.get("categorical") is not None and not ds.spec.get("categoricalColumns"):
        d.append(run.diag(f"learningRates.categorical is set, but Dataset '{ds.name}' has no categoricalColumns",
                          ("spec", "trainer", "learningRates", "categorical"),
                          hint="add spec.categoricalColumns to the Dataset, or remove the rate"))
    if stage == "finetune" and rates.get("base") is not None and s["freezeBase"] and not s.get("unfreezeBaseAfterEpochs"):
        d.append(run.diag("learningRates.base is set, but freezeBase keeps the base frozen throughout",
                          ("spec", "trainer", "learningRates", "base"),
                          hint="add unfreezeBaseAfterEpochs: N to unfreeze it after N epochs, or remove the rate"))
    if tr.get("ema") is not None and stage not in ("pretrain", "finetune"):
        d.append(run.diag(f"trainer.ema averages the weights of a training run; a {stage} run trains nothing",
                          ("spec", "trainer", "ema"),
                          hint="remove it here, and set it on the finetune (or pretrain) run this one starts from"))
    opt = tr.get("optimizer") or {}
    if opt.get("nesterov") and (opt.get("type") != "sgd" or not opt.get("momentum")):
        d.append(run.diag("nesterov needs optimizer type sgd with momentum > 0", ("spec", "trainer", "optimizer", "nesterov"),
                          hint="set type: sgd and momentum: 0.9, or remove nesterov"))
    prof = tr.get("profile")
    if prof and prof["steps"][0] > prof["steps"][1]:
        d.append(run.diag(f"profile.steps {prof['steps']}: the first step comes after the last",
                          ("spec", "trainer", "profile", "steps"), hint=f"write [{prof['steps'][1]}, {prof['steps'][0]}]"))
    if prof and tr.get("maxSteps") and prof["steps"][0] > tr["maxSteps"]:
        d.append(run.diag(f"profile.steps {prof['steps']} starts after the run's last step (maxSteps "
                          f"{tr['maxSteps']}): nothing would be profiled", ("spec", "trainer", "profile", "steps"),
                          hint=f"profile steps within 1..{tr['maxSteps']}, e.g. [{min(5, tr['maxSteps'])}, "
                               f"{min(8, tr['maxSteps'])}]"))
    random_asvs = ds.spec.get("asvSelection") == "random"
    if tr.get("validationPasses", 1) > 1 and not random_asvs:
        d.append(run.diag(f"validationPasses {tr['validationPasses']} needs Dataset '{ds.name}' with asvSelection: random "
                          f"(with {ds.spec.get('asvSelection')} every pass sees the same ASVs)",
                          ("spec", "trainer", "validationPasses"), hint="set asvSelection: random, or validationPasses: 1"))
    passes = (s.get("prediction") or {}).get("passes", 1)
    if passes > 1 and (stage != "predict" or not random_asvs):
        why = "only predict runs use it" if stage != "predict" else \
            f"Dataset '{ds.name}' selects ASVs by {ds.spec.get('asvSelection')}, so every pass is the same"
        d.append(run.diag(f"prediction.passes {passes}: {why}", ("spec", "prediction", "passes"),
                          hint="use asvSelection: random on the predict run's Dataset, or passes: 1"))
    return d


def _check_run_split(run: Obj, ds: Obj) -> list[Diagnostic]:
    """A Run's spec.split changes its Dataset's split: it must make sense on top of it."""
    over = run_split(run.spec)
    if not over:
        return []
    d: list[Diagnostic] = []
    base = ds.spec["split"]
    if base.get("trainIds"):
        d.append(run.diag(f"Dataset '{ds.name}' splits by id files (spec.split.trainIds), which a Run's "
                          "spec.split cannot change", ("spec", "split"),
                          hint="remove the Run's spec.split, or split the Dataset by validationFraction or folds"))
        return d
    eff = {**base, **over}
    if "fold" in over and not eff.get("folds"):
        d.append(run.diag(f"fold {over['fold']} needs folds, and Dataset '{ds.name}' does not split "
                          "into folds", ("spec", "split", "fold"),
                          hint="add folds (here or in the Dataset's spec.split), e.g. split: {folds: 5, fold: 0}"))
    elif _missing_fold(eff):
        at = ("spec", "split", "fold") if "fold" in over else ("spec", "split", "folds")
        d.append(run.diag(_missing_fold(eff), at, hint=f"use a fold from 0 to {eff['folds'] - 1}"))
    return d


def _missing_fold(split: dict) -> str | None:
    """What is wrong when a split's fold is not one of its folds; None when it is (or no folds)."""
    folds, fold = split.get("folds"), split.get("fold", 0)
    if folds and fold >= folds:
        return f"fold {fold} does not exist: {folds} folds are numbered 0 to {folds - 1}"
    return None


# torch's SDPA: the flash kernel's CUDA/ROCm constraints refuse any attn_mask (sdp_utils
# check_for_attn_mask), so pinned to flash the first masked step would fail with "No available kernel"
_FLASH_NO_MASK = ("SDPA's flash kernel on {acc} takes no attention mask, and AAM masks the padding of every "
                  "batch: the first training step would fail")


def _check_attention(res: Resolved, run: Obj, model_ref: str | None, hw: Obj) -> list[Diagnostic]:
    """A Model pinned to flash attention on a GPU profile (the profile's own flash is its rule)."""
    if not model_ref or ("Model", model_ref) not in res.objects or hw.spec["accelerator"] == "cpu":
        return []
    if res.get("Model", model_ref).spec.get("attentionBackend") != "flash":
        return []
    field = ("spec", "modelRef") if run.spec.get("modelRef") else ("spec", "hardwareRef")
    return [run.diag(_FLASH_NO_MASK.format(acc=hw.spec["accelerator"]) + f" (Model '{model_ref}' sets "
                     f"attentionBackend: flash; HardwareProfile '{hw.name}' is {hw.spec['accelerator']})", field,
                     hint="set the Model's attentionBackend to auto (the profile then decides) or mem_efficient")]


FUSION_FIELDS = ("categoricalFusion", "categoricalAt", "categoricalEmbeddingDim")


def _check_fusion_inputs(res: Resolved, run: Obj, model_ref: str | None, ds: Obj) -> list[Diagnostic]:
    """A fine-tune whose Model says how to fuse categorical inputs, on data that has none (every
    categorical column is a target of the run, or there is none): the setting would do nothing."""
    s = run.spec
    if s["stage"] != "finetune" or not model_ref or ("Model", model_ref) not in res.objects:
        return []
    model = res.get("Model", model_ref)
    # set to something other than its default (a record or a sweep's derived Model writes every
    # default out, and a default does nothing either way)
    written = [f for f in FUSION_FIELDS if f in model.spec and
               model.spec[f] != (field_schema("Model", ("spec", f)) or {}).get("default")]
    if not written:
        return []
    targets = {t["name"] for t in s.get("targets") or []} or \
        {s.get("target") or (ds.spec["targets"][0]["name"] if ds.spec["targets"] else None)}
    inputs = [c for c in ds.spec["categoricalColumns"] if c not in targets]
    if inputs:
        return []
    why = "has no categoricalColumns" if not ds.spec["categoricalColumns"] else \
        f"lists only the run's target{'s' if len(targets) > 1 else ''} among its categoricalColumns"
    return [model.diag(f"Model '{model.name}' sets {', '.join(written)}, but Dataset '{ds.name}' {why}: "
                       f"run/{run.name} has no categorical input to fuse, so the setting would do nothing",
                       ("spec", written[0]),
                       hint="remove it from the Model, or add an input column to the Dataset's categoricalColumns")]


def _check_run(res: Resolved, run: Obj) -> list[Diagnostic]:
    d: list[Diagnostic] = []
    s = run.spec
    stage = s["stage"]
    ds = res.get("Dataset", s["datasetRef"])
    hw = res.get("HardwareProfile", s["hardwareRef"])
    tr = s["trainer"]
    init = s.get("initFrom") or {}
    if init:
        if sum(bool(init.get(k)) for k in ("run", "runs", "checkpoint")) != 1:
            d.append(run.diag("initFrom needs exactly one of run, runs or checkpoint", ("spec", "initFrom"),
                              hint="initFrom: {run: NAME}, {runs: [NAME, NAME, ...]} (predict) or {checkpoint: PATH}"))
        elif init.get("runs"):
            d += _check_ensemble(res, run)
        elif init.get("run"):
            src = res.get("Run", init["run"])
            if src.spec["stage"] not in ("pretrain", "finetune"):
                d.append(run.diag(f"initFrom run '{src.name}' is a {src.spec['stage']} run",
                                  ("spec", "initFrom", "run"), hint="start from a pretrain or finetune run"))
            if stage == "predict" and src.spec["stage"] != "finetune":
                d.append(run.diag("predict needs a finetune run to start from", ("spec", "initFrom", "run"),
                                  hint="point initFrom.run at the finetune run whose head predicts the target"))
        elif init.get("checkpoint") and not Path(init["checkpoint"]).exists() and run.source == "file":
            d.append(run.diag(f"checkpoint not found: {init['checkpoint']}", ("spec", "initFrom", "checkpoint")))
    d += _check_run_split(run, ds)
    model_ref = effective_model_ref(res, run)
    d += _check_attention(res, run, model_ref, hw)
    d += _check_fusion_inputs(res, run, model_ref, ds)
    if stage in ("pretrain", "finetune") and not model_ref:
        d.append(run.diag(f"a {stage} run needs a model", ("spec",),
                          hint="add spec.modelRef (finetune may also inherit it from initFrom.run)"))
    if stage == "predict" and not init:
        d.append(run.diag("a predict run needs initFrom", ("spec",),
                          hint="initFrom: {run: FINETUNE-RUN} or {checkpoint: PATH}"))
    if stage == "baseline" and init:
        d.append(run.diag("a baseline run does not start from weights", ("spec", "initFrom"), hint="remove initFrom"))
    if stage == "finetune" and init.get("run") and s.get("modelRef"):
        src_model = effective_model_ref(res, res.get("Run", init["run"]))
        if src_model and src_model != s["modelRef"]:
            # a different target head (or categorical conditioning) on the same base is fine: the
            # base's weights load by name and shape; anything else would silently start afresh
            base = {k: v for k, v in res.get("Model", src_model).spec.items() if k not in HEAD_FIELDS}
            mine = {k: v for k, v in res.get("Model", s["modelRef"]).spec.items() if k not in HEAD_FIELDS}
            differ = sorted(k for k in set(base) | set(mine) if base.get(k) != mine.get(k))
            if differ:
                d.append(run.diag(f"modelRef '{s['modelRef']}' differs from the model of initFrom run ('{src_model}') "
                                  f"in {', '.join(differ)}", ("spec", "modelRef"),
                                  hint="drop modelRef to inherit the pretrained model; a fine-tuning model may "
                                       f"differ only in {', '.join(HEAD_FIELDS)}"))
    if stage == "pretrain":
        uw = tr["lossWeights"]["unifrac"]
        if uw > 0:
            if tr["batchSize"] != "auto" and (tr["batchSize"] < 2 or tr["batchSize"] % 2):
                d.append(run.diag(f"UniFrac pretraining needs an even batch size of at least 2, found {tr['batchSize']}",
                                  ("spec", "trainer", "batchSize"), hint="pairs of samples are compared; use 8, 16, 32..."))
            if not ds.spec.get("tree") and not ds.spec.get("distanceMatrix"):
                d.append(run.diag(f"Dataset '{ds.name}' has neither tree nor distanceMatrix",
                                  ("spec", "datasetRef"),
                                  hint="add spec.tree or spec.distanceMatrix to the Dataset, or set lossWeights.unifrac: 0"))
        if uw == 0 and tr["lossWeights"]["nucleotide"] == 0 and tr["lossWeights"]["count"] == 0:
            d.append(run.diag("every pretraining loss weight is 0", ("spec", "trainer", "lossWeights"),
                              hint="give unifrac or nucleotide a positive weight"))
    if stage in ("finetune", "baseline", "predict"):
        names = [t["name"] for t in ds.spec["targets"]]
        if s.get("target") and s["target"] not in names:
            d.append(run.diag(f"target '{s['target']}' is not a target of Dataset '{ds.name}'", ("spec", "target"),
                              hint=f"one of: {', '.join(names)}" if names else "add it to the Dataset's spec.targets"))
        elif not names and stage != "predict":
            d.append(run.diag(f"Dataset '{ds.name}' has no targets", ("spec", "datasetRef"),
                              hint="add spec.targets to the Dataset"))
    field_ = ("spec", "trainer", "earlyStopping", "metric")
    base, metric_target = split_metric(tr["earlyStopping"]["metric"])
    metric = METRICS[base]
    if s.get("targets"):
        d.extend(_check_targets(run, ds, res.get("Model", model_ref) if model_ref and ("Model", model_ref)
                                in res.objects else None))
    elif metric_target:
        d.append(run.diag(f"metric '{tr['earlyStopping']['metric']}' names a target, which only a run with "
                          "spec.targets (several targets) does", field_, hint=f"use '{base}'"))
    elif stage in ("pretrain", "finetune") and stage not in metric.stages:
        d.append(run.diag(f"metric '{metric.name}' is not computed by a {stage} run", field_,
                          hint=f"use one of: {', '.join(metrics_for(stage))}"))
    elif stage == "finetune":
        tname = s.get("target") or (ds.spec["targets"][0]["name"] if ds.spec["targets"] else None)
        ttype = next((t["type"] for t in ds.spec["targets"] if t["name"] == tname), None)
        if ttype and metric.target_type not in (None, ttype):
            d.append(run.diag(f"metric '{metric.name}' needs a {metric.target_type} target", field_,
                              hint=f"use one of: {', '.join(metrics_for(stage, ttype))}"))
    if s["freezeBase"] and not init:
        d.append(run.diag("freezeBase needs pretrained weights", ("spec", "freezeBase"), hint="add initFrom or remove freezeBase"))
    d.extend(_check_recipe(res, run, ds))
    if stage == "finetune" and model_ref and ("Model", model_ref) in res.objects and not s.get("targets"):
        d.extend(_check_target_recipe(run, ds, res.get("Model", model_ref)))
    ex = s["executor"]
    hs = hw.spec
    if tr.get("ema") is not None and stage in ("pretrain", "finetune") and hs["strategy"] == "fsdp":
        d.append(run.diag(f"trainer.ema cannot average weights that HardwareProfile '{hw.name}' shards (strategy fsdp)",
                          ("spec", "trainer", "ema"),
                          hint="use a profile with strategy ddp, or set trainer.ema: null"))
    if ex["type"] == "local" and hs["nodes"] > 1:
        d.append(run.diag(f"HardwareProfile '{hw.name}' spans {hs['nodes']} nodes; the local executor runs on one machine",
                          ("spec", "executor", "type"), hint="use executor type slurm"))
    if ex["type"] == "slurm":
        sl = ex["slurm"]
        limit = hs["slurm"].get("maxTimeLimit")
        if sl.get("timeLimit") and limit and _time_seconds(sl["timeLimit"]) > _time_seconds(limit):
            d.append(run.diag(f"timeLimit {sl['timeLimit']} exceeds the maximum {limit} of HardwareProfile '{hw.name}'",
                              ("spec", "executor", "slurm", "timeLimit"), hint=f"use at most {limit}"))
        nodes = sl.get("nodes") or hs["nodes"]
        if hs["slurm"].get("maxNodes") and nodes > hs["slurm"]["maxNodes"]:
            d.append(run.diag(f"{nodes} nodes exceed the maximum {hs['slurm']['maxNodes']} of HardwareProfile '{hw.name}'",
                              ("spec", "executor", "slurm", "nodes")))
    return d

