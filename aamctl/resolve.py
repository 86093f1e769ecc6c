"""Validated documents -> fully resolved, canonical objects with stable content hashes.

Resolution fills schema defaults, makes paths absolute (against the manifest's folder), looks
references up among the given documents, the store of applied objects and the built-in
HardwareProfiles, and checks the cross-field rules JSON Schema cannot express.
"""
from __future__ import annotations

import functools
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from .errors import AamError, Diagnostic
from .parse import Document, parse_text
from .schema import coerce_integers, fill_defaults, validate_document

URI_RE = re.compile(r"^[a-z][a-z0-9+.-]*://")

# fields holding paths, per kind (relative paths resolve against the manifest's folder)
PATH_FIELDS = {
    "Dataset": [("spec", "table"), ("spec", "tree"), ("spec", "distanceMatrix"), ("spec", "metadata", "path"),
                ("spec", "split", "trainIds"), ("spec", "split", "validationIds")],
    "Run": [("spec", "initFrom", "checkpoint")],
    "HardwareProfile": [("spec", "container", "image")],
    "Model": [],
}


@dataclass
class Obj:
    """One resolved object."""

    kind: str
    name: str
    manifest: dict
    doc: Document | None = None  # where it was written (None: from the store or built in)
    source: str = "file"  # file | store | builtin

    @property
    def spec(self) -> dict:
        return self.manifest["spec"]

    @property
    def key(self) -> tuple[str, str]:
        return (self.kind, self.name)

    @property
    def hash(self) -> str:
        return content_hash(self.manifest)

    def diag(self, message, path=(), hint=None) -> Diagnostic:
        if self.doc is not None:
            return self.doc.diag(message, path, hint=hint)
        return Diagnostic(message, file=f"{self.kind.lower()}/{self.name} ({self.source})",
                          field=".".join(map(str, path)) or None, hint=hint)


class Store(Protocol):
    """What resolution needs from the controller's state: applied objects by kind and name."""

    def get_object(self, kind: str, name: str) -> dict | None: ...


class MemoryStore:
    def __init__(self, objects: dict[tuple[str, str], dict] | None = None):
        self.objects = objects or {}

    def get_object(self, kind, name):
        return self.objects.get((kind, name))


def canonical(manifest: dict) -> dict:
    """The part of a manifest that defines it (annotations are provenance, not content)."""
    meta = manifest.get("metadata", {})
    return {"apiVersion": manifest.get("apiVersion"), "kind": manifest.get("kind"),
            "metadata": {"name": meta.get("name"), "labels": meta.get("labels", {})},
            "spec": manifest.get("spec", {})}


def content_hash(manifest: dict) -> str:
    text = json.dumps(canonical(manifest), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _get(d: dict, path):
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return None
        d = d[p]
    return d


def _set(d: dict, path, value):
    for p in path[:-1]:
        d = d[p]
    d[path[-1]] = value


@functools.lru_cache(maxsize=None)
def builtin_documents() -> tuple[Document, ...]:
    folder = Path(__file__).resolve().parent / "builtins"
    docs = []
    for f in sorted(folder.glob("*.yaml")):
        docs.extend(parse_text(f.read_text(), str(f), f.parent))
    return tuple(docs)


def normalize(doc: Document) -> Obj:
    """A schema-valid document -> Obj with defaults filled and absolute paths."""
    kind = doc.data["kind"]
    manifest = coerce_integers(kind, fill_defaults(kind, doc.data))
    for path in PATH_FIELDS[kind]:
        value = _get(manifest, path)
        if isinstance(value, str) and not URI_RE.match(value):
            p = Path(value).expanduser()
            if not p.is_absolute():
                p = (doc.base_dir / p)
            _set(manifest, path, str(Path(p).resolve()))
    return Obj(kind=kind, name=manifest["metadata"]["name"], manifest=manifest, doc=doc)


@dataclass
class Resolved:
    """Everything a set of manifests needs, resolved; `given` are the objects the user passed."""

    given: list[Obj]
    objects: dict[tuple[str, str], Obj] = field(default_factory=dict)

    def get(self, kind: str, name: str) -> Obj:
        return self.objects[(kind, name)]

    def run_bundle(self, run: Obj) -> dict[str, Obj]:
        """The Dataset, Model, HardwareProfile (and initFrom Run) a Run uses."""
        s = run.spec
        out = {"run": run, "dataset": self.get("Dataset", s["datasetRef"]),
               "hardware": self.get("HardwareProfile", s["hardwareRef"])}
        model_name = effective_model_ref(self, run)
        if model_name:
            out["model"] = self.get("Model", model_name)
        init = s.get("initFrom") or {}
        if init.get("run"):
            out["init"] = self.get("Run", init["run"])
        return out

    def run_hash(self, run: Obj) -> str:
        """Hash of a Run and everything it uses: a change to any of them is a new generation."""
        parts = [run.hash]
        bundle = self.run_bundle(run)
        for key in ("dataset", "model", "hardware"):
            if key in bundle:
                parts.append(bundle[key].hash)
        if "init" in bundle:
            parts.append(self.run_hash(bundle["init"]))
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def effective_model_ref(res: Resolved, run: Obj, _seen=None) -> str | None:
    s = run.spec
    if s.get("modelRef"):
        return s["modelRef"]
    init = s.get("initFrom") or {}
    if init.get("run") and ("Run", init["run"]) in res.objects:
        seen = _seen or set()
        if init["run"] in seen:
            return None
        seen.add(init["run"])
        return effective_model_ref(res, res.objects[("Run", init["run"])], seen)
    return None


def resolve(docs: list[Document], store: Store | None = None) -> Resolved:
    """Validate, normalize and resolve documents; raises AamError with every problem found."""
    store = store or MemoryStore()
    diags: list[Diagnostic] = []
    given: list[Obj] = []
    seen: dict[tuple[str, str], Obj] = {}
    for doc in docs:
        problems = validate_document(doc)
        if problems:
            diags.extend(problems)
            continue
        obj = normalize(doc)
        if obj.key in seen:
            first = seen[obj.key].doc
            diags.append(doc.diag(f"duplicate {obj.kind} named '{obj.name}'", ("metadata", "name"),
                                  hint=f"first defined at {first.file}:{first.where(('metadata', 'name'))[0]}; "
                                       "names are unique per kind"))
            continue
        seen[obj.key] = obj
        given.append(obj)
    if diags:
        raise AamError(diags)

    res = Resolved(given=given, objects=dict(seen))

    def lookup(kind: str, name: str) -> Obj | None:
        if (kind, name) in res.objects:
            return res.objects[(kind, name)]
        stored = store.get_object(kind, name)
        if stored is not None:
            obj = Obj(kind=kind, name=name, manifest=stored, source="store")
            res.objects[(kind, name)] = obj
            return obj
        if kind == "HardwareProfile":
            for bdoc in builtin_documents():
                if bdoc.data["metadata"]["name"] == name:
                    obj = normalize(bdoc)
                    obj.source = "builtin"
                    obj.doc = None
                    res.objects[(kind, name)] = obj
                    return obj
        return None

    def known(kind):
        names = {n for k, n in res.objects if k == kind}
        if kind == "HardwareProfile":
            names |= {d.data["metadata"]["name"] for d in builtin_documents()}
        return sorted(names)

    def missing(obj: Obj, kind: str, name: str, path) -> Diagnostic:
        import difflib
        other = next((k for k in ("Dataset", "Model", "HardwareProfile", "Run") if k != kind and lookup(k, name)), None)
        if other is not None:
            return obj.diag(f"{kind} '{name}' not found; '{name}' is a {other}", path,
                            hint=f"{path[-1]} names a {kind}; point it at one (aamctl get {kind.lower()}s)")
        close = difflib.get_close_matches(name, known(kind), n=1, cutoff=0.6)
        hint = f"did you mean '{close[0]}'?" if close else (
            f"apply a {kind} named '{name}' first or pass its file with -f")
        return obj.diag(f"{kind} '{name}' not found", path, hint=hint)

    # references, transitively (a Run's initFrom run may come from the store)
    queue = [o for o in given if o.kind == "Run"]
    checked = set()
    while queue:
        run = queue.pop()
        if run.name in checked:
            continue
        checked.add(run.name)
        s = run.spec
        for kind, fld in (("Dataset", "datasetRef"), ("Model", "modelRef"), ("HardwareProfile", "hardwareRef")):
            if s.get(fld) and lookup(kind, s[fld]) is None:
                diags.append(missing(run, kind, s[fld], ("spec", fld)))
        init = s.get("initFrom") or {}
        if init.get("run"):
            target = lookup("Run", init["run"])
            if target is None:
                diags.append(missing(run, "Run", init["run"], ("spec", "initFrom", "run")))
            else:
                queue.append(target)
    if diags:
        raise AamError(diags)

    # cycles through initFrom
    for run in [o for o in res.objects.values() if o.kind == "Run"]:
        chain = [run.name]
        cur = run
        while (cur.spec.get("initFrom") or {}).get("run"):
            nxt = cur.spec["initFrom"]["run"]
            if nxt in chain:
                if run in given:
                    diags.append(run.diag(f"initFrom forms a cycle: {' -> '.join(chain + [nxt])}",
                                          ("spec", "initFrom", "run"), hint="a run cannot start from itself"))
                break
            chain.append(nxt)
            cur = res.objects.get(("Run", nxt))
            if cur is None:
                break
    if diags:
        raise AamError(diags)

    for obj in given:
        diags.extend(check_rules(res, obj))
    if diags:
        raise AamError(diags)
    return res


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
            if names.count(t["name"]) > 1 and names.index(t["name"]) != i:
                d.append(obj.diag(f"target '{t['name']}' is listed twice", ("spec", "targets", i, "name")))
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
    elif obj.kind == "HardwareProfile":
        total = s["nodes"] * s["devicesPerNode"]
        if s["strategy"] == "fsdp" and total < 2:
            d.append(obj.diag("strategy fsdp needs more than one device", ("spec", "strategy"),
                              hint="use strategy none for a single device, or raise devicesPerNode/nodes"))
        if s["strategy"] == "none" and total > 1:
            d.append(obj.diag(f"{total} devices but strategy none", ("spec", "strategy"),
                              hint="use ddp (or fsdp) to train on several devices"))
        if s["accelerator"] == "cpu" and s["precision"] == "fp16":
            d.append(obj.diag("fp16 is not supported on CPU", ("spec", "precision"), hint="use bf16 or no"))
        if s["accelerator"] == "rocm" and s["compileAllowed"]:
            d.append(obj.diag("torch.compile fails on ROCm (inductor type error)", ("spec", "compileAllowed"),
                              hint="set compileAllowed: false"))
        if s["attentionBackend"] == "flash" and s["accelerator"] != "cuda":
            d.append(obj.diag(f"flash attention is not available on {s['accelerator']}", ("spec", "attentionBackend"),
                              hint="use auto, math or mem_efficient"))
        lim = s["slurm"]
        if lim.get("maxTimeLimit") and _time_seconds(lim["defaultTimeLimit"]) > _time_seconds(lim["maxTimeLimit"]):
            d.append(obj.diag("defaultTimeLimit exceeds maxTimeLimit", ("spec", "slurm", "defaultTimeLimit")))
        if lim.get("maxNodes") and s["nodes"] > lim["maxNodes"]:
            d.append(obj.diag(f"nodes {s['nodes']} exceeds maxNodes {lim['maxNodes']}", ("spec", "nodes")))
    elif obj.kind == "Run":
        d.extend(_check_run(res, obj))
    return d


def _check_run(res: Resolved, run: Obj) -> list[Diagnostic]:
    d: list[Diagnostic] = []
    s = run.spec
    stage = s["stage"]
    ds = res.get("Dataset", s["datasetRef"])
    hw = res.get("HardwareProfile", s["hardwareRef"])
    tr = s["trainer"]
    init = s.get("initFrom") or {}
    if init:
        if bool(init.get("run")) == bool(init.get("checkpoint")):
            d.append(run.diag("initFrom needs exactly one of run or checkpoint", ("spec", "initFrom"),
                              hint="initFrom: {run: NAME} or initFrom: {checkpoint: PATH}"))
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
    model_ref = effective_model_ref(res, run)
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
            d.append(run.diag(f"modelRef '{s['modelRef']}' differs from the model of initFrom run ('{src_model}')",
                              ("spec", "modelRef"), hint="drop modelRef to inherit the pretrained model"))
    if stage == "pretrain":
        uw = tr["lossWeights"]["unifrac"]
        if uw > 0:
            if tr["batchSize"] < 2 or tr["batchSize"] % 2:
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
    metric = tr["earlyStopping"]["metric"]
    metric_stage = {"mae": "finetune", "rmse": "finetune", "r2": "finetune", "accuracy": "finetune",
                    "f1": "finetune", "auroc": "finetune", "unifrac_mae": "pretrain", "nuc_accuracy": "pretrain"}
    if stage in ("pretrain", "finetune") and metric in metric_stage and metric_stage[metric] != stage:
        d.append(run.diag(f"metric '{metric}' is not computed by a {stage} run",
                          ("spec", "trainer", "earlyStopping", "metric"), hint="use val_loss"))
    if stage == "finetune":
        tname = s.get("target") or (ds.spec["targets"][0]["name"] if ds.spec["targets"] else None)
        ttype = next((t["type"] for t in ds.spec["targets"] if t["name"] == tname), None)
        if ttype == "regression" and metric in ("accuracy", "f1", "auroc"):
            d.append(run.diag(f"metric '{metric}' needs a classification target", ("spec", "trainer", "earlyStopping", "metric"),
                              hint="use val_loss, mae, rmse or r2"))
        if ttype == "classification" and metric in ("mae", "rmse", "r2"):
            d.append(run.diag(f"metric '{metric}' needs a regression target", ("spec", "trainer", "earlyStopping", "metric"),
                              hint="use val_loss, accuracy, f1 or auroc"))
    if s["freezeBase"] and not init:
        d.append(run.diag("freezeBase needs pretrained weights", ("spec", "freezeBase"), hint="add initFrom or remove freezeBase"))
    ex = s["executor"]
    hs = hw.spec
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

