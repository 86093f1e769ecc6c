"""Property-based guard (issue: the newer surfaces refuse at validate what would fail later):
manifests generated from our own schemas either pass or are refused with a position, never an
internal error; what passes trains its first step. Hand-written cases find what someone thought
of; these find the rest. The budget here is bounded (AAM_PROPERTY_EXAMPLES raises it);
benchmarks/property_manifests.py runs a larger one and reports what it saw."""
from __future__ import annotations

import os

import pytest

from hypothesis import HealthCheck, given, settings, strategies as st

import properties as P
from synth import make_dataset

N = int(os.environ.get("AAM_PROPERTY_EXAMPLES", "0"))
QUICK = settings(max_examples=N or 40, deadline=None, derandomize=not N,
                 suppress_health_check=list(HealthCheck))
SLOW = settings(max_examples=N or 8, deadline=None, derandomize=not N, suppress_health_check=list(HealthCheck))
KINDS = ["Dataset", "Model", "HardwareProfile", "Run", "Sweep"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("prop") / "data", n_samples=24, n_asvs=30)


def _dry_apply(docs: list[dict], home):
    """apply --dry-run in this process: validate, preflight, plan. An AamError is a refusal."""
    import yaml

    from aamctl.runs.apply import apply_manifests
    from aamctl.errors import AamError
    from aamctl.api.parse import parse_text
    from aamctl.runs.store import StateStore

    f = home / "m.yaml"
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    out: list[str] = []
    try:
        apply_manifests(StateStore(home / "state"), None, home=home / "state", dry_run=True,
                        documents=parse_text(f.read_text(), str(f), home), echo=out.append, warn=out.append)
    except AamError as err:
        text = err.render()
        assert text.startswith(f"{f}:") or "aamctl" in text.splitlines()[0], text
        assert "internal error" not in text
        return "refused"
    return "accepted"


@pytest.mark.parametrize("kind", KINDS)
def test_generated_manifests_are_accepted_or_refused_with_a_position(kind, tiny, tmp_path_factory):
    """A whole spec drawn from the kind's schema, next to valid neighbours (its references point
    at them): apply --dry-run either accepts it or refuses it with file:line, never crashes."""
    base = P.template(tiny)

    @QUICK
    @given(spec=P.strategy(kind))
    def check(spec):
        docs = {k: dict(v) for k, v in base.items()}
        doc = {"apiVersion": "aam/v1alpha1", "kind": kind, "metadata": {"name": "drawn"}, "spec": spec}
        if kind == "Run":
            spec.update(datasetRef="synth", hardwareRef="cpu-test")
            if spec.get("stage") != "baseline" and not spec.get("initFrom"):
                spec["modelRef"] = "micro"
            spec.pop("initFrom", None) if spec.get("stage") != "predict" else None
        if kind == "Sweep" and isinstance(spec.get("template"), dict):
            spec["template"].update(datasetRef="synth", modelRef="micro", hardwareRef="cpu-test")
            spec["template"].pop("initFrom", None)
            spec.pop("runRef", None)
        docs["drawn"] = doc
        P.record(kind, _dry_apply(list(docs.values()), tmp_path_factory.mktemp("dry")))

    check()
    P.flush_tally()


@pytest.mark.slow
def test_generated_model_and_trainer_settings_train_a_first_step_or_are_refused(tiny, tmp_path_factory):
    """What validation accepts must run: a drawn Model spec and trainer settings, shrunk to tiny
    sizes (not skipped), on the tiny data, through the same validate -> preflight -> plan ->
    runtime path a user's apply takes, stopped after the first optimisation step."""

    @SLOW
    @given(model=P.strategy("Model"), trainer=P.strategy("Run", "trainer"),
           stage=st.sampled_from(["pretrain", "finetune"]), target=st.sampled_from(["age", "site"]))
    def check(model, trainer, stage, target):
        docs = P.template(tiny)
        docs["Model"]["spec"] = P.shrink_model(model)
        docs["Run"]["spec"]["stage"] = stage
        docs["Run"]["spec"]["trainer"] = P.shrink_trainer(trainer)
        if stage == "finetune":
            docs["Run"]["spec"]["target"] = target
        outcome, detail = P.one_step(docs, tmp_path_factory.mktemp("step"))
        P.record("first-step", outcome)

    check()
    P.flush_tally()
