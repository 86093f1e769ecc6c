"""Settings that would do nothing, or fail hours later, are refused before anything is queued
(issue: the newer surfaces refuse at validate what would fail later). The validate-level rules
have their cases in tests/bad_manifests/; these need the data, read by preflight."""
from __future__ import annotations

from conftest import aamctl
from synth import MICRO_MODEL, make_dataset


def _docs(data: dict, weights: str) -> str:
    return f"""apiVersion: aam/v1alpha1
kind: Dataset
metadata: {{name: sites}}
spec:
  table: {data['table']}
  tree: {data['tree']}
  metadata: {{path: {data['metadata']}}}
  targets: [{{name: site, type: classification}}]
  categoricalColumns: [site]
---
{MICRO_MODEL.replace("targetHead: {heads: 2, layers: 1}", "targetHead: {heads: 2, layers: 1, classWeights: " + weights + "}")}---
apiVersion: aam/v1alpha1
kind: Run
metadata: {{name: pre}}
spec: {{stage: pretrain, datasetRef: sites, modelRef: micro, trainer: {{epochs: 1, batchSize: 4}}}}
---
apiVersion: aam/v1alpha1
kind: Run
metadata: {{name: fine}}
spec: {{stage: finetune, datasetRef: sites, initFrom: {{run: pre}}, trainer: {{epochs: 1, batchSize: 4}}}}
"""


def test_a_class_weight_for_a_class_the_data_lacks_is_refused_before_the_pretraining(tmp_path):
    data = make_dataset(tmp_path / "data", n_samples=24, n_asvs=30)
    f = tmp_path / "w.yaml"
    f.write_text(_docs(data, "{gum: 2.0, cheek: 3.0}"))
    home = tmp_path / "home"
    p = aamctl(home, "apply", "-f", str(f), check=False)
    assert p.returncode == 1
    assert "targetHead.classWeights names 'cheek', which is not a class of 'site' in Dataset 'sites'" in p.stderr
    assert "the classes are: gum, tongue" in p.stderr and f"{f}:" in p.stderr
    assert not (home / "runs").exists()  # nothing queued: not even the pretraining it would wait for
    f.write_text(_docs(data, "{gum: 2.0}"))
    assert aamctl(home, "apply", "-f", str(f), "--dry-run").returncode == 0


def test_a_profile_window_past_the_last_step_is_refused_once_the_data_is_read(tmp_path):
    data = make_dataset(tmp_path / "data", n_samples=24, n_asvs=30)
    f = tmp_path / "p.yaml"
    text = _docs(data, "{gum: 2.0}").replace("trainer: {epochs: 1, batchSize: 4}}",
                                             "trainer: {epochs: 1, batchSize: 4, profile: {steps: [500, 502]}}}", 1)
    assert "[500, 502]" in text
    f.write_text(text)
    p = aamctl(tmp_path / "home", "apply", "-f", str(f), "--dry-run", check=False)
    assert p.returncode == 1
    assert "profile.steps [500, 502] starts after the run's last step: 1 epochs of 24 samples at batch 4" in p.stderr
    assert "spec.trainer.profile.steps" in p.stderr
    f.write_text(text.replace("[500, 502]", "[2, 3]"))
    assert aamctl(tmp_path / "home", "apply", "-f", str(f), "--dry-run").returncode == 0
