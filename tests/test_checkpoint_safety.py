"""Checkpoints are read as data: torch's weights_only loader, never a full unpickle of a file
that did not come from this state's run folders (a pickle can run any code when it is loaded)."""
from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

from aam_runtime.checkpoints import get_rng, load_checkpoint, set_rng
from aam_runtime.data.table import DataError


class _RunsCode:
    """Pickles as a call of os.system: what a hostile checkpoint holds."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_whose_loading_runs_code_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    evil = tmp_path / "elsewhere" / "evil.pt"
    evil.parent.mkdir()
    torch.save({"model": {"w": torch.zeros(2)}, "meta": {"stage": "finetune"}, "extra": _RunsCode(marker)}, evil)
    with pytest.raises(DataError) as exc:
        load_checkpoint(evil, state_runs=tmp_path / "home" / "runs")
    assert "refused" in str(exc.value) and "could run code" in str(exc.value) and str(evil) in str(exc.value)
    assert not marker.exists()


def test_the_random_states_a_checkpoint_keeps_are_plain_data_and_restore_exactly(tmp_path):
    torch.manual_seed(3)
    np.random.seed(4)
    random.seed(5)
    np.random.standard_normal()  # a cached Gaussian is part of numpy's state too
    saved = get_rng()
    path = tmp_path / "rng.pt"
    torch.save({"rng": [saved]}, path)
    want = (torch.rand(3), np.random.standard_normal(3), random.random())
    loaded = torch.load(path, weights_only=True)["rng"][0]  # would raise on any non-plain value
    set_rng(loaded)
    got = (torch.rand(3), np.random.standard_normal(3), random.random())
    assert torch.equal(want[0], got[0]) and np.array_equal(want[1], got[1]) and want[2] == got[2]


def test_an_old_checkpoint_of_this_state_still_loads(tmp_path):
    """Written before the states were plain values (numpy's state as a tuple with an array): the
    safe loader refuses it, and a file inside this state's run folders is read in full."""
    runs = tmp_path / "home" / "runs"
    own = runs / "fine" / "1" / "checkpoints" / "last.pt"
    own.parent.mkdir(parents=True)
    torch.save({"rng": [{"numpy": np.random.get_state()}]}, own)
    assert isinstance(load_checkpoint(own, state_runs=runs)["rng"][0]["numpy"][1], np.ndarray)
    elsewhere = tmp_path / "copy.pt"
    elsewhere.write_bytes(own.read_bytes())
    with pytest.raises(DataError, match="refused"):
        load_checkpoint(elsewhere, state_runs=runs)


def _fake_run(tmp_path):
    """A run folder as a finetune run leaves it: record, status, best checkpoint of a small AAM."""
    import json

    from aam_runtime.checkpoints import save_checkpoint  # noqa: F401 (the format under test)
    from aam_runtime.model import build_model
    from synth import full_spec

    spec = full_spec("Model", {"embeddingDim": 16, "ffnMultiplier": 2, "nucleotide": {"heads": 2, "layers": 1},
                               "sample": {"heads": 2, "layers": 1}, "encoderHead": {"heads": 2, "layers": 1},
                               "targetHead": {"heads": 2, "layers": 1}})
    model = build_model(spec, {"accelerator": "cpu", "attentionBackend": "auto"}, max_bp=100, n_outputs=1)
    run = tmp_path / "home" / "runs" / "fine" / "1"
    (run / "checkpoints").mkdir(parents=True)
    meta = {"stage": "finetune", "run": "fine", "model_spec": spec, "max_bp": 100, "max_asvs": 1024, "target": "age",
            "target_type": "regression", "norm": {"kind": "zscore", "log1p": False, "mean": 40.0, "std": 12.0},
            "classes": [], "cat_columns": [], "cat_levels": []}
    torch.save({"model": model.state_dict(), "meta": meta, "state": {"step": 7}, "rng": [get_rng()], "format": 1},
               run / "checkpoints" / "best.pt")
    (run / "record.yaml").write_text("apiVersion: aam/v1alpha1\nkind: Run\nmetadata: {name: fine}\nspec: {stage: finetune}\n"
                                     "---\napiVersion: aam/v1alpha1\nkind: Dataset\nmetadata: {name: oral}\n"
                                     "spec: {table: /data/table.biom}\n")  # a record holds several documents
    (run / "status.json").write_text(json.dumps({"phase": "Succeeded", "final_metrics": {"mae": 3.5},
                                                 "best_metric": {"name": "mae", "value": 3.4, "step": 7}}))
    return run, model


def test_a_bundle_holds_no_pickle_and_loads_the_same_weights(tmp_path):
    from aam_runtime.bundle_export import write_bundle

    run, model = _fake_run(tmp_path)
    out = tmp_path / "shared" / "fine-model"
    desc = write_bundle(run, out)
    assert desc["step"] == 7 and sorted(p.name for p in out.iterdir()) == \
        ["README.md", "metrics.json", "model.json", "model.safetensors", "record.yaml"]
    assert b"pickle" not in (out / "model.safetensors").read_bytes()[:64] and \
        (out / "model.safetensors").read_bytes()[8:9] == b"{"  # a safetensors header, not a pickle
    back = load_checkpoint(out, state_runs=tmp_path / "elsewhere" / "runs")
    own = model.state_dict()
    assert set(back["model"]) == set(own) and all(torch.equal(back["model"][k], own[k]) for k in own)
    assert back["meta"]["norm"]["std"] == 12.0 and back["meta"]["stage"] == "finetune"
    card = (out / "README.md").read_text()
    assert "run/fine" in card and "mae" in card and "age" in card
    with pytest.raises(Exception, match="not an empty folder"):
        write_bundle(run, out)  # never over an existing bundle


@pytest.mark.parametrize("damage", ["format", "weights", "description"])
def test_a_damaged_bundle_is_refused_with_one_clear_message(tmp_path, damage):
    from aam_runtime.bundle_export import write_bundle

    run, _ = _fake_run(tmp_path)
    out = tmp_path / "b"
    write_bundle(run, out)
    if damage == "format":
        (out / "model.json").write_text('{"format": "something-else/9", "meta": {}}')
    elif damage == "weights":
        (out / "model.safetensors").write_bytes(b"\x80\x04not safetensors at all")
    else:
        (out / "model.json").write_text("{ not json")
    with pytest.raises(DataError) as exc:
        load_checkpoint(out, state_runs=None)
    assert str(out) in str(exc.value)
