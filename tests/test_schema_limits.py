"""Values the schema accepts must run: integer fields arrive as ints, every number has bounds the
engine honours (fed to resolve and to the first training step), and no pattern lets a trailing
newline through."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from aamctl.errors import AamError
from aamctl.api.parse import parse_text
from aamctl.api.validate import validate

SCHEMAS = Path(__file__).resolve().parent.parent / "schemas" / "v1alpha1"

# One valid value per pattern in the schemas. A new pattern without a sample fails the test below:
# add one, so that its behaviour with a trailing newline is checked too.
PATTERN_SAMPLES = {
    "^auto$(?!\\n)": "auto",
    "^/[A-Za-z0-9_./$-]*$(?!\\n)": "/scratch/$USER/job_$SLURM_JOB_ID",
    "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$(?!\\n)": "r-nl",
    "^([a-z0-9.-]+/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$(?!\\n)": "aam.dev/team",
    "^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$(?!\\n)": "oral",
    "^[A-Za-z_][A-Za-z0-9_]*$(?!\\n)": "OMP_NUM_THREADS",
    "^([0-9]+-)?([0-9]{1,2}:)?[0-9]{1,2}(:[0-9]{2})?$(?!\\n)": "1-12:00:00",
    "^[0-9]+[KMGT]?$(?!\\n)": "480G",
    "^[0-9]+\\.[0-9]+(\\.[0-9]+)?$(?!\\n)": "6.3",
    "^[A-Za-z0-9_&|!()\\[\\]*-]+$(?!\\n)": "mi300a&hsn",
    "^[A-Za-z0-9_.,-]+$(?!\\n)": "gpu,debug",
    "^[A-Za-z0-9_.-]+$(?!\\n)": "my-account",
    "^[A-Za-z0-9_./+-]+$(?!\\n)": "rocm/6.3.0",
    "^[A-Za-z0-9_:-]+$(?!\\n)": "gpu:a100",
    "^(spec|model\\.spec)(\\.[A-Za-z][A-Za-z0-9]*)+$(?!\\n)": "model.spec.targetHead.hidden",
    "^(mae|rmse|r2|accuracy|f1|auroc):[^:\\r\\n]+$(?!\\n)": "mae:age",
}


def _patterns(node, out):
    if isinstance(node, dict):
        if isinstance(node.get("pattern"), str):
            out.add(node["pattern"])
        for v in node.values():
            _patterns(v, out)
    elif isinstance(node, list):
        for v in node:
            _patterns(v, out)
    return out


ALL_PATTERNS = sorted(set().union(*(_patterns(json.loads(f.read_text()), set()) for f in SCHEMAS.glob("*.json"))))


@pytest.mark.parametrize("pattern", ALL_PATTERNS)
def test_no_pattern_accepts_a_trailing_newline(pattern):
    assert pattern in PATTERN_SAMPLES, f"add a valid sample for the new pattern {pattern!r} to PATTERN_SAMPLES"
    v = Draft202012Validator({"type": "string", "pattern": pattern})
    sample = PATTERN_SAMPLES[pattern]
    assert v.is_valid(sample)
    for bad in (sample + "\n", sample + "\r\n", "\n" + sample, sample + "\n" + sample):
        assert not v.is_valid(bad), repr(bad)


MANIFEST_WITH = {
    "name": "apiVersion: aam/v1alpha1\nkind: Model\nmetadata: {name: \"r-nl\\n\"}\nspec: {}\n",
    "label key": "apiVersion: aam/v1alpha1\nkind: Model\nmetadata: {name: m, labels: {\"team\\n\": a}}\nspec: {}\n",
    "label value": "apiVersion: aam/v1alpha1\nkind: Model\nmetadata: {name: m, labels: {team: \"a\\n\"}}\nspec: {}\n",
    "env key": "apiVersion: aam/v1alpha1\nkind: HardwareProfile\nmetadata: {name: h}\n"
               "spec: {accelerator: cpu, env: {\"OMP\\n\": \"1\"}}\n",
    "time limit": "apiVersion: aam/v1alpha1\nkind: HardwareProfile\nmetadata: {name: h}\n"
                  "spec: {accelerator: cpu, slurm: {defaultTimeLimit: \"01:00:00\\n\"}}\n",
}


@pytest.mark.parametrize("what", sorted(MANIFEST_WITH))
def test_manifest_values_with_a_trailing_newline_are_refused(what):
    with pytest.raises(AamError) as err:
        validate(parse_text(MANIFEST_WITH[what], "m.yaml"))
    assert "m.yaml:" in err.value.render()


def test_integral_floats_arrive_as_ints():
    text = """apiVersion: aam/v1alpha1
kind: Run
metadata: {name: r}
spec:
  stage: pretrain
  datasetRef: d
  modelRef: m
  hardwareRef: cpu
  trainer: {batchSize: 16.0, epochs: 2.0, seed: 7.0, learningRate: 1.0e-3}
---
apiVersion: aam/v1alpha1
kind: Model
metadata: {name: m}
spec: {embeddingDim: 16.0, targetHead: {hidden: [32.0, 8.0]}}
---
apiVersion: aam/v1alpha1
kind: Dataset
metadata: {name: d}
spec: {table: t.biom, tree: t.nwk, split: {seed: 3.0}}
"""
    res = validate(parse_text(text, "m.yaml", Path("/tmp")))
    tr = res.get("Run", "r").spec["trainer"]
    assert [type(tr[k]) for k in ("batchSize", "epochs", "seed")] == [int, int, int]
    assert isinstance(tr["learningRate"], float)
    m = res.get("Model", "m").spec
    assert type(m["embeddingDim"]) is int and [type(x) for x in m["targetHead"]["hidden"]] == [int, int]
    assert type(res.get("Dataset", "d").spec["split"]["seed"]) is int


# ---------------------------------------------------------------- extremes of every numeric field

def _numeric_fields(kind: str):
    """(path, schema node) of every numeric leaf of a kind, following $refs and oneOf branches."""
    from aamctl.api import schema as S

    out = []

    def walk(node, base, path):
        node, base = S._object_branch(node, base)
        types = S._types(node, base)
        if types & {"integer", "number"}:
            out.append((path, node, "integer" in types and "number" not in types))
        for name, sub in node.get("properties", {}).items():
            walk(sub, base, path + (name,))
        items = node.get("items")
        if isinstance(items, dict) and S._types(items, base) & {"integer", "number"}:
            item, _ = S._resolve(items, base)
            out.append((path + (0,), item, "integer" in S._types(item, base)))

    root, base = S._kind_root(kind)
    walk(root, base, ())
    return [(p, n, i) for p, n, i in out if p[:1] == ("spec",)]


def _extremes(node: dict, integer: bool):
    low = node.get("minimum")
    if low is None and "exclusiveMinimum" in node:
        low = node["exclusiveMinimum"] + (1 if integer else 1e-9)
    high = node.get("maximum")
    if high is None and "exclusiveMaximum" in node:
        high = node["exclusiveMaximum"] - (1 if integer else 1e-9)
    return low, high


CASES = [(kind, path, integer, node) for kind in ("Dataset", "Model", "Run", "HardwareProfile")
         for path, node, integer in _numeric_fields(kind)]


@pytest.mark.parametrize("kind,path", [(k, p) for k, p, _, _ in CASES], ids=lambda x: ".".join(map(str, x))
                         if isinstance(x, tuple) else x)
def test_every_numeric_field_has_both_bounds(kind, path):
    node, integer = next((n, i) for k, p, i, n in CASES if (k, p) == (kind, path))
    low, high = _extremes(node, integer)
    assert low is not None and high is not None, f"{kind}.{'.'.join(map(str, path))} needs a minimum and a maximum " \
                                                 "the engine can honour"


def _template(data: dict, stage: str) -> dict:
    ds = {"apiVersion": "aam/v1alpha1", "kind": "Dataset", "metadata": {"name": "synth"},
          "spec": {"table": str(data["table"]), "tree": str(data["tree"]), "metadata": {"path": str(data["metadata"])},
                   "targets": [{"name": "age", "type": "regression"}], "categoricalColumns": ["site"]}}
    model = {"apiVersion": "aam/v1alpha1", "kind": "Model", "metadata": {"name": "micro"},
             "spec": {"embeddingDim": 8, "ffnMultiplier": 1, "dropout": 0.0, "nucleotide": {"heads": 2, "layers": 1},
                      "sample": {"heads": 2, "layers": 1}, "encoderHead": {"heads": 2, "layers": 1},
                      "targetHead": {"heads": 2, "layers": 1}}}
    hw = {"apiVersion": "aam/v1alpha1", "kind": "HardwareProfile", "metadata": {"name": "cpu-test"},
          "spec": {"accelerator": "cpu", "env": {"OMP_NUM_THREADS": "1"}}}
    run = {"apiVersion": "aam/v1alpha1", "kind": "Run", "metadata": {"name": "extreme"},
           "spec": {"stage": stage, "datasetRef": "synth", "hardwareRef": "cpu-test",
                    "trainer": {"epochs": 1, "batchSize": 4, "learningRate": 0.001, "warmupSteps": 1,
                                "logEverySteps": 1},
                    "logging": {"wandb": {"mode": "disabled"}}}}
    if stage != "baseline":
        run["spec"]["modelRef"] = "micro"
    return {"Dataset": ds, "Model": model, "HardwareProfile": hw, "Run": run}


def _stage_for(kind: str, path: tuple) -> str | None:
    """Which stage exercises a field at run time (None: it only shapes the plan)."""
    if kind == "HardwareProfile" or path[:3] == ("spec", "executor", "slurm"):
        return None
    if path[:2] == ("spec", "baseline"):
        return "baseline"
    if path[:2] in (("spec", "targetHead"), ("spec", "categoricalEmbeddingDim")) or \
            path[-1] in ("target", "nucleotideWhenFinetuning"):
        return "finetune"
    return "pretrain"


def _set(doc: dict, path: tuple, value) -> None:
    node = doc
    for i, key in enumerate(path[:-1]):
        if isinstance(path[i + 1], int):
            node = node.setdefault(key, [None])
        elif isinstance(node, list):
            node = node[key]
        else:
            node = node.setdefault(key, {})
    if isinstance(path[-1], int):
        node[path[-1]] = value
    else:
        node[path[-1]] = value


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from synth import make_dataset

    return make_dataset(tmp_path_factory.mktemp("extremes") / "data", n_samples=24, n_asvs=30)


@pytest.mark.slow
@pytest.mark.parametrize("end", ["min", "max"])
@pytest.mark.parametrize("kind,path", [(k, p) for k, p, _, _ in CASES], ids=lambda x: ".".join(map(str, x))
                         if isinstance(x, tuple) else x)
def test_extreme_values_resolve_cleanly_and_train_a_first_step(kind, path, end, tiny_data, tmp_path, monkeypatch):
    """The schema's own bounds, one field at a time: either a clean positioned message before
    anything is queued, or a run that takes its first optimisation step (exit 0, or 75 after
    the checkpoint the pre-set PREEMPT flag asks for)."""
    import yaml

    from aam_runtime import runfolder as RF
    from aamctl.runs.apply import run_preflight
    from aamctl.planning.plan import build_plan

    monkeypatch.setenv("AAM_CACHE_DIR", str(tmp_path.parent / "extremes-cache"))
    node, integer = next((n, i) for k, p, i, n in CASES if (k, p) == (kind, path))
    low, high = _extremes(node, integer)
    value = low if end == "min" else high
    stage = _stage_for(kind, path)
    docs = _template(tiny_data, stage or "pretrain")
    if path[:3] == ("spec", "executor", "slurm"):
        docs["Run"]["spec"]["executor"] = {"type": "slurm"}
    if path[:2] == ("spec", "subsample"):
        docs["Dataset"]["spec"]["subsample"] = {"samples": 20}
    _set(docs[kind], path, value)
    f = tmp_path / "m.yaml"
    f.write_text(yaml.safe_dump_all(list(docs.values()), sort_keys=False))
    try:
        res = validate(parse_text(f.read_text(), str(f), tmp_path))
        run = res.get("Run", "extreme")
        diags = run_preflight(res, [run]) if stage else []
        if diags:
            raise AamError(diags)
    except AamError as err:
        text = err.render()
        assert f"{f}:" in text and "internal error" not in text, text
        print(f"OUTCOME rejected {kind}.{'.'.join(map(str, path))}={value}: {text.splitlines()[0][len(str(f)):]}")
        return
    plan = build_plan(res, run, generation=1, run_hash=res.run_hash(run), home=tmp_path / "home", upstream=None,
                      provenance={}, python=sys.executable)
    assert plan.files[RF.RECORD]
    if stage is None:
        return
    plan.folder.mkdir(parents=True)
    for name, text in plan.files.items():
        (plan.folder / name).write_text(text)
    (plan.folder / RF.PREEMPT_FLAG).write_text("")
    from aam_runtime.__main__ import main

    code = main([str(plan.folder)])
    print(f"OUTCOME ran {kind}.{'.'.join(map(str, path))}={value}: exit {code}")
    status = json.loads((plan.folder / RF.STATUS).read_text())
    assert code in (RF.EXIT_OK, RF.EXIT_PREEMPTED), (code, status.get("error"))
    if stage != "baseline":
        assert (plan.folder / RF.checkpoint_name("last")).exists()
