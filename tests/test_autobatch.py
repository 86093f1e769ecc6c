"""trainer.batchSize: auto and gradientAccumulation: auto."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from aam_runtime import autobatch as AB
from aam_runtime.runfolder import read_jsonl

from conftest import aamctl
from synth import make_dataset, pretrain_run


class FakeProbe:
    """Memory grows linearly with the batch: 100 MiB + 30 MiB a sample."""

    def __init__(self, oom_from=None):
        self.calls, self.oom_from = [], oom_from

    def step_bytes(self, b):
        self.calls.append(b)
        if self.oom_from is not None and b >= self.oom_from:
            return None
        return (100 + 30 * b) * 2 ** 20


def test_search_finds_the_largest_even_batch_under_the_limit():
    p = FakeProbe()
    b, seen = AB.search(p, limit=1000 * 2 ** 20, most=256)
    assert b == 30 and seen[30] <= 1000 * 2 ** 20 < seen[32]  # 100 + 30 x 30 = 1000
    assert len(p.calls) <= 10 and all(c % 2 == 0 for c in p.calls)
    assert AB.search(FakeProbe(), limit=10 ** 12, most=40)[0] == 40  # capped
    assert AB.search(FakeProbe(), limit=10 ** 12, most=41)[0] == 40  # even
    assert AB.search(FakeProbe(oom_from=12), limit=10 ** 12, most=256)[0] == 10  # out of memory = too big
    assert AB.search(FakeProbe(), limit=1, most=256)[0] == 2  # nothing fits: the smallest pair


def test_accumulation_keeps_the_effective_batch():
    # at most 30 a batch: 9 accumulation steps; 9 x 28 = 252, the nearest to 256 with an even batch
    assert AB.accumulation_for(256, batch=30, world=1) == (28, 9)
    b, a = AB.accumulation_for(256, batch=64, world=2)
    assert (b, a) == (64, 2) and b * a * 2 == 256
    b, a = AB.accumulation_for(100, batch=200, world=1)
    assert (b, a) == (100, 1)


def test_parse_memory():
    assert AB.parse_memory("512M") == 512 * 2 ** 20 and AB.parse_memory("2G") == 2 * 2 ** 30


@pytest.mark.slow
def test_auto_batch_on_cpu_under_a_memory_cap_is_chosen_recorded_and_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("AAM_CACHE_DIR", str(tmp_path / "cache"))
    data = make_dataset(tmp_path / "data", n_samples=60, n_asvs=40)
    home = tmp_path / "home"
    f = tmp_path / "r.yaml"
    # full precision: under precision auto a CPU with avx512_bf16 trains in bf16, whose smaller
    # activations fit every candidate batch under this cap (the test would not see the limit bite)
    extra = (", batchSize: auto, gradientAccumulation: auto, effectiveBatchSize: 24, precision: 'no',"
             " autoBatch: {memoryLimit: 4M, memoryFraction: 0.5}")
    f.write_text(pretrain_run(data, "auto", epochs=2, trainer_extra=extra).replace("batchSize: 4, ", ""))
    aamctl(home, "apply", "-f", str(f), "--wait", timeout=600)
    folder = home / "runs" / "auto" / "1"
    choice = json.loads((folder / "autobatch.json").read_text())
    b, a = choice["batchSize"], choice["gradientAccumulation"]
    assert b % 2 == 0 and 2 <= b <= 24 and 24 - 2 * a <= b * a <= 24 and choice["effective"] == b * a
    assert choice["estimate_mb"] <= choice["budget_mb"] == 2.0
    assert "would need" in choice["why"]  # the next size up was measured over the budget
    st = json.loads((folder / "status.json").read_text())
    assert st["phase"] == "Succeeded" and st["auto_batch"]["batchSize"] == b
    log = (folder / "log.txt").read_text()
    assert f"batch size auto: batch {b} x accumulation {a} x 1 process(es) = {b * a} (asked 24); the largest " \
           "that fits: " in log and "estimated from saved activations" in log
    # training used it: steps per epoch follow from the chosen batch and accumulation
    n_train = st["steps_per_epoch"] * b * a
    assert n_train <= 60 and st["steps_per_epoch"] >= 1
    train = [r for r in read_jsonl(folder / "metrics.jsonl") if r.get("split") == "train"]
    assert train


def test_bad_auto_batch_combinations_are_refused(tmp_path):
    data = make_dataset(tmp_path / "data", n_samples=24, n_asvs=30)
    f = tmp_path / "r.yaml"
    f.write_text(pretrain_run(data, "x", trainer_extra=", gradientAccumulation: auto"))
    p = aamctl(tmp_path / "h", "validate", "-f", str(f), check=False)
    assert p.returncode == 1 and "gradientAccumulation auto needs trainer.effectiveBatchSize" in p.stderr
    f.write_text(pretrain_run(data, "x", trainer_extra=", effectiveBatchSize: 64"))
    p = aamctl(tmp_path / "h", "validate", "-f", str(f), check=False)
    assert p.returncode == 1 and "effectiveBatchSize is used by gradientAccumulation: auto only" in p.stderr
