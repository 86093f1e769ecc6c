"""Manifest API: every bad manifest gives one clear message at the right line; good ones resolve."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from aamctl.errors import AamError
from aamctl.api.parse import load_paths, parse_text
from aamctl.api.resolve import MemoryStore
from aamctl.api.validate import validate
from aamctl.api.schema import explain

ROOT = Path(__file__).resolve().parent.parent
BAD = sorted((ROOT / "tests" / "bad_manifests").glob("*.yaml"))
from conftest import AAMCTL  # noqa: E402


def _expectation(path: Path):
    text = path.read_text()
    line = re.search(r"# expect-line: (\S+)", text)
    msg = re.search(r"# expect: (.*)", text)
    return (line.group(1) if line else "none"), (msg.group(1) if msg else "holds no YAML document")


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_bad_manifest_message_and_line(path):
    want_line, want = _expectation(path)
    with pytest.raises(AamError) as info:
        validate(load_paths([str(path)]))
    diags = info.value.diagnostics
    rendered = [d.render() for d in diags]
    assert any(want in r for r in rendered), rendered
    hit = next(d for d in diags if want in d.render())
    if want_line.isdigit():
        assert hit.line == int(want_line), rendered
    elif want_line == "none":
        assert hit.line is None
    assert all(r.startswith(str(path)) for r in rendered)


@pytest.mark.parametrize("path", BAD[:12] + BAD[-6:], ids=[p.stem for p in BAD[:12] + BAD[-6:]])
def test_cli_validate_bad_exits_1_without_traceback(path, tmp_path):
    p = subprocess.run([*AAMCTL, "--home", str(tmp_path), "validate", "-f", str(path)],
                       capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 1
    assert "Traceback" not in p.stderr
    assert p.stderr.strip()
    # one line per problem, each naming the file
    for line in p.stderr.strip().splitlines():
        assert line.startswith(str(path)), line


def test_all_errors_of_a_file_reported_at_once(tmp_path):
    f = tmp_path / "two.yaml"
    f.write_text("apiVersion: aam/v1alpha1\nkind: Model\nmetadata:\n  name: m\nspec:\n"
                 "  embeddingDim: wide\n  dropout: 2\n  layerz: 3\n")
    with pytest.raises(AamError) as info:
        validate(load_paths([str(f)]))
    lines = sorted(d.line for d in info.value.diagnostics)
    assert lines == [6, 7, 8]


def test_usage_error_exit_2(tmp_path):
    p = subprocess.run([*AAMCTL, "validate"], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 2
    p = subprocess.run([*AAMCTL, "get", "widgets"], capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, "AAM_HOME": str(tmp_path)})
    assert p.returncode == 2 and "unknown resource type" in p.stderr
    p = subprocess.run([*AAMCTL, "validate", "-f", str(tmp_path / "nope.yaml")], capture_output=True, text=True)
    assert p.returncode == 1 and "no such file" in p.stderr and "Traceback" not in p.stderr


def test_examples_and_manifests_validate():
    p = subprocess.run([*AAMCTL, "validate", "-f", "manifests/", "-f", "examples/"], capture_output=True,
                       text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    assert "run/oral-pretrain valid" in p.stdout
    assert "run/cosmos-pretrain valid" in p.stdout


def test_stdin_manifest():
    text = (ROOT / "examples" / "quickstart.yaml").read_text().replace("data/oral-age", str(ROOT / "examples/data/oral-age"))
    p = subprocess.run([*AAMCTL, "validate", "-f", "-"], input=text, capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    assert "run/quickstart-pretrain valid" in p.stdout


def test_defaults_filled_and_paths_absolute():
    res = validate(load_paths([str(ROOT / "examples" / "quickstart.yaml")]))
    run = res.get("Run", "quickstart-pretrain")
    assert run.spec["trainer"]["weightDecay"] == 0.01  # schema default
    assert run.spec["trainer"]["scheduler"] == "cosine"
    assert run.spec["hardwareRef"] == "cpu"
    ds = res.get("Dataset", "quickstart-oral")
    assert Path(ds.spec["table"]).is_absolute() and Path(ds.spec["table"]).exists()
    assert ds.spec["split"]["validationFraction"] == 0.2
    hw = res.get("HardwareProfile", "cpu")
    assert hw.source == "builtin"


def test_benchmark_recipes_validate_and_the_tiny_one_is_an_ensemble():
    """The recipes docs/benchmarks.md measured stay valid manifests; the tiny CPU recipe's predict
    Run averages its three seeds."""
    res = validate(load_paths([str(ROOT / "benchmarks" / "recipes" / "tiny-cpu")]))
    pred = res.get("Run", "oral-age-predict")
    runs = pred.spec["initFrom"]["runs"]
    assert len(runs) == 3 and sorted(res.get("Run", r).spec["trainer"]["seed"] for r in runs) == [1, 2, 3]
    for recipe in ("small", "tiny-study", "compact-huber"):
        validate(load_paths([str(ROOT / "benchmarks" / "recipes" / recipe)]))


def test_the_shipped_predict_run_averages_every_finetune_seed_over_two_pretrainings():
    """manifests/: the predict Run's ensemble is every fine-tune Run, each under its own seed, all
    the same recipe but for the seed and the pretraining it starts from; the pretrainings differ
    only in their seed, and each serves some members (docs/benchmarks.md: 3 + 2 of five)."""
    res = validate(load_paths([str(ROOT / "manifests")]))
    runs = res.get("Run", "oral-age-predict").spec["initFrom"]["runs"]
    fines = [o for o in res.given if o.kind == "Run" and o.spec["stage"] == "finetune"]
    pres = {o.name: o for o in res.given if o.kind == "Run" and o.spec["stage"] == "pretrain"}
    assert sorted(runs) == sorted(o.name for o in fines) and len(runs) == 5
    assert sorted(o.spec["trainer"]["seed"] for o in fines) == [1, 2, 3, 4, 5]

    def strip(spec, *keys):
        return {**{k: v for k, v in spec.items() if k != "initFrom"},
                "trainer": {k: v for k, v in spec["trainer"].items() if k not in keys}}
    assert all(strip(o.spec, "seed") == strip(fines[0].spec, "seed") for o in fines)
    starts = sorted(sum(o.spec["initFrom"]["run"] == p for o in fines) for p in pres)
    assert len(pres) == 2 and starts == [2, 3]
    a, b = pres.values()
    assert a.spec["trainer"].get("seed", 42) != b.spec["trainer"].get("seed", 42)
    assert strip(a.spec, "seed") == strip(b.spec, "seed")


def test_quality_ensemble_sizes_average_predictions_not_errors():
    """benchmarks/quality.py --members: an ensemble's MAE is that of its members' averaged
    predictions (errors of opposite sign cancel), averaged over every subset of that size."""
    import importlib.util

    import numpy as np

    spec = importlib.util.spec_from_file_location("quality", ROOT / "benchmarks" / "quality.py")
    quality = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(quality)
    got = quality.ensemble_sizes(np.zeros(2), np.array([[2.0, 2.0], [-2.0, -2.0], [1.0, 1.0]]))
    assert got["single"] == [2.0, 2.0, 1.0]
    two = got["sizes"][2]  # pairs average to 0, 1.5 and 0.5
    assert two["subsets"] == 3 and two["min"] == 0.0 and two["max"] == 1.5
    assert two["mean"] == pytest.approx(2 / 3)
    assert got["sizes"][3] == {"mean": pytest.approx(1 / 3), "min": pytest.approx(1 / 3),
                               "max": pytest.approx(1 / 3), "subsets": 1}


def test_round_trip_resolve_dump_parse_resolve_is_stable(tmp_path):
    res = validate(load_paths([str(ROOT / "manifests")]))
    dumped = yaml.safe_dump_all([o.manifest for o in res.given], sort_keys=False)
    res2 = validate(parse_text(dumped, "dumped.yaml", tmp_path))
    for a, b in zip(res.given, res2.given):
        assert a.manifest == b.manifest
        assert a.hash == b.hash
    run = res.get("Run", "oral-age-predict")
    assert res.run_hash(run) == res2.run_hash(res2.get("Run", "oral-age-predict"))


def test_hash_changes_with_spec_and_not_with_annotations():
    res = validate(load_paths([str(ROOT / "examples" / "quickstart.yaml")]))
    run = res.get("Run", "quickstart-pretrain")
    h = run.hash
    run.manifest["metadata"]["annotations"]["note"] = "x"
    assert run.hash == h
    run.manifest["spec"]["trainer"]["epochs"] += 1
    assert run.hash != h


def test_changing_model_changes_run_hash():
    res = validate(load_paths([str(ROOT / "examples" / "quickstart.yaml")]))
    run = res.get("Run", "quickstart-finetune")
    before = res.run_hash(run)
    res.get("Model", "quickstart-tiny").manifest["spec"]["dropout"] = 0.2
    assert res.run_hash(run) != before  # finetune inherits the model through initFrom


def test_refs_resolve_from_store():
    res = validate(load_paths([str(ROOT / "manifests" / "pretrain.yaml")]))
    store = MemoryStore({k: o.manifest for k, o in res.objects.items() if o.source == "file"})
    res2 = validate(load_paths([str(ROOT / "manifests" / "finetune.yaml")]), store)
    assert res2.get("Dataset", "oral-age").source == "store"
    assert res2.run_bundle(res2.get("Run", "oral-age-finetune"))["model"].name == "aam-compact"


def test_user_profile_overrides_builtin(tmp_path):
    f = tmp_path / "hw.yaml"
    f.write_text("apiVersion: aam/v1alpha1\nkind: HardwareProfile\nmetadata:\n  name: cpu\nspec:\n"
                 "  accelerator: cpu\n  devicesPerNode: 2\n  strategy: ddp\n")
    res = validate(load_paths([str(f)]))
    assert res.get("HardwareProfile", "cpu").spec["devicesPerNode"] == 2


def test_explain_reads_schema():
    text = explain("Run.spec.trainer")
    assert "batchSize" in text and "Default: 8" in text
    assert "FIELD:    spec.trainer" in text
    assert "Peak learning rate" in text
    assert "accelerator" in explain("hardwareprofile.spec")
    with pytest.raises(KeyError) as info:
        explain("Run.spec.trainr")
    assert "did you mean 'trainer'" in str(info.value)


def test_explain_cli():
    p = subprocess.run([*AAMCTL, "explain", "Dataset.spec.split"], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0 and "validationFraction" in p.stdout
    p = subprocess.run([*AAMCTL, "explain", "Widget"], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 2 and "unknown kind" in p.stderr


def test_every_schema_field_has_description_and_default_or_required():
    import json
    for f in (ROOT / "schemas" / "v1alpha1").glob("*.schema.json"):
        schema = json.loads(f.read_text())

        def walk(node, path, required=()):
            for name, sub in node.get("properties", {}).items():
                p = f"{path}.{name}"
                if name not in ("apiVersion", "kind", "metadata") and "$ref" not in sub and not sub.get("readOnly"):
                    assert "description" in sub, f"{f.name}: {p} has no description"
                    assert "default" in sub or name in required, f"{f.name}: {p} has no default and is not required"
                walk(sub, p, sub.get("required", ()))
            items = node.get("items")
            if isinstance(items, dict):
                walk(items, path + "[]", items.get("required", ()))
        walk(schema, f.stem, schema.get("required", ()))


# ---------------------------------------------------------------- plan: one source per fact

def _plan(res, name, **kw):
    from aamctl.planning.plan import build_plan

    return build_plan(res, res.get("Run", name), generation=kw.pop("generation", 3), run_hash="abc",
                      home=Path("/aam-home"), upstream=kw.pop("upstream", None), provenance={"aam/record-of": f"run/{name}"},
                      python="/usr/bin/python3")


def test_ensemble_predict_waits_for_every_run_and_hashes_them_all():
    """initFrom.runs: the local job waits for each unfinished run in turn, SLURM gets one afterok
    list, the runtime gets every checkpoint, and a change to any member is a new generation."""
    from aamctl.runs.apply import dependency_jobs
    from aamctl.planning.plan import LOCAL_SCRIPT, Dependency, Upstream
    from aam_runtime.runfolder import RECORD, RESOLVED_KEY

    text = (ROOT / "manifests" / "pretrain.yaml").read_text() + "\n---\n" + (ROOT / "manifests" / "finetune.yaml").read_text()
    text += """
---
apiVersion: aam/v1alpha1
kind: Run
metadata: {name: fine-2}
spec: {stage: finetune, datasetRef: oral-age, initFrom: {run: oral-pretrain}, targets: [{name: age}, {name: study, weight: 0.5}], trainer: {seed: 2}}
---
apiVersion: aam/v1alpha1
kind: Run
metadata: {name: ens}
spec: {stage: predict, datasetRef: oral-age, initFrom: {runs: [oral-age-finetune, fine-2]}}
"""
    res = validate(parse_text(text, "ens.yaml", ROOT / "manifests"))
    deps = (Dependency("oral-age-finetune", 1, "local", Path("/runs/a/1")), Dependency("fine-2", 4, "local", Path("/runs/b/4")))
    up = Upstream(checkpoints=("/runs/a/1/best.pt", "/runs/b/4/best.pt"), stage="finetune", dependencies=deps)
    plan = _plan(res, "ens", upstream=up)
    script = plan.files[LOCAL_SCRIPT]
    assert script.index("dep=/runs/a/1") < script.index("dep=/runs/b/4") < script.index("aam_runtime")
    assert "waiting for run/fine-2 generation 4" in script and plan.after == ", after run/oral-age-finetune, run/fine-2"
    run = next(d for d in yaml.safe_load_all(plan.files[RECORD]) if RESOLVED_KEY in d)
    assert run[RESOLVED_KEY]["initCheckpoint"] == ["/runs/a/1/best.pt", "/runs/b/4/best.pt"]

    class Store:
        def run(self, name, gen):
            return {"job_id": {"oral-age-finetune": 11, "fine-2": None}[name]}
    assert dependency_jobs(Store(), plan) == "11"  # a run without a job id (already finished) is not waited on

    before = res.run_hash(res.get("Run", "ens"))
    changed = validate(parse_text(text.replace("seed: 2", "seed: 3"), "ens.yaml", ROOT / "manifests"))
    assert changed.run_hash(changed.get("Run", "ens")) != before


def test_record_carries_the_runtime_settings_and_reapplies_without_them():
    """What aamctl decided (generation, model, init checkpoint and stage, precision) sits in the
    record's resolved: section, which the runtime reads; applying the record ignores it."""
    from aamctl.planning.plan import Dependency, Upstream
    from aam_runtime.runfolder import ACCELERATE_CONFIG, RECORD, RESOLVED_KEY

    res = validate(load_paths([str(ROOT / "manifests")]))
    up = Upstream(checkpoints=("/x/best.pt",), stage="pretrain",
                  dependencies=(Dependency("oral-pretrain", 2, "local", Path("/x")),))
    plan = _plan(res, "oral-age-finetune", upstream=up)
    docs = list(yaml.safe_load_all(plan.files[RECORD]))
    run = next(d for d in docs if d["kind"] == "Run" and RESOLVED_KEY in d)
    settings = run[RESOLVED_KEY]
    assert settings["generation"] == 3 and settings["runHash"] == "abc"
    assert settings["initCheckpoint"] == "/x/best.pt" and settings["initStage"] == "pretrain"
    assert settings["model"]["name"] == res.get("Run", "oral-pretrain").spec["modelRef"]
    assert settings["model"]["spec"] == res.get("Model", settings["model"]["name"]).spec
    acc = yaml.safe_load(plan.files[ACCELERATE_CONFIG])
    assert settings["precision"] == acc["mixed_precision"] == "no"  # CPU profile: decided once, the same in both
    assert not any(k.startswith("aam/init") or k == "aam/model" for k in run["metadata"].get("annotations", {}))
    again = validate(parse_text(plan.files[RECORD], "record.yaml", Path("/")))
    reapplied = again.get("Run", "oral-age-finetune")
    assert RESOLVED_KEY not in reapplied.manifest
    assert reapplied.hash == res.get("Run", "oral-age-finetune").hash


@pytest.mark.parametrize("trainer, profile, expected", [
    ("auto", {"accelerator": "cuda", "precision": "auto"}, "bf16"),
    ("auto", {"accelerator": "cuda", "precision": "fp16"}, "fp16"),
    ("no", {"accelerator": "cuda", "precision": "bf16"}, "no"),
    ("auto", {"accelerator": "cpu", "precision": "auto"}, "no"),
    ("fp16", {"accelerator": "cpu", "precision": "auto"}, "no"),
    ("bf16", {"accelerator": "rocm", "precision": "auto"}, "bf16"),
])
def test_precision_is_decided_in_one_place(trainer, profile, expected):
    from aamctl.planning.plan import effective_precision

    assert effective_precision({"precision": trainer}, profile) == expected


def test_fsdp_wraps_the_block_class_the_model_names():
    """The plan names no class; accelerate's transformer wrap policy finds the one the model lists."""
    from accelerate.utils import FullyShardedDataParallelPlugin

    from aamctl.planning.plan import accelerate_config
    from aam_runtime.model import AAM, Block, ModelConfig
    from synth import full_spec

    hw = {"nodes": 1, "devicesPerNode": 2, "accelerator": "cuda", "strategy": "fsdp"}
    cfg = accelerate_config(hw, {"executor": {"slurm": {"port": 29500}}}, precision="bf16")
    assert cfg["distributed_type"] == "FSDP" and "fsdp_transformer_layer_cls_to_wrap" not in cfg["fsdp_config"]
    model = AAM(ModelConfig.from_spec(full_spec("Model", {"embeddingDim": 8})), max_bp=10)
    plugin = FullyShardedDataParallelPlugin(auto_wrap_policy="transformer_based_wrap")
    plugin.set_auto_wrap_policy(model)
    assert plugin.auto_wrap_policy.keywords["transformer_layer_cls"] == {Block}


def test_network_interface_sets_the_collective_variables_once():
    from aamctl.api.resolve import builtin_documents, normalize
    from aam_runtime.jobenv import job_env

    cosmos = next(normalize(d).spec for d in builtin_documents() if d.data["spec"].get("networkInterface"))
    env = job_env(cosmos)
    assert env["NCCL_SOCKET_IFNAME"] == env["GLOO_SOCKET_IFNAME"] == cosmos["networkInterface"]
    assert "NCCL_SOCKET_IFNAME" not in cosmos["env"]  # derived, not repeated in the profile
    assert job_env(dict(cosmos, env={"NCCL_SOCKET_IFNAME": "ib0"}))["NCCL_SOCKET_IFNAME"] == "ib0"  # explicit wins


def test_metric_table_matches_the_schema_enum():
    import json as _json

    from aam_runtime.metric_table import METRICS

    schema = _json.loads((ROOT / "schemas" / "v1alpha1" / "run.schema.json").read_text())
    enum = schema["properties"]["spec"]["properties"]["trainer"]["properties"]["earlyStopping"]["properties"]["metric"]["anyOf"][0]["enum"]
    assert set(enum) == set(METRICS)
    pattern = schema["properties"]["spec"]["properties"]["trainer"]["properties"]["earlyStopping"]["properties"][
        "metric"]["anyOf"][1]["pattern"]
    assert set(pattern[2:pattern.index(")")].split("|")) == {m.name for m in METRICS.values() if m.target_type}
    sweep = _json.loads((ROOT / "schemas" / "v1alpha1" / "sweep.schema.json").read_text())
    objective = sweep["properties"]["spec"]["properties"]["objective"]["properties"]["metric"]
    assert set(objective["anyOf"][0]["enum"]) == set(METRICS)
    assert objective["anyOf"][1]["pattern"] == pattern  # a target's metric, named as for earlyStopping


def test_non_tty_progress_prints_tenths_and_minutes_not_steps():
    from aamctl.ui.progress import LineReporter

    r = LineReporter(every_s=60)
    out = []
    out += r.lines("a", "Pending", None, {}, now=0)
    for step in range(1, 1001):  # a step every 0.01 s: ten seconds in all
        out += r.lines("a", "Running", None, {"step": step, "total_steps": 1000}, now=step * 0.01)
    assert 10 <= len(out) <= 13, out  # Pending, Running, then one per 10%
    slow = LineReporter(every_s=60)
    lines = [slow.lines("b", "Running", None, {"step": s, "total_steps": 10**6}, now=s * 30.0) for s in range(1, 9)]
    assert sum(map(len, lines)) == 4  # the first, then one a minute while it moves (30 s a step)
    assert slow.lines("b", "Succeeded", None, {"step": 9, "total_steps": 10**6}, now=241) != []


def test_explain_lists_the_fields_of_a_list_of_objects():
    from aamctl.api.schema import explain

    text = explain("Run.spec.targets")
    assert "  name\t<string> -required-" in text and "  weight\t<number>" in text
    assert "One of: huber, mse, mae, asymmetric, null" in explain("Run.spec.targets.loss")
    assert "Metadata column." in explain("Dataset.spec.targets.name")
