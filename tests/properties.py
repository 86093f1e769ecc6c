"""Manifests generated from our own JSON Schemas (Hypothesis + hypothesis-jsonschema), and the
one-step check a generated manifest must pass: refused with a position, or it trains its first
optimisation step. Used by tests/test_properties.py (a bounded budget, in CI) and by
benchmarks/property_manifests.py (a larger one)."""
from __future__ import annotations

import copy
import json
import re
import sys
from pathlib import Path

import yaml

from aamctl.api import schema as S

# a pattern's "$(?!\n)" (no trailing newline) means "end of string" for generation
_END = re.compile(r"\$\(\?!\\n\)$")


def inline(node, base: str, depth: int = 0):
    """A kind's schema with every $ref replaced by its target, and patterns Hypothesis can draw."""
    if depth > 40:
        return node
    if isinstance(node, list):
        return [inline(x, base, depth + 1) for x in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target, new_base = S._resolve(node, base)
        return inline(target, new_base, depth + 1)
    out = {}
    for k, v in node.items():
        if k in ("$id", "$schema", "$defs"):
            continue
        if k == "pattern" and isinstance(v, str):
            v = _END.sub(r"\\Z", v)
        elif k in ("properties", "patternProperties", "$defs"):
            v = {pk: inline(pv, base, depth + 1) for pk, pv in v.items()}
        else:
            v = inline(v, base, depth + 1)
        out[k] = v
    return out


def kind_schema(kind: str) -> dict:
    root = S.kind_schema(kind)
    return inline(copy.deepcopy(root), root["$id"])


def spec_schema(kind: str, *path: str) -> dict:
    """The (inlined) schema of spec[.path...] of a kind, with small collections."""
    node = kind_schema(kind)["properties"]["spec"]
    for key in path:
        node = _object_of(node)["properties"][key]
    return _small(node)


def _object_of(node: dict) -> dict:
    if "properties" in node:
        return node
    for key in ("oneOf", "anyOf"):
        for branch in node.get(key, []):
            if isinstance(branch, dict) and "properties" in branch:
                return branch
    return node


def _small(node, depth: int = 0):
    """Cap array sizes so a generated manifest stays a manifest a person could write."""
    if isinstance(node, list):
        return [_small(x, depth) for x in node]
    if not isinstance(node, dict):
        return node
    out = {k: _small(v, depth + 1) for k, v in node.items()}
    if out.get("type") == "array" or "items" in out:
        out["maxItems"] = min(out.get("maxItems", 4), 4)
    return out


def strategy(kind: str, *path: str):
    from hypothesis_jsonschema import from_schema

    return from_schema(spec_schema(kind, *path))


# ---------------------------------------------------------------- the one-step check

def template(data: dict) -> dict:
    ds = {"apiVersion": "aam/v1alpha1", "kind": "Dataset", "metadata": {"name": "synth"},
          "spec": {"table": str(data["table"]), "tree": str(data["tree"]), "metadata": {"path": str(data["metadata"])},
                   "targets": [{"name": "age", "type": "regression"}, {"name": "site", "type": "classification"}],
                   "categoricalColumns": ["site"]}}
    model = {"apiVersion": "aam/v1alpha1", "kind": "Model", "metadata": {"name": "micro"},
             "spec": {"embeddingDim": 8, "ffnMultiplier": 1, "dropout": 0.0, "nucleotide": {"heads": 2, "layers": 1},
                      "sample": {"heads": 2, "layers": 1}, "encoderHead": {"heads": 2, "layers": 1},
                      "targetHead": {"heads": 2, "layers": 1}}}
    hw = {"apiVersion": "aam/v1alpha1", "kind": "HardwareProfile", "metadata": {"name": "cpu-test"},
          "spec": {"accelerator": "cpu", "cpusPerTask": 1, "env": {"OMP_NUM_THREADS": "1"}}}
    run = {"apiVersion": "aam/v1alpha1", "kind": "Run", "metadata": {"name": "generated"},
           "spec": {"stage": "pretrain", "datasetRef": "synth", "modelRef": "micro", "hardwareRef": "cpu-test",
                    "trainer": {"epochs": 1, "batchSize": 4, "learningRate": 0.001, "warmupSteps": 1,
                                "logEverySteps": 1},
                    "logging": {"wandb": {"mode": "disabled"}}}}
    return {"Dataset": ds, "Model": model, "HardwareProfile": hw, "Run": run}


# the sizes a first step on 24 tiny samples can afford (a generated Model of width 1024 and 24
# layers is valid, and would train, in minutes): larger ones are scaled down, not skipped
MODEL_CAPS = {"embeddingDim": 32, "layers": 2, "hidden": 32, "categoricalEmbeddingDim": 16}


def shrink_model(spec: dict) -> dict:
    spec = copy.deepcopy(spec)
    if "embeddingDim" in spec:
        spec["embeddingDim"] = min(spec["embeddingDim"], MODEL_CAPS["embeddingDim"])
    if "categoricalEmbeddingDim" in spec:
        spec["categoricalEmbeddingDim"] = min(spec["categoricalEmbeddingDim"], MODEL_CAPS["categoricalEmbeddingDim"])
    for level in ("nucleotide", "sample", "encoderHead", "targetHead"):
        part = spec.get(level)
        if isinstance(part, dict):
            if "layers" in part:
                part["layers"] = min(part["layers"], MODEL_CAPS["layers"])
            if isinstance(part.get("hidden"), list):
                part["hidden"] = [min(h, MODEL_CAPS["hidden"]) for h in part["hidden"]]
    return spec


def shrink_trainer(tr: dict) -> dict:
    """A first step is what is checked: bounded epochs and steps, a batch the tiny data holds."""
    tr = copy.deepcopy(tr)
    tr["epochs"] = min(tr.get("epochs", 1), 2)
    if tr.get("maxSteps"):
        tr["maxSteps"] = min(tr["maxSteps"], 3)
    if isinstance(tr.get("batchSize"), int):
        tr["batchSize"] = min(tr["batchSize"], 8)
    if isinstance(tr.get("autoBatch"), dict) and tr["autoBatch"].get("maxBatchSize"):
        tr["autoBatch"]["maxBatchSize"] = min(tr["autoBatch"]["maxBatchSize"], 8)
    tr.pop("profile", None)  # traces are megabytes a step; profiling has its own tests
    if isinstance(tr.get("effectiveBatchSize"), int):
        tr["effectiveBatchSize"] = min(tr["effectiveBatchSize"], 16)
    return tr


def one_step(docs: dict, folder: Path) -> tuple[str, str]:
    """('refused', message) or ('ran', exit code): validate, apply's local checks and preflight,
    plan, then the runtime in this process with a PREEMPT flag, so it stops after its first
    step. Any other outcome (an exception, a traceback, a crash in the run) raises."""
    from aam_runtime import runfolder as RF
    from aamctl.runs.apply import check_local_fit, run_preflight
    from aamctl.errors import AamError
    from aamctl.api.parse import parse_text
    from aamctl.planning.plan import build_plan
    from aamctl.api.validate import validate

    folder.mkdir(parents=True, exist_ok=True)
    f = folder / "m.yaml"
    f.write_text(yaml.safe_dump_all(list(docs.values()), sort_keys=False))
    try:
        res = validate(parse_text(f.read_text(), str(f), folder))
        run = res.get("Run", "generated")
        diags = check_local_fit(res, [run]) or run_preflight(res, [run])
        if diags:
            raise AamError(diags)
    except AamError as err:
        text = err.render()
        assert f"{f}:" in text and "internal error" not in text, text
        return "refused", text.splitlines()[0][len(str(f)):]
    plan = build_plan(res, run, generation=1, run_hash=res.run_hash(run), home=folder / "home", upstream=None,
                      provenance={}, python=sys.executable)
    plan.folder.mkdir(parents=True)
    for name, text in plan.files.items():
        (plan.folder / name).write_text(text)
    (plan.folder / RF.PREEMPT_FLAG).write_text("")
    from aam_runtime.__main__ import main

    code = main([str(plan.folder)])
    status = json.loads((plan.folder / RF.STATUS).read_text())
    assert code in (RF.EXIT_OK, RF.EXIT_PREEMPTED), (code, status.get("error"), f.read_text())
    return "ran", str(code)


TALLY: dict[str, dict[str, int]] = {}  # what the generated manifests came to, for the report


def record(kind: str, outcome: str) -> None:
    TALLY.setdefault(kind, {}).setdefault(outcome, 0)
    TALLY[kind][outcome] += 1


def flush_tally() -> None:
    """Write TALLY where AAM_PROPERTY_TALLY names (the benchmark reads it), merged with what is there."""
    import os

    path = os.environ.get("AAM_PROPERTY_TALLY")
    if not path:
        return
    p = Path(path)
    have = json.loads(p.read_text()) if p.exists() else {}
    for kind, outcomes in TALLY.items():
        for k, v in outcomes.items():
            have.setdefault(kind, {}).setdefault(k, 0)
            have[kind][k] += v
    p.write_text(json.dumps(have))
    TALLY.clear()
