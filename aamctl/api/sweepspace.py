"""A Sweep's search space and its trials as documents: the parameters as Params, the template a
trial starts from, and the Run (and derived Model) documents of one trial. Part of the manifest
language: the Sweep rules judge these documents, the sweep controller applies them."""
from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from pathlib import Path

import yaml

from aam_runtime.metric_table import METRICS, split_metric

from aamctl.api.parse import parse_text
from aamctl.api.resolve import Obj, Resolved, content_hash, normalize
from aamctl.api.schema import API_VERSION, field_schema

# fields that change the search itself; maxTrials, parallelism and maxFailedTrials do not
BUDGET_FIELDS = ("maxTrials", "parallelism", "maxFailedTrials")
NOT_SWEEPABLE = (("spec", "executor"), ("spec", "hardwareRef"), ("spec", "datasetRef"), ("spec", "stage"))
CHECK_VALUES = 200  # a range of at most this many grid points is checked point by point (lists: every value)


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


def stored_template(store, manifest: dict) -> dict:
    """The template of an applied Sweep (its runRef looked up in the store)."""
    return template_spec(Resolved(given=[], objects={}, store=store),
                         Obj("Sweep", manifest["metadata"]["name"], manifest, source="store"))


def template_spec(res: Resolved, sweep: Obj) -> dict:
    s = sweep.spec
    if s.get("template") is not None:
        return copy.deepcopy(s["template"])
    return copy.deepcopy(lookup(res, "Run", s["runRef"])["spec"])


def lookup(res: Resolved, kind: str, name: str) -> dict | None:
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
            m = lookup(res, "Model", spec["modelRef"])
            return (spec["modelRef"], m) if m else None
        src = (spec.get("initFrom") or {}).get("run")
        if not src or src in seen:
            return None
        seen.add(src)
        run = lookup(res, "Run", src)
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
        docs.append({"apiVersion": API_VERSION, "kind": "Model",
                     "metadata": {"name": name, "labels": run_labels,
                                  "annotations": {"aam/derived-from": model[0]}},
                     "spec": model_spec})
        spec["modelRef"] = name
    docs.append({"apiVersion": API_VERSION, "kind": "Run",
                 "metadata": {"name": name, "labels": run_labels}, "spec": spec})
    return docs


def as_documents(manifests: list[dict], origin: str):
    text = yaml.safe_dump_all(manifests, sort_keys=False)
    return parse_text(text, origin, Path.cwd())


def template_run(res: Resolved, sweep: Obj) -> Obj:
    """The template as a resolved Run object (for the data preflight)."""
    manifests = trial_manifests(sweep.name, {}, template_spec(res, sweep), 0, {}, [], None)
    return normalize(as_documents(manifests, f"sweep/{sweep.name} template")[-1])
