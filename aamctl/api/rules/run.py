"""The rules of a Run: where it starts from, its model, its targets and metric, its executor
against its HardwareProfile; the recipe and target rules are in run_recipe and run_targets."""
from __future__ import annotations

from pathlib import Path

from aam_runtime.metric_table import METRICS, metrics_for, split_metric

from aamctl.api.resolve import Obj, Resolved, effective_model_ref, run_targets
from aamctl.api.rules.common import time_seconds
from aamctl.api.rules.run_recipe import check_attention, check_recipe, check_run_split
from aamctl.api.rules.run_targets import check_ensemble, check_fusion_inputs, check_target_recipe, check_targets
from aamctl.errors import Diagnostic

# Model fields a fine-tuning run may change over its pretrained model: they shape only what is
# trained afresh on top of the base (the target head, categorical conditioning, dropout)
HEAD_FIELDS = ("targetHead", "categoricalFusion", "categoricalAt", "categoricalEmbeddingDim", "dropout")


def check(res: Resolved, run: Obj) -> list[Diagnostic]:
    s = run.spec
    stage = s["stage"]
    ds = res.get("Dataset", s["datasetRef"])
    hw = res.get("HardwareProfile", s["hardwareRef"])
    init = s.get("initFrom") or {}
    model_ref = effective_model_ref(res, run)
    d = _check_init(res, run) if init else []
    d += check_run_split(run, ds)
    d += check_attention(res, run, model_ref, hw)
    d += check_fusion_inputs(res, run, model_ref, ds)
    d += _check_stage_needs(run, model_ref)
    if stage == "finetune" and init.get("run") and s.get("modelRef"):
        d += _check_model_change(res, run)
    if stage == "pretrain":
        d += _check_pretrain(run, ds)
    if stage in ("finetune", "baseline", "predict"):
        d += _check_target_named(run, ds)
    d += _check_metric(res, run, ds, model_ref)
    if s["freezeBase"] and not init:
        d.append(run.diag("freezeBase needs pretrained weights", ("spec", "freezeBase"), hint="add initFrom or remove freezeBase"))
    d.extend(check_recipe(res, run, ds))
    d += _check_outputs(run)
    if stage == "finetune" and model_ref and ("Model", model_ref) in res.objects and not s.get("targets"):
        d.extend(check_target_recipe(run, ds, res.get("Model", model_ref)))
    return d + _check_hardware(run, hw)


def _check_outputs(run: Obj) -> list[Diagnostic]:
    """spec.outputs asks only for what the run's stage writes."""
    s = run.spec
    stage, out = s["stage"], s.get("outputs") or {}
    d = []
    if out.get("embeddings") and stage not in ("pretrain", "predict"):
        d.append(run.diag(f"a {stage} run writes no embeddings", ("spec", "outputs", "embeddings"),
                          hint="ask the pretrain run for them, or a predict Run that starts from this one"))
    if out.get("errors") is not None:
        if stage == "pretrain":
            d.append(run.diag("a pretrain run predicts no target, so it has no errors to analyse",
                              ("spec", "outputs", "errors"), hint="ask a finetune, predict or baseline run"))
        elif len(s.get("targets") or []) > 1:
            d.append(run.diag("the error analysis covers runs of one target; this one has "
                              f"{len(s['targets'])}", ("spec", "outputs", "errors"),
                              hint="ask a run of one of the targets, or remove outputs.errors"))
    return d


def _check_init(res: Resolved, run: Obj) -> list[Diagnostic]:
    """initFrom: one source, of a stage the run can start from (a file that exists)."""
    d: list[Diagnostic] = []
    s = run.spec
    stage = s["stage"]
    init = s["initFrom"]
    if sum(bool(init.get(k)) for k in ("run", "runs", "checkpoint")) != 1:
        d.append(run.diag("initFrom needs exactly one of run, runs or checkpoint", ("spec", "initFrom"),
                          hint="initFrom: {run: NAME}, {runs: [NAME, NAME, ...]} (predict) or {checkpoint: PATH}"))
    elif init.get("runs"):
        d += check_ensemble(res, run)
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
    return d


def _check_stage_needs(run: Obj, model_ref: str | None) -> list[Diagnostic]:
    """What a stage cannot go without (a model, a starting point) or must go without."""
    d: list[Diagnostic] = []
    s = run.spec
    stage = s["stage"]
    init = s.get("initFrom") or {}
    if stage in ("pretrain", "finetune") and not model_ref:
        d.append(run.diag(f"a {stage} run needs a model", ("spec",),
                          hint="add spec.modelRef (finetune may also inherit it from initFrom.run)"))
    if stage == "predict" and not init:
        d.append(run.diag("a predict run needs initFrom", ("spec",),
                          hint="initFrom: {run: FINETUNE-RUN} or {checkpoint: PATH}"))
    if stage == "baseline" and init:
        d.append(run.diag("a baseline run does not start from weights", ("spec", "initFrom"), hint="remove initFrom"))
    return d


def _check_model_change(res: Resolved, run: Obj) -> list[Diagnostic]:
    """A finetune run's own modelRef over its initFrom run's Model: only the head may differ."""
    s = run.spec
    init = s["initFrom"]
    src_model = effective_model_ref(res, res.get("Run", init["run"]))
    if src_model and src_model != s["modelRef"]:
        # a different target head (or categorical conditioning) on the same base is fine: the
        # base's weights load by name and shape; anything else would silently start afresh
        base = {k: v for k, v in res.get("Model", src_model).spec.items() if k not in HEAD_FIELDS}
        mine = {k: v for k, v in res.get("Model", s["modelRef"]).spec.items() if k not in HEAD_FIELDS}
        differ = sorted(k for k in set(base) | set(mine) if base.get(k) != mine.get(k))
        if differ:
            return [run.diag(f"modelRef '{s['modelRef']}' differs from the model of initFrom run ('{src_model}') "
                             f"in {', '.join(differ)}", ("spec", "modelRef"),
                             hint="drop modelRef to inherit the pretrained model; a fine-tuning model may "
                                  f"differ only in {', '.join(HEAD_FIELDS)}")]
    return []


def _check_pretrain(run: Obj, ds: Obj) -> list[Diagnostic]:
    d: list[Diagnostic] = []
    tr = run.spec["trainer"]
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
    return d


def _check_target_named(run: Obj, ds: Obj) -> list[Diagnostic]:
    """The target a run names is one of its Dataset's (and a Dataset with none has nothing to fit)."""
    d: list[Diagnostic] = []
    s = run.spec
    stage = s["stage"]
    names = [t["name"] for t in ds.spec["targets"]]
    if s.get("target") and s["target"] not in names:
        d.append(run.diag(f"target '{s['target']}' is not a target of Dataset '{ds.name}'", ("spec", "target"),
                          hint=f"one of: {', '.join(names)}" if names else "add it to the Dataset's spec.targets"))
    elif not names and stage != "predict":
        d.append(run.diag(f"Dataset '{ds.name}' has no targets", ("spec", "datasetRef"),
                          hint="add spec.targets to the Dataset"))
    return d


def _check_metric(res: Resolved, run: Obj, ds: Obj, model_ref: str | None) -> list[Diagnostic]:
    """earlyStopping.metric: computed by the stage, for the target's type (several targets:
    named per target, see run_targets.check_targets)."""
    d: list[Diagnostic] = []
    s = run.spec
    stage = s["stage"]
    tr = s["trainer"]
    field_ = ("spec", "trainer", "earlyStopping", "metric")
    base, metric_target = split_metric(tr["earlyStopping"]["metric"])
    metric = METRICS[base]
    if s.get("targets"):
        d.extend(check_targets(run, ds, res.get("Model", model_ref) if model_ref and ("Model", model_ref)
                                in res.objects else None))
    elif metric_target:
        d.append(run.diag(f"metric '{tr['earlyStopping']['metric']}' names a target, which only a run with "
                          "spec.targets (several targets) does", field_, hint=f"use '{base}'"))
    elif stage in ("pretrain", "finetune") and stage not in metric.stages:
        d.append(run.diag(f"metric '{metric.name}' is not computed by a {stage} run", field_,
                          hint=f"use one of: {', '.join(metrics_for(stage))}"))
    elif stage == "finetune":
        tname = next(iter(run_targets(s, ds.spec)), None)
        ttype = next((t["type"] for t in ds.spec["targets"] if t["name"] == tname), None)
        if ttype and metric.target_type not in (None, ttype):
            d.append(run.diag(f"metric '{metric.name}' needs a {metric.target_type} target", field_,
                              hint=f"use one of: {', '.join(metrics_for(stage, ttype))}"))
    return d


def _check_hardware(run: Obj, hw: Obj) -> list[Diagnostic]:
    """The run against its HardwareProfile: weight averaging under FSDP, nodes and time limits."""
    d: list[Diagnostic] = []
    s = run.spec
    stage = s["stage"]
    tr = s["trainer"]
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
        if sl.get("timeLimit") and limit and time_seconds(sl["timeLimit"]) > time_seconds(limit):
            d.append(run.diag(f"timeLimit {sl['timeLimit']} exceeds the maximum {limit} of HardwareProfile '{hw.name}'",
                              ("spec", "executor", "slurm", "timeLimit"), hint=f"use at most {limit}"))
        nodes = sl.get("nodes") or hs["nodes"]
        if hs["slurm"].get("maxNodes") and nodes > hs["slurm"]["maxNodes"]:
            d.append(run.diag(f"{nodes} nodes exceed the maximum {hs['slurm']['maxNodes']} of HardwareProfile '{hw.name}'",
                              ("spec", "executor", "slurm", "nodes")))
    return d
