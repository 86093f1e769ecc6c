"""Sweep: a hyperparameter search whose trials are ordinary Runs.

The search space and the choice of trials belong to Optuna (samplers, pruners), whose state is a
journal file in the sweep's folder (no server; appends are locked, so it is safe on a shared file
system). The index that `get`, `describe` and `status` read is SQLite (the `sweeps` and `trials`
tables): reading it needs neither Optuna nor the journal, so a leaderboard of 1,000 trials is fast.

One controller process drives a sweep generation (a flock in the sweep folder keeps it alone):
it reads each running trial's validation metrics from its run folder, reports them to Optuna,
writes the PRUNE flag into a trial the pruner stops, tells Optuna the objective of a finished
trial, and asks for new trials while fewer than `parallelism` run. Trials are planned through
apply (validation, records, generations) and submitted by the controller: one process each on
the local executor, one job array per batch on SLURM. Every step reads its state back from the
journal, the store and the run folders, so a controller that dies is replaced by re-applying
the Sweep and nothing finished runs twice.

Layout: sweeps/<name>/<generation>/
  journal.log      Optuna's journal (the study <name>-g<generation>)
  controller.log   what the controller did
  controller.lock  held while a controller runs
  arrays/          SLURM array scripts, one per batch (<k>.sbatch, task output <k>-<task>.out)
  plots/           objective.png, parameters.png, importance.png
"""
from __future__ import annotations

import copy
import difflib
import fcntl
import json
import math
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from aam_runtime import runfolder as RF
from aam_runtime.metric_table import METRICS, split_metric

from .errors import AamError, Diagnostic
from .parse import parse_text
from .resolve import Obj, Resolved, content_hash

SWEEPS_DIR = "sweeps"
JOURNAL = "journal.log"
CONTROLLER_LOG = "controller.log"
LOCK = "controller.lock"
ARRAYS = "arrays"
PLOTS = RF.PLOTS  # the same name as a run folder's
# fields that change the search itself; maxTrials, parallelism and maxFailedTrials do not
BUDGET_FIELDS = ("maxTrials", "parallelism", "maxFailedTrials")
TRIAL_TERMINAL = {"Complete", "Pruned", "Failed"}
SWEEP_TERMINAL = {"Succeeded", "Failed", "Cancelled"}
NOT_SWEEPABLE = (("spec", "executor"), ("spec", "hardwareRef"), ("spec", "datasetRef"), ("spec", "stage"))
CHECK_VALUES = 200  # a range of at most this many grid points is checked point by point (lists: every value)


def sweep_folder(home: Path, name: str, generation: int) -> Path:
    return (home / SWEEPS_DIR / name / str(generation)).resolve()


def trial_name(sweep: str, number: int) -> str:
    return f"{sweep}-t{number}"


def space_hash(manifest: dict) -> str:
    """What makes a generation: the spec without the budget fields."""
    spec = {k: v for k, v in manifest["spec"].items() if k not in BUDGET_FIELDS}
    return content_hash({"apiVersion": manifest.get("apiVersion"), "kind": "Sweep",
                         "metadata": {"name": manifest["metadata"]["name"]}, "spec": spec})


def direction(spec: dict) -> str:
    d = spec["objective"].get("direction", "auto")
    if d == "auto":
        d = "maximize" if METRICS[split_metric(spec["objective"]["metric"])[0]].higher_is_better else "minimize"
    return d


# ---------------------------------------------------------------- parameters

@dataclass
class Param:
    index: int
    path: str  # as written: spec.trainer.learningRate or model.spec.targetHead.hidden
    target: str  # run | model
    field: tuple  # the field's path inside its object: ('spec', 'trainer', 'learningRate')
    values: list | None = None
    encoded: bool = False  # values are lists/mappings: Optuna sees their JSON text
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    integer: bool = False
    types: tuple = ()  # the field's JSON types in its schema

    @property
    def choices(self) -> list:
        return [json.dumps(v, sort_keys=True) for v in self.values] if self.encoded else list(self.values)

    def distribution(self):
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.values is not None:
            return CategoricalDistribution(self.choices)
        if self.integer:
            return IntDistribution(int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        return FloatDistribution(self.low, self.high, log=self.log, step=self.step)

    def count(self) -> int | None:
        """How many values grid() would list, computed without listing them (None: continuous)."""
        if self.values is not None:
            return len(self.values)
        if self.integer:
            return max(0, (int(self.high) - int(self.low)) // int(self.step or 1) + 1)
        if self.step:
            return int(math.floor((self.high - self.low) / self.step + 1e-9)) + 1
        return None

    def checked_values(self, cap: int) -> list:
        """The values validation tries: all of them when there are at most `cap`, else the first
        two and the last two grid points (rules such as "even" alternate), else the two ends."""
        if self.values is not None:
            return list(self.values)
        lo = int(self.low) if self.integer else self.low
        hi = int(self.high) if self.integer else self.high
        n = self.count()
        if n is None:
            return [lo, hi]
        step = int(self.step or 1) if self.integer else self.step
        at = (lambda k: lo + k * step) if self.integer else (lambda k: round(lo + k * step, 12))
        ks = range(n) if n <= cap else sorted({0, 1, n - 2, n - 1})
        return [at(k) for k in ks if 0 <= k < n]

    def grid(self) -> list | None:
        """Every value of the parameter, or None (a continuous range has no grid)."""
        if self.values is not None:
            return self.choices
        if self.integer:
            return list(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        if self.step:
            n = int(math.floor((self.high - self.low) / self.step + 1e-9))
            return [round(self.low + k * self.step, 12) for k in range(n + 1)]
        return None

    def decode(self, v):
        return json.loads(v) if self.encoded else v


def grid_size(params: list[Param]) -> int | None:
    """Combinations of a grid over params (None: a continuous range has no grid)."""
    counts = [p.count() for p in params]
    return None if any(c is None for c in counts) else math.prod(counts)


def parameters(spec: dict) -> list[Param]:
    """The Sweep's parameters as Params (assumes check_sweep passed, or reports nothing itself)."""
    from .schema import field_schema

    out = []
    for i, p in enumerate(spec["parameters"]):
        target = "model" if p["path"].startswith("model.") else "run"
        fld = tuple(p["path"].split(".")[1:] if target == "model" else p["path"].split("."))
        node = field_schema("Model" if target == "model" else "Run", fld) or {}
        types = tuple(node["type"]) if isinstance(node.get("type"), list) else (node.get("type"),)
        par = Param(index=i, path=p["path"], target=target, field=fld, types=types)
        if p.get("values") is not None:
            par.values = list(p["values"])
            par.encoded = any(isinstance(v, (list, dict)) for v in par.values)
        elif p.get("range") is not None:
            r = p["range"]
            ints = all(float(x).is_integer() for x in (r["min"], r["max"], r.get("step") or 1))
            par.integer = ints and ("integer" in types or ("number" not in types and isinstance(r["min"], int)
                                                          and isinstance(r["max"], int)))
            par.low, par.high, par.log, par.step = r["min"], r["max"], r.get("log", False), r.get("step")
        out.append(par)
    return out


def _set(d: dict, path, value) -> None:
    """Set a nested field, creating the mappings on the way (a template may leave them out)."""
    for p in path[:-1]:
        if not isinstance(d.get(p), dict):
            d[p] = {}
        d = d[p]
    d[path[-1]] = value


# ---------------------------------------------------------------- trials as documents

def stored_template(store, manifest: dict) -> dict:
    """The template of an applied Sweep (its runRef looked up in the store)."""
    return template_spec(Resolved(given=[], objects={}, store=store),
                         Obj("Sweep", manifest["metadata"]["name"], manifest, source="store"))


def template_spec(res: Resolved, sweep: Obj) -> dict:
    s = sweep.spec
    if s.get("template") is not None:
        return copy.deepcopy(s["template"])
    return copy.deepcopy(_lookup(res, "Run", s["runRef"])["spec"])


def _lookup(res: Resolved, kind: str, name: str) -> dict | None:
    obj = res.objects.get((kind, name))
    if obj is not None:
        return obj.manifest
    return res.store.get_object(kind, name) if res.store is not None else None


def base_model(res: Resolved, template: dict) -> tuple[str, dict] | None:
    """(name, manifest) of the Model the template uses (its own modelRef, else its initFrom run's)."""
    seen = set()
    spec = template
    while spec is not None:
        if spec.get("modelRef"):
            m = _lookup(res, "Model", spec["modelRef"])
            return (spec["modelRef"], m) if m else None
        src = (spec.get("initFrom") or {}).get("run")
        if not src or src in seen:
            return None
        seen.add(src)
        run = _lookup(res, "Run", src)
        spec = run["spec"] if run else None
    return None


def trial_manifests(sweep_name: str, labels: dict, template: dict, number: int, assignment: dict[str, object],
                    params: list[Param], model: tuple[str, dict] | None) -> list[dict]:
    """The Run (and, when a Model field varies, the derived Model) of one trial."""
    name = trial_name(sweep_name, number)
    spec = copy.deepcopy(template)
    model_spec = copy.deepcopy(model[1]["spec"]) if model else None
    for p in params:
        if p.path not in assignment:
            continue
        if p.target == "model":
            _set(model_spec, p.field[1:], assignment[p.path])
        else:
            _set(spec, p.field[1:], assignment[p.path])
    run_labels = {**labels, "sweep": sweep_name, "trial": str(number)}
    docs = []
    if any(p.target == "model" for p in params) and model is not None:
        docs.append({"apiVersion": "aam/v1alpha1", "kind": "Model",
                     "metadata": {"name": name, "labels": run_labels,
                                  "annotations": {"aam/derived-from": model[0]}},
                     "spec": model_spec})
        spec["modelRef"] = name
    docs.append({"apiVersion": "aam/v1alpha1", "kind": "Run",
                 "metadata": {"name": name, "labels": run_labels}, "spec": spec})
    return docs


def as_documents(manifests: list[dict], origin: str):
    import yaml

    text = yaml.safe_dump_all(manifests, sort_keys=False)
    return parse_text(text, origin, Path.cwd())


def template_run(res: Resolved, sweep: Obj) -> Obj:
    """The template as a resolved Run object (for the data preflight)."""
    from .resolve import normalize

    manifests = trial_manifests(sweep.name, {}, template_spec(res, sweep), 0, {}, [], None)
    return normalize(as_documents(manifests, f"sweep/{sweep.name} template")[-1])


# ---------------------------------------------------------------- validation

class _Lookup:
    """References of trial documents: the objects being applied, then the store."""

    def __init__(self, res: Resolved):
        self.res = res

    def get_object(self, kind, name):
        return _lookup(self.res, kind, name)


def _field_problem(kind: str, path: tuple) -> tuple[str, str | None] | None:
    """None when path is a field of kind; else (message, hint with the nearest field)."""
    from .schema import allowed_fields, field_schema

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


def check_sweep(res: Resolved, sweep: Obj) -> list[Diagnostic]:
    """Everything about a Sweep that can be known before a trial starts."""
    from .validate import validate

    s = sweep.spec
    d: list[Diagnostic] = []
    if (s.get("template") is None) == (s.get("runRef") is None):
        d.append(sweep.diag("a Sweep needs exactly one of template or runRef", ("spec",),
                            hint="template: {stage: finetune, ...} (a Run spec), or runRef: NAME of a Run"))
        return d
    if s.get("runRef") and _lookup(res, "Run", s["runRef"]) is None:
        return [sweep.diag(f"Run '{s['runRef']}' not found", ("spec", "runRef"),
                           hint="apply it first or pass its file with -f")]
    longest = len(trial_name(sweep.name, max(s["maxTrials"] - 1, 0)))
    if longest > 63:
        d.append(sweep.diag(f"trial names like '{trial_name(sweep.name, s['maxTrials'] - 1)}' exceed 63 characters",
                            ("metadata", "name"), hint=f"shorten the sweep's name to at most "
                                                       f"{63 - (longest - len(sweep.name))} characters"))
    d += _trial_name_collisions(res, sweep)
    template = template_spec(res, sweep)
    if template.get("stage") not in ("pretrain", "finetune"):
        d.append(sweep.diag(f"a {template.get('stage')} run has no validation to judge a trial by",
                            ("spec", "template", "stage") if s.get("template") else ("spec", "runRef"),
                            hint="sweep a pretrain or finetune run"))
        return d
    metric = METRICS[split_metric(s["objective"]["metric"])[0]]
    if template["stage"] not in metric.stages:
        from aam_runtime.metric_table import metrics_for
        d.append(sweep.diag(f"metric '{metric.name}' is not computed by a {template['stage']} run",
                            ("spec", "objective", "metric"),
                            hint=f"use one of: {', '.join(metrics_for(template['stage']))}"))
    model = base_model(res, template)
    d += _overlapping_paths(sweep)
    if d:
        return d
    seen_paths: dict[str, int] = {}
    for i, p in enumerate(s["parameters"]):
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
            continue
        if kind == "Run" and any(fld[:len(x)] == x for x in NOT_SWEEPABLE):
            d.append(sweep.diag(f"{path} cannot vary between trials", where + ("path",),
                                hint="every trial of a sweep shares its stage, data, hardware and executor; "
                                     "write one Sweep per choice"))
            continue
        if kind == "Model" and model is None:
            d.append(sweep.diag(f"{path} varies a Model, but the template uses none", where + ("path",),
                                hint="give the template a modelRef (or an initFrom run that has one)"))
            continue
        if p.get("range") is not None:
            r = p["range"]
            rw = where + ("range",)
            if r["min"] > r["max"]:
                d.append(sweep.diag(f"range min {r['min']} is above max {r['max']}", rw + ("min",)))
                continue
            if r.get("log") and r["min"] <= 0:
                d.append(sweep.diag("a log range needs min > 0", rw + ("min",)))
                continue
            if r.get("log") and r.get("step"):
                d.append(sweep.diag("a range is either log or stepped, not both", rw + ("step",)))
                continue
    if d:
        return d
    params = parameters(s)
    for p in params:
        if p.values is None:
            if not ({"number", "integer"} & set(p.types)):
                d.append(sweep.diag(f"{p.path} is not a number; a range needs a numeric field",
                                    ("spec", "parameters", p.index, "range"), hint="list its choices under values"))
                continue
            if "number" not in p.types and not p.integer:
                d.append(sweep.diag(f"{p.path} is an integer field; the range must have integer min, max and step",
                                    ("spec", "parameters", p.index, "range")))
                continue
    if d:
        return d
    lookup = _Lookup(res)
    # the objective must be a metric the trials report: checked as the template's own
    # earlyStopping.metric would be (per-target names, the target's type, the stage)
    judged = copy.deepcopy(template)
    judged.setdefault("trainer", {}).setdefault("earlyStopping", {})["metric"] = s["objective"]["metric"]
    try:
        validate(as_documents(trial_manifests(sweep.name, {}, judged, 0, {}, [], None), f"sweep/{sweep.name}"), lookup)
    except AamError as exc:
        for diag in exc.diagnostics:
            if diag.field and diag.field.endswith("earlyStopping.metric"):
                return [sweep.diag(f"objective metric '{s['objective']['metric']}' is not reported by the "
                                   f"template's trials: {diag.message}", ("spec", "objective", "metric"),
                                   hint=diag.hint)]
    # each value must make a valid trial, checked by the same rules as a Run: every value of a
    # list, every grid point of a range of at most CHECK_VALUES, else its first two and last two
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
            docs = as_documents(manifests, f"trial of sweep/{sweep.name}")
            try:
                validate(docs, lookup)
            except AamError as exc:
                first = exc.diagnostics[0]
                what = f"{p.path} = {json.dumps(value)}"
                d.append(sweep.diag(f"{what} makes an invalid trial: {first.message}"
                                    + (f" (at {first.field})" if first.field and not first.field.endswith(
                                        p.field[-1]) else ""), where, hint=first.hint))
                break
    if d:
        return d
    if s["algorithm"]["type"] == "grid":
        size = grid_size(params)
        if size is None:
            p = next(p for p in params if p.grid() is None)
            d.append(sweep.diag(f"a grid needs a step for the real range of {p.path}",
                                ("spec", "parameters", p.index, "range"),
                                hint="add range.step, list values, or use algorithm random or tpe"))
            return d
        if size > s["maxTrials"]:
            d.append(sweep.diag(f"the grid has {size} combinations but maxTrials is {s['maxTrials']}",
                                ("spec", "maxTrials"),
                                hint=f"raise maxTrials to {size}, drop values, or use algorithm random or tpe"))
    es = s["earlyStopping"]
    if es["type"] == "hyperband" and es["minEpochs"] >= template["trainer"]["epochs"]:
        d.append(sweep.diag(f"hyperband's minEpochs {es['minEpochs']} leaves no room below the template's "
                            f"{template['trainer']['epochs']} epochs", ("spec", "earlyStopping", "minEpochs")))
    return d


def _trial_name_collisions(res: Resolved, sweep: Obj) -> list[Diagnostic]:
    """A Run of the user's (applied now, or stored) named like one of this sweep's trials
    (NAME-tN, N < maxTrials): planning that trial would replace it with a new generation."""
    import re

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


# ---------------------------------------------------------------- apply: the sweep's generation and controller

def apply_sweep(store, home: Path, sweep: Obj) -> str:
    """Called by apply after the Sweep object is stored: find or start its generation and make
    sure a controller drives it. Returns the line apply prints."""
    h = space_hash(sweep.manifest)
    row = store.latest_sweep(sweep.name)
    state = "unchanged"
    if row is None or row["space_hash"] != h:
        executor = stored_template(store, sweep.manifest)["executor"]["type"]
        gen = store.add_sweep(name=sweep.name, space_hash=h, folder="", phase="Running", executor=executor)
        folder = sweep_folder(home, sweep.name, gen)
        folder.mkdir(parents=True, exist_ok=True)
        store.update_sweep(sweep.name, gen, folder=str(folder))
        state = "created" if row is None else "configured (new search space: generation %d)" % gen
        row = store.latest_sweep(sweep.name)
    else:
        spec = sweep.spec
        done = [t for t in store.trials(sweep.name, row["generation"]) if t["state"] in TRIAL_TERMINAL]
        if row["phase"] in SWEEP_TERMINAL and row["phase"] != "Cancelled" and len(done) < spec["maxTrials"] \
                and not _failed_out(store, row, spec):
            store.update_sweep(sweep.name, row["generation"], phase="Running", reason=None, finished=None)
            state = f"extended to {spec['maxTrials']} trials"
    row = store.latest_sweep(sweep.name)
    if row["phase"] in SWEEP_TERMINAL:
        return f"sweep/{sweep.name} {state} (generation {row['generation']} {row['phase']})"
    if controller_alive(Path(row["folder"])):
        what = state if state != "unchanged" else "unchanged"
        return f"sweep/{sweep.name} {what} (generation {row['generation']}, controller running)"
    pid = start_controller(store, home, sweep.name, Path(row["folder"]))
    if state == "unchanged":
        state = "resumed"
    return (f"sweep/{sweep.name} {state} (generation {row['generation']}, controller pid {pid}) -> "
            f"{row['folder']}")


def _failed_out(store, row, spec) -> bool:
    failed = sum(1 for t in store.trials(row["name"], row["generation"]) if t["state"] == "Failed")
    return failed > spec["maxFailedTrials"]


def controller_alive(folder: Path) -> bool:
    """Is a controller holding this generation's lock?"""
    try:
        fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def start_controller(store, home: Path, name: str, folder: Path) -> int:
    from .executors import proc_start_time

    python = os.environ.get("AAM_PYTHON") or sys.executable
    with open(os.devnull, "rb") as devnull, open(folder / CONTROLLER_LOG, "ab") as out:
        proc = subprocess.Popen([python, "-m", "aamctl.cli", "--home", str(home), "sweep-controller", name],
                                stdin=devnull, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                close_fds=True, cwd=str(folder))
    # the controller records itself too; this covers the moment before it does
    store.update_sweep(name, int(folder.name), pid=proc.pid, pid_start=proc_start_time(proc.pid))
    return proc.pid


# ---------------------------------------------------------------- the controller

class Controller:
    """Drives one sweep generation until its trials are done. Every step starts from what the
    journal, the store and the run folders say, so a new controller takes over where one died."""

    def __init__(self, store, home: Path, name: str, poll: float | None = None, echo=None):
        # seconds between passes: trials report once per epoch, so a second is plenty (tests
        # with epochs of a fraction of a second lower it through AAM_SWEEP_POLL)
        poll = poll if poll is not None else float(os.environ.get("AAM_SWEEP_POLL", "1.0"))
        self.store, self.home, self.name, self.poll = store, Path(home), name, poll
        self.echo = echo or (lambda text: print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True))
        row = store.latest_sweep(name)
        if row is None:
            raise AamError(Diagnostic(f"sweep '{name}' has never been applied", file="aamctl",
                                      hint="aamctl apply -f SWEEP.yaml"))
        self.generation = row["generation"]
        self.folder = Path(row["folder"])
        self.study = None
        self._plotted = -1

    # -- the study

    def manifest(self) -> dict:
        m = self.store.get_object("Sweep", self.name)
        if m is None:
            raise AamError(Diagnostic(f"sweep '{self.name}' was deleted", file="aamctl"))
        return m

    def open_study(self, spec: dict):
        import optuna
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage = JournalStorage(JournalFileBackend(str(self.folder / JOURNAL)))
        study_name = f"{self.name}-g{self.generation}"
        study = optuna.create_study(study_name=study_name, storage=storage, direction=direction(spec),
                                    load_if_exists=True)
        # samplers hold no state in the journal: a restarted controller seeds past the trials so far
        algo = spec["algorithm"]
        seed = algo["seed"] + len(study.trials)
        params = parameters(spec)
        if algo["type"] == "grid":
            study.sampler = optuna.samplers.GridSampler({p.path: p.grid() for p in params}, seed=seed)
        elif algo["type"] == "random":
            study.sampler = optuna.samplers.RandomSampler(seed=seed)
        else:
            study.sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=algo["startupTrials"])
        es = spec["earlyStopping"]
        if es["type"] == "median":
            study.pruner = optuna.pruners.MedianPruner(n_startup_trials=es["startupTrials"],
                                                       n_warmup_steps=es["warmupEpochs"])
        elif es["type"] == "hyperband":
            study.pruner = optuna.pruners.HyperbandPruner(min_resource=es["minEpochs"],
                                                          max_resource=self._template()["trainer"]["epochs"],
                                                          reduction_factor=es["reductionFactor"])
        else:
            study.pruner = optuna.pruners.NopPruner()
        self.study = study
        return study

    def _template(self) -> dict:
        return stored_template(self.store, self.manifest())

    # -- the loop

    def run(self) -> str:
        lock = os.open(self.folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.echo("another controller drives this sweep; exiting")
            return "busy"
        from .executors import proc_start_time
        self.store.update_sweep(self.name, self.generation, pid=os.getpid(), pid_start=proc_start_time(os.getpid()))
        self.echo(f"controller of sweep/{self.name} generation {self.generation} started (pid {os.getpid()})")
        try:
            while True:
                phase = self.step()
                if phase in SWEEP_TERMINAL:
                    self.echo(f"sweep/{self.name} {phase}")
                    return phase
                time.sleep(self.poll)
        except AamError as exc:
            self.store.update_sweep(self.name, self.generation, phase="Failed", reason=exc.diagnostics[0].message,
                                    finished=time.time())
            self.echo("error: " + exc.render())
            return "Failed"
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
            os.close(lock)

    def step(self) -> str:
        """One pass: follow running trials, start new ones, decide whether the sweep is done."""
        manifest = self.manifest()
        spec = manifest["spec"]
        row = self.store.latest_sweep(self.name)
        if row["generation"] != self.generation:
            return "Cancelled"  # a new search space took over
        if row["phase"] == "Cancelled":
            return "Cancelled"
        if self.study is None:  # this controller's first pass: take over from the one before
            self.open_study(spec)
            self._finish_creating(manifest)
        self._adopt_orphans(manifest)
        trials = self.store.trials(self.name, self.generation)
        for t in trials:
            if t["state"] not in TRIAL_TERMINAL:
                self._follow(t, spec)
        trials = self.store.trials(self.name, self.generation)
        counts = _count(trials)
        failed_out = counts["Failed"] > spec["maxFailedTrials"]
        limit = spec["maxTrials"]
        if spec["algorithm"]["type"] == "grid":
            limit = min(limit, grid_size(parameters(spec)))
        active = counts["Running"] + counts["Creating"]
        if not failed_out:
            room = min(spec["parallelism"] - active, limit - len(trials))
            if row["executor"] == "slurm" and spec["algorithm"]["type"] != "tpe":
                # trials that do not learn from each other go to SLURM as one job array, which
                # runs `parallelism` of them at once (%P); tpe asks in batches of `parallelism`
                room = limit - len(trials) if not active else 0
            if room > 0:
                self._start_trials(manifest, room)
                trials = self.store.trials(self.name, self.generation)
                counts = _count(trials)
                active = counts["Running"] + counts["Creating"]
        if counts["Complete"] != self._plotted:
            self._plot(trials, spec)
        if active:
            return "Running"
        if failed_out:
            reason = f"{counts['Failed']} trials failed (maxFailedTrials {spec['maxFailedTrials']})"
            self.store.update_sweep(self.name, self.generation, phase="Failed", reason=reason, finished=time.time())
            return "Failed"
        if len(trials) >= limit:
            phase = "Succeeded" if counts["Complete"] else "Failed"
            reason = None if counts["Complete"] else "no trial completed"
            self.store.update_sweep(self.name, self.generation, phase=phase, reason=reason, finished=time.time())
            return phase
        return "Running"

    # -- trials

    def _trial_id(self, number: int) -> int:
        return self.study._storage.get_trial_id_from_study_id_trial_number(self.study._study_id, number)

    def _adopt_orphans(self, manifest: dict) -> None:
        """Trials Optuna handed out that the store does not know (a controller died in between)."""
        import optuna

        known = {t["number"] for t in self.store.trials(self.name, self.generation)}
        for ft in self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            if ft.number not in known:
                self.echo(f"trial {ft.number}: asked before the last controller stopped; starting it now")
                self._create([ft], manifest)

    def _finish_creating(self, manifest: dict) -> None:
        """Trials the controller before this one was creating when it stopped (this one never
        leaves a trial Creating: _create ends each Running or Failed). Each goes on from the step
        it reached, so it neither fails for it nor runs twice:
        - its run was started (a pid or job id is recorded, or its launcher is found alive, or it
          already exited): the trial follows that run;
        - its run was reserved, perhaps written, but never started: it is planned again under the
          same generation and started;
        - no run was reserved: it is created as any new trial.
        One window stays: a SLURM array that sbatch accepted just before the controller died,
        before the job ids were stored, is submitted again (squeue names no owner for it)."""
        from .executors import LocalExecutor

        again, reuse = [], {}
        for t in self.store.trials(self.name, self.generation):
            if t["state"] != "Creating":
                continue
            row = self._reserved_run(t)
            started = False
            if row is not None and row["folder"]:
                folder = Path(row["folder"])
                started = bool(row["pid"] or row["job_id"]) or (folder / RF.EXIT_CODE).exists()
                if not started and row["executor"] == "local" and (folder / RF.LAUNCHER_LOG).exists():
                    found = LocalExecutor().find(folder)
                    if found is not None:
                        self.store.update_run(row["name"], row["generation"], **found)
                        self.store.add_event(row["name"], row["generation"], "Submitted", json.dumps(found))
                        started = True
            if started:
                self.store.put_trial(self.name, self.generation, t["number"], run_generation=row["generation"],
                                     state="Running")
                self.echo(f"trial {t['number']}: run/{row['name']} generation {row['generation']} was started "
                          "before the last controller stopped; following it")
                continue
            frozen = self.study._storage.get_trial(self._trial_id(t["number"]))
            if frozen.state.is_finished():  # _create told Optuna it failed to plan, then stopped
                state = {"COMPLETE": "Complete", "PRUNED": "Pruned"}.get(frozen.state.name, "Failed")
                self._finish(t["number"], state, frozen.value, tell=False)
                continue
            if row is not None:
                reuse[row["name"]] = row["generation"]
            self.echo(f"trial {t['number']}: the last controller stopped while creating it; creating it again"
                      + (f" (run/{row['name']} generation {row['generation']})" if row is not None else ""))
            again.append(frozen)
        if again:
            self._create(again, manifest, reuse=reuse)

    def _reserved_run(self, t):
        """The run row a Creating trial reserved, if it got that far: the linked one, or else the
        newest row of its run name made for this trial after the trial was."""
        if t["run_generation"] is not None:
            return self.store.run(t["run_name"], t["run_generation"])
        row = self.store.latest_run(t["run_name"])
        if row is None or row["created"] < t["created"]:
            return None
        try:
            labels = json.loads(row["labels"] or "{}")
        except ValueError:
            return None
        if labels.get("sweep") != self.name or labels.get("trial") != str(t["number"]):
            return None
        return row

    def _start_trials(self, manifest: dict, room: int) -> None:
        params = parameters(manifest["spec"])
        dists = {p.path: p.distribution() for p in params}
        asked = [self.study.ask(fixed_distributions=dists) for _ in range(room)]
        frozen = [self.study._storage.get_trial(t._trial_id) for t in asked]
        self._create(frozen, manifest)

    def _create(self, frozen: list, manifest: dict, reuse: dict[str, int] | None = None) -> None:
        """Plan the trials' Runs through apply (held), then submit them: one process each
        (local) or one job array (SLURM). `reuse`: run generations reserved but never started
        (see _finish_creating)."""
        from .apply import apply_manifests, submit_plan
        from .executors import executor_for
        from .resolve import Resolved

        spec = manifest["spec"]
        params = parameters(spec)
        res = Resolved(given=[], objects={}, store=self.store)
        template = stored_template(self.store, manifest)
        model = base_model(res, template) if any(p.target == "model" for p in params) else None
        labels = manifest["metadata"].get("labels", {})
        plans = []
        for ft in frozen:
            assignment = {p.path: p.decode(ft.params[p.path]) for p in params if p.path in ft.params}
            name = trial_name(self.name, ft.number)
            self.store.put_trial(self.name, self.generation, ft.number, run_name=name, state="Creating",
                                 params=json.dumps(assignment))
            docs = as_documents(trial_manifests(self.name, labels, template, ft.number, assignment, params, model),
                                f"sweep/{self.name} trial {ft.number}")
            try:
                result = apply_manifests(self.store, None, documents=docs, home=self.home, force=True,
                                         preflight=False, hold=True, echo=lambda _t: None,
                                         reuse={name: reuse[name]} if reuse and name in reuse else None)
            except AamError as exc:
                self._finish(ft.number, "Failed", None, reason=exc.diagnostics[0].message)
                self.echo(f"trial {ft.number}: could not be planned: {exc.render()}")
                continue
            plan = result.held[0]
            self.store.put_trial(self.name, self.generation, ft.number, run_generation=plan.generation)
            plans.append((ft.number, plan))
            self.echo(f"trial {ft.number}: run/{plan.name} generation {plan.generation} {json.dumps(assignment)}")
        if not plans:
            return
        executor = plans[0][1].executor
        if executor == "slurm":
            self._submit_array([p for _, p in plans])
        else:
            ex = executor_for("local")
            for number, plan in plans:
                try:
                    submit_plan(self.store, plan, ex, echo=lambda t: None)
                except AamError as exc:
                    self._finish(number, "Failed", None, reason=exc.diagnostics[0].message)
        for number, plan in plans:
            r = self.store.run(plan.name, plan.generation)
            if r is not None and r["phase"] != "Failed":
                self.store.put_trial(self.name, self.generation, number, state="Running")

    def _submit_array(self, plans: list) -> None:
        from .executors import SlurmExecutor

        arrays = self.folder / ARRAYS
        arrays.mkdir(exist_ok=True)
        k = len(list(arrays.glob("*.sbatch")))
        script = arrays / f"{k}.sbatch"
        spec = self.manifest()["spec"]
        RF.atomic_write(script, render_array(plans, self.name, self.generation, k, arrays, spec["parallelism"]))
        from .apply import dependency_jobs

        dep = dependency_jobs(self.store, plans[0])
        try:
            info = SlurmExecutor().submit(script.parent, dependency=dep, script=script)
        except AamError as exc:
            for p in plans:
                self.store.set_phase(p.name, p.generation, "Failed", "submission failed")
            raise exc
        job = info["job_id"]
        for i, p in enumerate(plans):
            self.store.update_run(p.name, p.generation, job_id=f"{job}_{i}")
            self.store.add_event(p.name, p.generation, "Submitted", json.dumps({"job_id": f"{job}_{i}", "array": job}))
        self.echo(f"submitted job array {job} ({len(plans)} trials, at most {spec['parallelism']} at once)")

    def _follow(self, t, spec: dict) -> None:
        """Report a running trial's new validations; prune it, or record how it ended."""
        from .reconcile import reconcile

        if t["run_generation"] is None:
            # _finish_creating links or re-creates every such trial before this is called; a trial
            # left with no run here (it could not be planned again) never gets one: fail it
            # rather than wait on it forever
            self._finish(t["number"], "Failed", None,
                         reason="never started: the controller creating it stopped first")
            return
        row = self.store.run(t["run_name"], t["run_generation"])
        if row is None:
            self._finish(t["number"], "Failed", None, reason="its run is gone from the store")
            return
        (row, phase, reason, status), = reconcile(self.store, [row])
        folder = Path(row["folder"])
        metric = spec["objective"]["metric"]
        tid = self._trial_id(t["number"])
        frozen = self.study._storage.get_trial(tid)
        if frozen.state.is_finished():
            # told by an earlier controller that died before it updated the store
            state = {"COMPLETE": "Complete", "PRUNED": "Pruned"}.get(frozen.state.name, "Failed")
            self._finish(t["number"], state, frozen.value, tell=False)
            return
        import optuna

        trial = optuna.trial.Trial(self.study, tid)
        pruning = phase == "Running" and not (folder / RF.PRUNE_FLAG).exists()
        for epoch, value in validations(folder, metric):
            if epoch in frozen.intermediate_values:
                continue
            trial.report(value, epoch)  # NaN too: a diverged trial is the first to prune
            # decide after each validation in turn, as the trial itself would have
            if pruning and trial.should_prune():
                RF.atomic_write(folder / RF.PRUNE_FLAG, f"pruned by the sweep controller at epoch {epoch}\n")
                self.echo(f"trial {t['number']}: pruned at epoch {epoch} ({metric} {value:.6g})")
                pruning = False
        if phase in ("Running", "Pending", "Queued", "Requeued"):
            return
        if phase == "Succeeded":
            value = objective_value(folder, metric)
            if value is None or not math.isfinite(value):
                self._finish(t["number"], "Failed", None, reason=f"no finite {metric} in its metrics")
            else:
                self._finish(t["number"], "Complete", value)
        elif phase == "Pruned":
            self._finish(t["number"], "Pruned", None)
        else:
            self._finish(t["number"], "Failed", None, reason=reason or phase)

    def _finish(self, number: int, state: str, value, reason: str | None = None, tell: bool = True) -> None:
        from optuna.trial import TrialState

        if tell and self.study is not None:
            ts = {"Complete": TrialState.COMPLETE, "Pruned": TrialState.PRUNED, "Failed": TrialState.FAIL}[state]
            try:
                self.study.tell(number, value if state == "Complete" else None, state=ts, skip_if_finished=True)
            except RuntimeError as exc:
                # GridSampler calls study.stop() once the grid is used up, which Optuna allows only
                # inside study.optimize; the trial's state is stored before that (a finally block)
                if "Study.stop" not in str(exc):
                    raise
        self.store.put_trial(self.name, self.generation, number, state=state, value=value, reason=reason,
                             finished=time.time())
        self.echo(f"trial {number}: {state}" + (f" {value:.6g}" if value is not None else "")
                  + (f" ({reason})" if reason else ""))

    def _plot(self, trials, spec: dict) -> None:
        try:
            write_plots(self.folder / PLOTS, trials, spec, self.study)
            self._plotted = _count(trials)["Complete"]
        except Exception as exc:  # plots are a convenience: a sweep never fails for one
            self.echo(f"warning: plots not written ({type(exc).__name__}: {exc})")
            self._plotted = _count(trials)["Complete"]


def _count(trials) -> dict[str, int]:
    c = {"Creating": 0, "Running": 0, "Complete": 0, "Pruned": 0, "Failed": 0}
    for t in trials:
        c[t["state"]] = c.get(t["state"], 0) + 1
    return c


def validations(folder: Path, metric: str) -> list[tuple[int, float]]:
    """(epoch, value) of each validation in a run folder's metrics.jsonl."""
    out = []
    for r in RF.read_jsonl(folder / RF.METRICS):
        if r.get("split") == "validation" and isinstance(r.get(metric), (int, float)):
            out.append((int(r.get("epoch", 0)), float(r[metric])))
    return out


def objective_value(folder: Path, metric: str) -> float | None:
    """The metric at the validation of the run's best checkpoint (the model the trial leaves)."""
    st = RF.read_status(folder)
    best_step = (st.get("best_metric") or {}).get("step")
    rows = [r for r in RF.read_jsonl(folder / RF.METRICS)
            if r.get("split") == "validation" and isinstance(r.get(metric), (int, float))]
    at = [r for r in rows if r.get("step") == best_step]
    if at or rows:
        return float((at or rows)[-1][metric])
    v = (st.get("final_metrics") or {}).get(metric)
    return float(v) if isinstance(v, (int, float)) else None


def render_array(plans: list, sweep: str, generation: int, k: int, arrays: Path, parallelism: int) -> str:
    """One sbatch script for a batch of trials: task i runs trial plan i's own job script (which
    keeps its requeue-on-time-limit logic: in an array task, SLURM_JOB_ID is the task's own id)."""
    # each trial's folder was checked for SLURM-safe characters when its job.sbatch was rendered
    first = plans[0].files[RF.SLURM_SCRIPT]
    directives = [line for line in first.splitlines() if line.startswith("#SBATCH ")
                  and not line.split()[1].startswith(("--job-name", "--output", "--error"))]
    lines = ["#!/bin/bash",
             f"# aam SLURM job array for sweep/{sweep} generation {generation}, batch {k} (written by aamctl; do not edit)",
             f"#SBATCH --job-name=aam-{sweep}-g{generation}-b{k}",
             f"#SBATCH --array=0-{len(plans) - 1}%{max(1, parallelism)}",
             f"#SBATCH --output={arrays}/{k}-%a.out",
             f"#SBATCH --error={arrays}/{k}-%a.out",
             *directives,
             "set -u",
             "folders=(" + " ".join(shlex.quote(str(p.folder)) for p in plans) + ")",
             'folder="${folders[$SLURM_ARRAY_TASK_ID]}"',
             'echo "[$(date +%H:%M:%S)] array task $SLURM_ARRAY_TASK_ID: $folder"',
             f'exec bash "$folder/{RF.SLURM_SCRIPT}" >> "$folder/{RF.LOG}" 2>&1',
             ""]
    return "\n".join(lines)


def wait_for_sweeps(store, names: list[str], timeout: float | None, echo=print, poll: float = 2.0) -> bool:
    """Wait until each sweep's generation is over; True when all succeeded. A sweep whose
    controller is gone cannot finish: say so instead of waiting for ever."""
    start = time.time()
    reported: dict[str, int] = {}
    while True:
        pending = []
        for name in names:
            row = store.latest_sweep(name)
            n = sum(1 for t in store.trials(name, row["generation"]) if t["state"] in TRIAL_TERMINAL)
            if reported.get(name) != n:
                reported[name] = n
                echo(f"sweep/{name}: {n} trial(s) finished ({row['phase']})")
            if row["phase"] not in SWEEP_TERMINAL:
                if not controller_alive(Path(row["folder"])) and time.time() - start > 10:
                    echo(f"sweep/{name}: no controller is running; re-apply the Sweep to continue")
                    return False
                pending.append(name)
        if not pending:
            break
        if timeout is not None and time.time() - start > timeout:
            echo(f"timed out waiting for {', '.join(f'sweep/{n}' for n in pending)}")
            return False
        time.sleep(poll)
    ok = True
    for name in names:
        b = leaderboard(store, name)
        best = f", best {b['objective']['metric']}={b['best']['value']:.6g} (trial {b['best']['trial']})" \
            if b["best"] else ""
        echo(f"sweep/{name} {b['phase']}{best}: 'aamctl describe sweep {name}' shows the leaderboard")
        ok = ok and b["phase"] == "Succeeded"
    return ok


# ---------------------------------------------------------------- what people see

def leaderboard(store, name: str, generation: int | None = None) -> dict:
    """The sweep and its trials, best first (reads SQLite and the trials' run rows only)."""
    row = store.latest_sweep(name) if generation is None else store.sweep(name, generation)
    if row is None:
        raise AamError(Diagnostic(f"sweep '{name}' not found", file="aamctl", hint="'aamctl get sweeps' lists them"))
    manifest = store.get_object("Sweep", name) or {}
    spec = manifest.get("spec") or {}
    trials = [dict(t) for t in store.trials(name, row["generation"])]
    runs = {}
    live = [t for t in trials if t["state"] not in TRIAL_TERMINAL and t["run_generation"]]
    if live:
        from .reconcile import reconcile
        rows = [store.run(t["run_name"], t["run_generation"]) for t in live]
        for r, phase, _, _ in reconcile(store, [r for r in rows if r is not None]):
            runs[(r["name"], r["generation"])] = phase
    sign = -1 if spec and direction(spec) == "maximize" else 1
    order = {"Complete": 0, "Running": 1, "Creating": 1, "Pruned": 2, "Failed": 3}
    for t in trials:
        t["params"] = json.loads(t["params"] or "{}")
        if t["state"] not in TRIAL_TERMINAL:
            t["run_phase"] = runs.get((t["run_name"], t["run_generation"]), "Pending")
        end = t["finished"] or time.time()
        t["duration"] = round(end - t["created"], 1)
    trials.sort(key=lambda t: (order.get(t["state"], 4), sign * t["value"] if t["value"] is not None else 0,
                               t["number"]))
    counts = _count(trials)
    best = trials[0] if trials and trials[0]["state"] == "Complete" else None
    phase = row["phase"]
    reason = row["reason"]
    if phase == "Running" and not controller_alive(Path(row["folder"])):
        reason = "no controller is running: re-apply the Sweep to continue"
    return {"name": name, "generation": row["generation"], "phase": phase, "reason": reason,
            "folder": row["folder"], "executor": row["executor"],
            "objective": {"metric": spec.get("objective", {}).get("metric"),
                          "direction": direction(spec) if spec else None},
            "algorithm": (spec.get("algorithm") or {}).get("type"),
            "earlyStopping": (spec.get("earlyStopping") or {}).get("type"),
            "maxTrials": spec.get("maxTrials"), "parallelism": spec.get("parallelism"),
            "counts": counts, "best": {"trial": best["number"], "run": best["run_name"], "value": best["value"]}
            if best else None,
            "parameters": [p["path"] for p in spec.get("parameters", [])],
            "trials": trials, "created": row["created"], "finished": row["finished"]}


def write_plots(folder: Path, trials, spec: dict, study=None) -> None:
    """objective.png (objective by trial, running best), parameters.png (objective against each
    parameter) and importance.png (Optuna's parameter importance, when it can be computed)."""
    done = sorted([t for t in trials if t["state"] == "Complete" and t["value"] is not None],
                  key=lambda t: t["number"])
    if not done:
        return
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    metric = spec["objective"]["metric"]
    best_fn = max if direction(spec) == "maximize" else min
    xs = [t["number"] for t in done]
    ys = [t["value"] for t in done]
    running = [best_fn(ys[:i + 1]) for i in range(len(ys))]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(xs, ys, "o", label="trial")
    ax.step(xs, running, where="post", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(metric)
    ax.legend()
    fig.tight_layout()
    _save(fig, folder / "objective.png")
    plt.close(fig)
    params = [p["path"] for p in spec["parameters"]]
    fig, axes = plt.subplots(1, len(params), figsize=(4 * len(params), 3.5), squeeze=False)
    for ax, path in zip(axes[0], params):
        vals = [json.loads(t["params"]).get(path) for t in done]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
            ax.plot(vals, ys, "o")
            r = next((p.get("range") for p in spec["parameters"] if p["path"] == path), None)
            if r and r.get("log"):
                ax.set_xscale("log")
        else:
            text = [v if isinstance(v, str) else json.dumps(v) for v in vals]
            labels = sorted(set(text))
            ax.plot([labels.index(x) for x in text], ys, "o")
            ax.set_xticks(range(len(labels)))
            ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=7)
        ax.set_xlabel(path.split(".")[-1])
        ax.set_ylabel(metric)
    fig.tight_layout()
    _save(fig, folder / "parameters.png")
    plt.close(fig)
    if study is not None and len(done) >= 3 and len(params) >= 1:
        try:
            import optuna
            imp = optuna.importance.get_param_importances(study)
        except Exception:
            imp = None
        if imp:
            fig, ax = plt.subplots(figsize=(6, 0.5 + 0.5 * len(imp)))
            names = list(imp)[::-1]
            ax.barh([n.split(".")[-1] for n in names], [imp[n] for n in names])
            ax.set_xlabel(f"importance for {metric}")
            fig.tight_layout()
            _save(fig, folder / "importance.png")
            plt.close(fig)


def _save(fig, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=90)
    os.replace(tmp, path)
