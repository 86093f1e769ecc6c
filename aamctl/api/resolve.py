"""Validated documents -> fully resolved, canonical objects with stable content hashes.

Resolution fills schema defaults, makes paths absolute (against the manifest's folder) and looks
references up among the given documents, the store of applied objects and the built-in
HardwareProfiles. It checks nothing else: validate.py runs the schema before and the cross-field
rules after it.
"""
from __future__ import annotations

import difflib
import functools
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from aam_runtime.runfolder import RESOLVED_KEY

from aamctl.api.parse import Document, parse_text
from aamctl.api.schema import coerce_integers, fill_defaults
from aamctl.errors import AamError, Diagnostic
from aamctl.resources import builtins_dir

URI_RE = re.compile(r"^[a-z][a-z0-9+.-]*://")

# fields holding paths, per kind (relative paths resolve against the manifest's folder)
PATH_FIELDS = {
    "Dataset": [("spec", "table"), ("spec", "tree"), ("spec", "distanceMatrix"), ("spec", "taxonomy"),
                ("spec", "metadata", "path"),
                ("spec", "split", "trainIds"), ("spec", "split", "validationIds")],
    "Run": [("spec", "initFrom", "checkpoint")],
    "HardwareProfile": [("spec", "container", "image")],
    "Model": [],
    "Sweep": [("spec", "template", "initFrom", "checkpoint")],
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
    folder = builtins_dir()
    docs = []
    for f in sorted(folder.glob("*.yaml")):
        docs.extend(parse_text(f.read_text(), str(f), f.parent))
    return tuple(docs)


def normalize(doc: Document) -> Obj:
    """A schema-valid document -> Obj with defaults filled and absolute paths."""
    kind = doc.data["kind"]
    data = {k: v for k, v in doc.data.items() if k != RESOLVED_KEY}  # a record's decisions are made afresh
    manifest = coerce_integers(kind, fill_defaults(kind, data))
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
    store: Store | None = None  # where references not given were looked up

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
        sources = init_runs(s)
        if sources:
            out["init"] = self.get("Run", sources[0])
            out["inits"] = [self.get("Run", n) for n in sources]
        return out

    def run_hash(self, run: Obj) -> str:
        """Hash of a Run and everything it uses: a change to any of them is a new generation."""
        parts = [run.hash]
        bundle = self.run_bundle(run)
        for key in ("dataset", "model", "hardware"):
            if key in bundle:
                parts.append(bundle[key].hash)
        for src in bundle.get("inits", []):
            parts.append(self.run_hash(src))
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def init_runs(spec: dict) -> list[str]:
    """The Runs a Run starts from: initFrom.run, or every one of initFrom.runs (an ensemble)."""
    init = spec.get("initFrom") or {}
    if init.get("runs"):
        return list(init["runs"])
    return [init["run"]] if init.get("run") else []


def run_split(spec: dict) -> dict:
    """The fields a Run's spec.split sets over its Dataset's split (null fields keep the Dataset's);
    {} for a predict run, which does not split."""
    if spec["stage"] == "predict":
        return {}
    return {k: v for k, v in (spec.get("split") or {}).items() if v is not None}


def init_field(spec: dict, name: str) -> tuple:
    """The manifest path of one source run in initFrom, for diagnostics."""
    init = spec.get("initFrom") or {}
    if init.get("runs") and name in init["runs"]:
        return ("spec", "initFrom", "runs", init["runs"].index(name))
    return ("spec", "initFrom", "run")


def effective_model_ref(res: Resolved, run: Obj, _seen=None) -> str | None:
    """The Model a Run uses: its modelRef, else its (first) initFrom run's."""
    s = run.spec
    if s.get("modelRef"):
        return s["modelRef"]
    sources = init_runs(s)
    if sources and ("Run", sources[0]) in res.objects:
        seen = _seen or set()
        if sources[0] in seen:
            return None
        seen.add(sources[0])
        return effective_model_ref(res, res.objects[("Run", sources[0])], seen)
    return None


def resolve(docs: list[Document], store: Store | None = None) -> Resolved:
    """Schema-valid, uniquely named documents -> defaults filled, paths absolute, references looked
    up (given documents first, then the store, then the built-ins). Raises AamError listing every
    reference that cannot be found and every initFrom cycle."""
    given = [normalize(doc) for doc in docs]
    res = Resolved(given=given, objects={o.key: o for o in given}, store=store or MemoryStore())
    diags = _missing_references(res)
    if diags:
        raise AamError(diags)
    diags = _init_cycles(res)
    if diags:
        raise AamError(diags)
    return res


def _find(res: Resolved, kind: str, name: str) -> Obj | None:
    """An object by kind and name: given, else stored (then kept in res.objects), else built in."""
    if (kind, name) in res.objects:
        return res.objects[(kind, name)]
    stored = res.store.get_object(kind, name)
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


def _missing(res: Resolved, obj: Obj, kind: str, name: str, path) -> Diagnostic:
    """A reference that names nothing: say what it names instead, or the nearest name."""
    other = next((k for k in ("Dataset", "Model", "HardwareProfile", "Run") if k != kind and _find(res, k, name)), None)
    if other is not None:
        return obj.diag(f"{kind} '{name}' not found; '{name}' is a {other}", path,
                        hint=f"{[p for p in path if isinstance(p, str)][-1]} names a {kind}; point it at one (aamctl get {kind.lower()}s)")
    known = {n for k, n in res.objects if k == kind}
    if kind == "HardwareProfile":
        known |= {d.data["metadata"]["name"] for d in builtin_documents()}
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    hint = f"did you mean '{close[0]}'?" if close else (
        f"apply a {kind} named '{name}' first or pass its file with -f")
    return obj.diag(f"{kind} '{name}' not found", path, hint=hint)


def _missing_references(res: Resolved) -> list[Diagnostic]:
    """References, transitively (a Run's initFrom run may come from the store); a Sweep's
    template refers like a Run, and its runRef names one."""
    diags: list[Diagnostic] = []
    queue: list[tuple[Obj, dict, tuple]] = [(o, o.spec, ("spec",)) for o in res.given if o.kind == "Run"]
    for sw in [o for o in res.given if o.kind == "Sweep"]:
        if sw.spec.get("template") is not None:
            queue.append((sw, sw.spec["template"], ("spec", "template")))
        elif sw.spec.get("runRef"):
            target = _find(res, "Run", sw.spec["runRef"])
            if target is None:
                diags.append(_missing(res, sw, "Run", sw.spec["runRef"], ("spec", "runRef")))
            else:
                queue.append((target, target.spec, ("spec",)))
    checked = set()
    while queue:
        run, s, at = queue.pop()
        if (run.kind, run.name) in checked:
            continue
        checked.add((run.kind, run.name))
        for kind, fld in (("Dataset", "datasetRef"), ("Model", "modelRef"), ("HardwareProfile", "hardwareRef")):
            if s.get(fld) and _find(res, kind, s[fld]) is None:
                diags.append(_missing(res, run, kind, s[fld], at + (fld,)))
        for name in init_runs(s):
            target = _find(res, "Run", name)
            if target is None:
                diags.append(_missing(res, run, "Run", name, at + init_field(s, name)[1:]))
            else:
                queue.append((target, target.spec, ("spec",)))
    return diags


def _init_cycles(res: Resolved) -> list[Diagnostic]:
    """Runs of this apply that start, through initFrom, from themselves."""
    def cycle(chain: list[str], cur: Obj) -> list[str] | None:
        for nxt in init_runs(cur.spec):
            if nxt in chain:
                return chain + [nxt]
            src = res.objects.get(("Run", nxt))
            found = cycle(chain + [nxt], src) if src is not None else None
            if found:
                return found
        return None

    diags = []
    for run in [o for o in res.objects.values() if o.kind == "Run" and o in res.given]:
        found = cycle([run.name], run)
        if found:
            diags.append(run.diag(f"initFrom forms a cycle: {' -> '.join(found)}",
                                  init_field(run.spec, found[1]), hint="a run cannot start from itself"))
    return diags


def run_targets(spec: dict, dataset_spec: dict) -> list[str]:
    """The target column(s) a Run predicts: its targets, else its target, else its Dataset's
    first (none when the Dataset declares none)."""
    if spec.get("targets"):
        return [t["name"] for t in spec["targets"]]
    if spec.get("target"):
        return [spec["target"]]
    declared = dataset_spec.get("targets") or []
    return [declared[0]["name"]] if declared else []


def needs_distances(spec: dict) -> bool:
    """Whether a Run reads its Dataset's UniFrac distances (pretraining, or fine-tuning that keeps
    the UniFrac loss)."""
    w = spec["trainer"]["lossWeights"]
    return (spec["stage"] == "pretrain" and w["unifrac"] > 0) or \
        (spec["stage"] == "finetune" and w.get("unifracWhenFinetuning", 0) > 0)
