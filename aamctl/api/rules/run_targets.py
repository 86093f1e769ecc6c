"""A Run's targets against its Dataset and Model: the several-targets form, the target head's
recipe for the target's type, an ensemble's members, categorical inputs to fuse."""
from __future__ import annotations

from aam_runtime.metric_table import METRICS, metrics_for, split_metric

from aamctl.api.resolve import Obj, Resolved, effective_model_ref, init_field, run_targets
from aamctl.api.rules.common import differs_from_default
from aamctl.api.schema import field_schema
from aamctl.errors import Diagnostic


def check_target_recipe(run: Obj, ds: Obj, model: Obj) -> list[Diagnostic]:
    """A finetune run's target against its Model's targetHead: a loss for the other kind of
    target, an activation the target's normalization contradicts, a conditioning column the
    Dataset does not have."""
    d: list[Diagnostic] = []
    s = run.spec
    targets = ds.spec["targets"]
    tname = next(iter(run_targets(s, ds.spec)), None)
    t = next((x for x in targets if x["name"] == tname), None)
    if t is None:
        return d
    th = model.spec["targetHead"]
    where = ("spec", "target") if s.get("target") else \
        ("spec", "modelRef") if s.get("modelRef") else ("spec", "initFrom", "run")
    about = f"target '{tname}' is {t['type']}, but Model '{model.name}'"
    if t["type"] == "classification":
        wrong = [k for k in ("loss", "huberDelta", "quantiles", "asymmetric", "outputActivation", "bounds",
                             "conditionalScale") if differs_from_default(model, "spec", "targetHead", k)]
        if wrong:
            named = [f"{k} {th[k]}" if isinstance(th[k], (str, int, float)) else k for k in wrong]
            d.append(run.diag(f"{about} sets targetHead.{', targetHead.'.join(named)}, which only regression uses",
                              where, hint="classification uses cross-entropy: set classWeights or labelSmoothing "
                                          "instead, or fine-tune on a regression target"))
    else:
        wrong = [k for k in ("classWeights", "labelSmoothing") if differs_from_default(model, "spec", "targetHead", k)]
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


def check_ensemble(res: Resolved, run: Obj) -> list[Diagnostic]:
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
        targets = run_targets(src.spec, res.get("Dataset", src.spec["datasetRef"]).spec)
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


def check_targets(run: Obj, ds: Obj, model: Obj | None) -> list[Diagnostic]:
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


FUSION_FIELDS = ("categoricalFusion", "categoricalAt", "categoricalEmbeddingDim")


def check_fusion_inputs(res: Resolved, run: Obj, model_ref: str | None, ds: Obj) -> list[Diagnostic]:
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
    targets = set(run_targets(s, ds.spec))
    inputs = [c for c in ds.spec["categoricalColumns"] if c not in targets]
    if inputs:
        return []
    why = "has no categoricalColumns" if not ds.spec["categoricalColumns"] else \
        f"lists only the run's target{'s' if len(targets) > 1 else ''} among its categoricalColumns"
    return [model.diag(f"Model '{model.name}' sets {', '.join(written)}, but Dataset '{ds.name}' {why}: "
                       f"run/{run.name} has no categorical input to fuse, so the setting would do nothing",
                       ("spec", written[0]),
                       hint="remove it from the Model, or add an input column to the Dataset's categoricalColumns")]
