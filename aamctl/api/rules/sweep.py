"""The rules of a Sweep: everything about it that can be known before a trial starts. Its trials
are judged as Runs by the whole validation (handed in by the dispatcher, which calls this), with
each value of each parameter tried."""
from __future__ import annotations

import copy
import difflib
import json
import re
from typing import Callable

from aam_runtime.metric_table import METRICS, metrics_for, split_metric

from aamctl.api.resolve import Obj, Resolved
from aamctl.api.schema import allowed_fields, field_schema
from aamctl.api.sweepspace import (CHECK_VALUES, NOT_SWEEPABLE, Param, as_documents, base_model, grid_size, lookup,
                                   parameters, template_spec, trial_manifests, trial_name)
from aamctl.errors import AamError, Diagnostic

Validate = Callable  # (documents, store) -> Resolved, raising AamError: the whole validation step


class _Lookup:
    """References of trial documents: the objects being applied, then the store."""

    def __init__(self, res: Resolved):
        self.res = res

    def get_object(self, kind, name):
        return lookup(self.res, kind, name)


def check(res: Resolved, sweep: Obj, validate: Validate) -> list[Diagnostic]:
    s = sweep.spec
    if (s.get("template") is None) == (s.get("runRef") is None):
        return [sweep.diag("a Sweep needs exactly one of template or runRef", ("spec",),
                           hint="template: {stage: finetune, ...} (a Run spec), or runRef: NAME of a Run")]
    if s.get("runRef") and lookup(res, "Run", s["runRef"]) is None:
        return [sweep.diag(f"Run '{s['runRef']}' not found", ("spec", "runRef"),
                           hint="apply it first or pass its file with -f")]
    d = _check_names(res, sweep)
    template = template_spec(res, sweep)
    if template.get("stage") not in ("pretrain", "finetune"):
        return d + [sweep.diag(f"a {template.get('stage')} run has no validation to judge a trial by",
                               ("spec", "template", "stage") if s.get("template") else ("spec", "runRef"),
                               hint="sweep a pretrain or finetune run")]
    d += _check_metric_stage(sweep, template) + _overlapping_paths(sweep)
    model = base_model(res, template)
    d = d or _check_paths(sweep, model)
    if d:
        return d
    params = parameters(s)
    d = _check_range_types(params, sweep) or _check_objective(res, sweep, template, validate) or \
        _check_values(res, sweep, template, params, model, validate)
    if d:
        return d
    return _check_budget(sweep, template, params)


def _check_names(res: Resolved, sweep: Obj) -> list[Diagnostic]:
    s = sweep.spec
    d = []
    longest = len(trial_name(sweep.name, max(s["maxTrials"] - 1, 0)))
    if longest > 63:
        d.append(sweep.diag(f"trial names like '{trial_name(sweep.name, s['maxTrials'] - 1)}' exceed 63 characters",
                            ("metadata", "name"), hint=f"shorten the sweep's name to at most "
                                                       f"{63 - (longest - len(sweep.name))} characters"))
    return d + _trial_name_collisions(res, sweep)


def _check_metric_stage(sweep: Obj, template: dict) -> list[Diagnostic]:
    metric = METRICS[split_metric(sweep.spec["objective"]["metric"])[0]]
    if template["stage"] not in metric.stages:
        return [sweep.diag(f"metric '{metric.name}' is not computed by a {template['stage']} run",
                           ("spec", "objective", "metric"),
                           hint=f"use one of: {', '.join(metrics_for(template['stage']))}")]
    return []


def _check_paths(sweep: Obj, model) -> list[Diagnostic]:
    """Each parameter: one of values or range, listed once, a field of its kind that may vary,
    a sensible range."""
    d: list[Diagnostic] = []
    seen_paths: dict[str, int] = {}
    for i, p in enumerate(sweep.spec["parameters"]):
        where = ("spec", "parameters", i)
        path = p["path"]
        if (p.get("values") is None) == (p.get("range") is None):
            d.append(sweep.diag("a parameter needs exactly one of values or range", where,
                                hint="values: [a, b, c] or range: {min: A, max: B}"))
            continue
        if path in seen_paths:
            d.append(sweep.diag(f"parameter {path} is listed twice", where + ("path",),
                                hint=f"first at parameters[{seen_paths[path]}]; merge their values"))
            continue
        seen_paths[path] = i
        kind = "Model" if path.startswith("model.") else "Run"
        fld = tuple(path.split(".")[1:] if kind == "Model" else path.split("."))
        problem = _field_problem(kind, fld)
        if problem:
            d.append(sweep.diag(problem[0], where + ("path",), hint=problem[1]))
        elif kind == "Run" and any(fld[:len(x)] == x for x in NOT_SWEEPABLE):
            d.append(sweep.diag(f"{path} cannot vary between trials", where + ("path",),
                                hint="every trial of a sweep shares its stage, data, hardware and executor; "
                                     "write one Sweep per choice"))
        elif kind == "Model" and model is None:
            d.append(sweep.diag(f"{path} varies a Model, but the template uses none", where + ("path",),
                                hint="give the template a modelRef (or an initFrom run that has one)"))
        elif p.get("range") is not None:
            d += _check_range(sweep, p["range"], where + ("range",))
    return d


def _check_range(sweep: Obj, r: dict, rw: tuple) -> list[Diagnostic]:
    if r["min"] > r["max"]:
        return [sweep.diag(f"range min {r['min']} is above max {r['max']}", rw + ("min",))]
    if r.get("log") and r["min"] <= 0:
        return [sweep.diag("a log range needs min > 0", rw + ("min",))]
    if r.get("log") and r.get("step"):
        return [sweep.diag("a range is either log or stepped, not both", rw + ("step",))]
    return []


def _check_range_types(params: list[Param], sweep: Obj) -> list[Diagnostic]:
    d = []
    for p in params:
        if p.values is not None:
            continue
        if not ({"number", "integer"} & set(p.types)):
            d.append(sweep.diag(f"{p.path} is not a number; a range needs a numeric field",
                                ("spec", "parameters", p.index, "range"), hint="list its choices under values"))
        elif "number" not in p.types and not p.integer:
            d.append(sweep.diag(f"{p.path} is an integer field; the range must have integer min, max and step",
                                ("spec", "parameters", p.index, "range")))
    return d


def _check_objective(res: Resolved, sweep: Obj, template: dict, validate: Validate) -> list[Diagnostic]:
    """The objective must be a metric the trials report: checked as the template's own
    earlyStopping.metric would be (per-target names, the target's type, the stage)."""
    s = sweep.spec
    judged = copy.deepcopy(template)
    judged.setdefault("trainer", {}).setdefault("earlyStopping", {})["metric"] = s["objective"]["metric"]
    try:
        validate(as_documents(trial_manifests(sweep.name, {}, judged, 0, {}, [], None), f"sweep/{sweep.name}"),
                 _Lookup(res))
    except AamError as exc:
        for diag in exc.diagnostics:
            if diag.field and diag.field.endswith("earlyStopping.metric"):
                return [sweep.diag(f"objective metric '{s['objective']['metric']}' is not reported by the "
                                   f"template's trials: {diag.message}", ("spec", "objective", "metric"),
                                   hint=diag.hint)]
    return []


def _check_values(res: Resolved, sweep: Obj, template: dict, params: list[Param], model,
                  validate: Validate) -> list[Diagnostic]:
    """Each value must make a valid trial, checked by the same rules as a Run: every value of a
    list, every grid point of a range of at most CHECK_VALUES, else its first two and last two."""
    d = []
    lookup_ = _Lookup(res)
    for p in params:
        values = p.checked_values(CHECK_VALUES)
        if p.values is not None:
            cases = [(("spec", "parameters", p.index, "values", j), v) for j, v in enumerate(values)]
        else:
            cases = [(("spec", "parameters", p.index, "range", "min" if j == 0 else "max"), v)
                     for j, v in enumerate(values)]
        tried: set[str] = set()
        for where, value in cases:
            key = json.dumps(value, sort_keys=True)
            if key in tried:  # the same value again makes the same trial
                continue
            tried.add(key)
            manifests = trial_manifests(sweep.name, {}, template, 0, {p.path: value}, params, model)
            try:
                validate(as_documents(manifests, f"trial of sweep/{sweep.name}"), lookup_)
            except AamError as exc:
                first = exc.diagnostics[0]
                what = f"{p.path} = {json.dumps(value)}"
                d.append(sweep.diag(f"{what} makes an invalid trial: {first.message}"
                                    + (f" (at {first.field})" if first.field and not first.field.endswith(
                                        p.field[-1]) else ""), where, hint=first.hint))
                break
    return d


def _check_budget(sweep: Obj, template: dict, params: list[Param]) -> list[Diagnostic]:
    """A grid that fits maxTrials; hyperband with room below the template's epochs."""
    s = sweep.spec
    d = []
    if s["algorithm"]["type"] == "grid":
        size = grid_size(params)
        if size is None:
            p = next(p for p in params if p.grid() is None)
            return [sweep.diag(f"a grid needs a step for the real range of {p.path}",
                               ("spec", "parameters", p.index, "range"),
                               hint="add range.step, list values, or use algorithm random or tpe")]
        if size > s["maxTrials"]:
            d.append(sweep.diag(f"the grid has {size} combinations but maxTrials is {s['maxTrials']}",
                                ("spec", "maxTrials"),
                                hint=f"raise maxTrials to {size}, drop values, or use algorithm random or tpe"))
    es = s["earlyStopping"]
    if es["type"] == "hyperband" and es["minEpochs"] >= template["trainer"]["epochs"]:
        d.append(sweep.diag(f"hyperband's minEpochs {es['minEpochs']} leaves no room below the template's "
                            f"{template['trainer']['epochs']} epochs", ("spec", "earlyStopping", "minEpochs")))
    return d


def _field_problem(kind: str, path: tuple) -> tuple[str, str | None] | None:
    """None when path is a field of kind; else (message, hint with the nearest field)."""
    if field_schema(kind, path) is not None:
        return None
    good = ()
    for i in range(1, len(path) + 1):
        if field_schema(kind, path[:i]) is None:
            break
        good = path[:i]
    wrong = path[len(good)]
    options = allowed_fields(kind, good)
    close = difflib.get_close_matches(wrong, options, n=1, cutoff=0.5)
    prefix = ("model." if kind == "Model" else "") + ".".join(good)
    if close:
        hint = f"did you mean '{prefix}.{close[0]}'?"
    elif options:
        hint = f"fields of {prefix}: {', '.join(options)}"
    else:
        hint = f"{prefix} has no sub-fields"
    return f"'{wrong}' is not a field of {kind} {prefix}", hint


def _trial_name_collisions(res: Resolved, sweep: Obj) -> list[Diagnostic]:
    """A Run of the user's (applied now, or stored) named like one of this sweep's trials
    (NAME-tN, N < maxTrials): planning that trial would replace it with a new generation."""
    pattern = re.compile(re.escape(sweep.name) + r"-t([0-9]+)")
    found: dict[str, dict] = {}
    for obj in res.given:
        if obj.kind == "Run":
            found[obj.name] = obj.manifest
    lister = getattr(res.store, "list_objects", None)
    if lister is not None:
        for row in lister("Run"):
            found.setdefault(row["name"], row["manifest"])
    d = []
    for name, m in sorted(found.items()):
        hit = pattern.fullmatch(name)
        if not hit or int(hit.group(1)) >= sweep.spec["maxTrials"]:
            continue
        if (m["metadata"].get("labels") or {}).get("sweep") == sweep.name:
            continue  # one of this sweep's own trials
        d.append(sweep.diag(f"run/{name} is the name of trial {hit.group(1)} of this sweep: planning that trial "
                            f"would replace your Run with a new generation", ("metadata", "name"),
                            hint=f"rename the Sweep (its trials are named {sweep.name}-t0, {sweep.name}-t1, ...) "
                                 f"or the Run"))
    return d


def _overlapping_paths(sweep: Obj) -> list[Diagnostic]:
    """Two parameters that set the same field (one path inside the other), or a modelRef varied
    beside model.spec fields (those derive a Model from the template's and replace any modelRef):
    one would silently undo the other."""
    ps = sweep.spec["parameters"]
    d = []
    for i, a in enumerate(ps):
        for j, b in enumerate(ps[:i]):
            pa, pb = a["path"], b["path"]
            if pa != pb and (pa.startswith(pb + ".") or pb.startswith(pa + ".")):
                outer, inner = (pb, pa) if pa.startswith(pb + ".") else (pa, pb)
                d.append(sweep.diag(f"parameter {pa} overlaps parameters[{j}] ({pb}): {outer} would overwrite "
                                    f"what {inner} sets", ("spec", "parameters", i, "path"),
                                    hint=f"vary {inner} alone, or list whole values of {outer}"))
    refs = [i for i, p in enumerate(ps) if p["path"] == "spec.modelRef"]
    if refs and any(p["path"].startswith("model.spec.") for p in ps):
        d.append(sweep.diag("spec.modelRef cannot vary beside model.spec parameters: each trial's Model is derived "
                            "from the template's, so the varied modelRef would never take effect",
                            ("spec", "parameters", refs[0], "path"),
                            hint="sweep either whole Models (spec.modelRef) or Model fields (model.spec...), "
                                 "one Sweep each"))
    return d
