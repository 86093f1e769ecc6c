"""Model and training engine: equivalences, losses, DDP, resume, stages, outputs, W&B."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
import torch

from aam_runtime.data import batches as B
from aam_runtime.data import table as T
from aam_runtime.model import AAM, ModelConfig, choose_attention_backend, pairwise_unifrac_loss
from aam_runtime.runfolder import RECORD, read_jsonl

from synth import CPU_PROFILES, ORAL, dataset_spec, full_spec, make_dataset
from wandb_log import read_run

ROOT = Path(__file__).resolve().parent.parent
from conftest import AAMCTL, need_qiime, q2  # noqa: E402

SMALL_MODEL = full_spec("Model", {"embeddingDim": 16, "ffnMultiplier": 2, "dropout": 0.0,
                                  "nucleotide": {"heads": 2, "layers": 1}, "sample": {"heads": 2, "layers": 1},
                                  "encoderHead": {"heads": 2, "layers": 1}, "targetHead": {"heads": 2, "layers": 1},
                                  "categoricalEmbeddingDim": 4})


def _model(spec: dict, **kw) -> AAM:
    return AAM(ModelConfig.from_spec(spec), max_bp=150, **kw)


def _batch(tmp_path, rows=(0, 1, 2, 3, 4, 5)):
    d = make_dataset(tmp_path / "d", n_samples=12, n_asvs=20)
    p = T.load(dataset_spec(d))
    enc = B.encode(p, 150, 1024, "abundance")
    return B.to_torch(B.collate_numpy(enc, np.array(rows))), enc


@pytest.mark.parametrize("count_mode", ["add", "concat", "film"])
def test_dedup_equals_per_occurrence(tmp_path, count_mode):
    batch, _ = _batch(tmp_path)
    torch.manual_seed(0)
    spec = dict(SMALL_MODEL, countEmbedding=count_mode)
    a = _model(spec, n_outputs=1).eval()
    b = _model(dict(spec, dedupAsvs=False), n_outputs=1).eval()
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        ra = a(batch, need_target=True)
        rb = b(batch, need_target=True)
    assert torch.allclose(ra["embedding"], rb["embedding"], atol=1e-5)
    assert torch.allclose(ra["target"], rb["target"], atol=1e-5)
    # masked-nucleotide logits too (same mask per distinct ASV)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    with torch.no_grad():
        ma = a(batch, mask_nucleotides=True, generator=g1)
        mb = b(batch, mask_nucleotides=True, generator=g2)
    assert ma["nuc_targets"].numel() > 0
    assert torch.allclose(ma["embedding"], mb["embedding"], atol=1e-5)
    # Per-occurrence mode repeats each distinct ASV's masked bases once per sample holding it:
    # spread the distinct ASVs' logits over [U, L] and pick them in occurrence order.
    _, masked = a.mask_tokens(batch["tokens"], torch.Generator().manual_seed(3))
    occ = batch["asv_index"][batch["mask"]]
    assert len(occ) > len(batch["tokens"])  # the batch shares ASVs, so the two modes differ in work
    full = torch.zeros(*masked.shape, ma["nuc_logits"].shape[-1])
    full[masked] = ma["nuc_logits"]
    assert torch.equal(mb["nuc_targets"], batch["tokens"][occ][masked[occ]])
    assert torch.allclose(mb["nuc_logits"], full[occ][masked[occ]], atol=1e-5)


def test_checkpointed_asv_chunks_give_the_same_loss_and_gradients(tmp_path, monkeypatch):
    """gradientCheckpointing runs the nucleotide stack on chunks of ASVs (one checkpoint each):
    the loss and every gradient equal the unchunked, uncheckpointed model's."""
    import aam_runtime.model as M

    batch, _ = _batch(tmp_path)
    torch.manual_seed(0)
    plain = _model(SMALL_MODEL).train()
    ckpt = _model(dict(SMALL_MODEL, gradientCheckpointing=True)).train()
    ckpt.load_state_dict(plain.state_dict())
    u, length = batch["tokens"].shape
    monkeypatch.setattr(M, "CHUNK_TOKENS", 3 * length)  # chunks of 3 ASVs: several, the last one short
    assert u > 6 and u % 3

    def loss_and_grads(model):
        out = model(batch, mask_nucleotides=True, generator=torch.Generator().manual_seed(1))
        target = torch.rand(6, 6, generator=torch.Generator().manual_seed(2))
        loss = pairwise_unifrac_loss(out["embedding"], (target + target.T) / 2)[0] + \
            torch.nn.functional.cross_entropy(out["nuc_logits"], out["nuc_targets"])
        loss.backward()
        return loss.detach(), {k: v.grad.clone() for k, v in model.named_parameters() if v.grad is not None}

    calls = []
    real = torch.utils.checkpoint.checkpoint
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", lambda fn, *a, **k: calls.append(fn) or real(fn, *a, **k))
    la, ga = loss_and_grads(plain)
    lb, gb = loss_and_grads(ckpt)
    assert sum(getattr(fn, "__name__", "") == "stack" for fn in calls) == -(-u // 3)  # one per chunk
    assert torch.allclose(la, lb, atol=1e-6)
    assert ga.keys() == gb.keys()
    for k in ga:
        assert torch.allclose(ga[k], gb[k], atol=1e-5, rtol=1e-4), k


def test_padding_does_not_change_a_sample(tmp_path):
    """A sample's embedding is the same alone and padded inside a batch with a longer sample."""
    batch_all, enc = _batch(tmp_path)
    lens = [len(enc.sel_idx[r]) for r in range(6)]
    short = int(np.argmin(lens))
    alone = B.to_torch(B.collate_numpy(enc, np.array([short])))
    torch.manual_seed(0)
    m = _model(SMALL_MODEL).eval()
    with torch.no_grad():
        e1 = m(alone)["embedding"][0]
        e2 = m(batch_all)["embedding"][short]
    assert torch.allclose(e1, e2, atol=1e-5)


def test_pairwise_unifrac_loss_matches_numpy():
    torch.manual_seed(0)
    emb = torch.randn(5, 7, requires_grad=True)
    target = torch.rand(5, 5)
    target = (target + target.T) / 2
    loss, mae = pairwise_unifrac_loss(emb, target)
    e = emb.detach().numpy()
    d = np.sqrt(((e[:, None] - e[None]) ** 2).sum(-1))
    iu = np.triu_indices(5, 1)
    pred = np.tanh(d[iu] / 10)
    assert np.isclose(loss.item(), ((pred - target.numpy()[iu]) ** 2).mean(), atol=1e-6)
    assert np.isclose(mae.item(), np.abs(pred - target.numpy()[iu]).mean(), atol=1e-6)
    loss.backward()
    assert torch.isfinite(emb.grad).all()
    # identical embeddings: still a finite gradient
    same = torch.zeros(3, 4, requires_grad=True)
    pairwise_unifrac_loss(same, torch.ones(3, 3))[0].backward()
    assert torch.isfinite(same.grad).all()


# torch build's HIP version x HardwareProfile rocmVersion x requested backend -> kernel. The
# build decides (the broken masked mem_efficient kernel ships in the torch wheel's aotriton); the
# profile only where the build is unknown (aamctl, without torch) and for a warning.
ROCM_TABLE = [
    # torch HIP, profile,  requested,        kernel,          warns
    ("6.2.41133", "6.3.0", "auto", "math", True),  # the reference's wheel under the Cosmos profile
    ("6.2.41133", "6.3.0", "mem_efficient", "math", True),
    ("6.2.41133", "6.2.4", "auto", "math", False),
    ("6.2.41133", None, "auto", "math", False),
    ("6.3.42131", "6.2.4", "auto", "auto", True),  # a fixed wheel on an older site stack
    ("6.3.42131", "6.3.0", "auto", "auto", False),
    ("6.3.42131", "6.3.0", "mem_efficient", "mem_efficient", False),
    ("6.4.43482", None, "auto", "auto", False),
    ("6.3.42131", "6.3.0", "math", "math", False),
    ("6.3.42131", "6.3.0", "flash", "math", False),  # validate refuses it; never a crash here
    (None, "6.3.0", "auto", "auto", False),  # no torch (aamctl): the profile is all there is
    (None, "6.2", "mem_efficient", "math", False),
    (None, None, "auto", "math", False),  # nothing known: the kernel that is right everywhere
    (None, None, "mem_efficient", "math", False),
]


@pytest.mark.parametrize("hip,profile,requested,kernel,warns", ROCM_TABLE)
def test_rocm_attention_kernel_is_decided_by_the_torch_build(hip, profile, requested, kernel, warns):
    from aam_runtime.model import attention_decision

    got, why, warning = attention_decision(requested, "rocm", profile, hip)
    assert got == kernel, why
    assert (warning is not None) == warns, warning
    if warns:
        assert f"HIP {hip}" in warning and f"ROCm {profile}" in warning
    if hip and requested != "flash" and kernel == "math":
        assert f"torch built with HIP {hip}" in why
    assert choose_attention_backend(requested, "rocm", profile, hip) == kernel


def test_cuda_and_cpu_keep_the_requested_kernel():
    assert choose_attention_backend("auto", "cuda", None) == "auto"
    assert choose_attention_backend("mem_efficient", "cuda", "6.2") == "mem_efficient"  # rocmVersion ignored off ROCm
    assert choose_attention_backend("auto", "cpu", None) == "auto"


def test_a_model_built_for_rocm_says_which_kernel_and_why(monkeypatch):
    from aam_runtime.model import build_model

    monkeypatch.setattr(torch.version, "hip", "6.2.41133", raising=False)
    spec = dict(SMALL_MODEL, attentionBackend="auto")
    m = build_model(spec, {"accelerator": "rocm", "rocmVersion": "6.3.0", "attentionBackend": "auto"}, max_bp=8)
    assert m.attention_backend == "math"
    assert "torch built with HIP 6.2.41133" in m.attention_why
    assert "torch build decides" in m.attention_warning


def _kernel_runs_here(backend: str) -> bool:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    kernel = {"flash": SDPBackend.FLASH_ATTENTION, "mem_efficient": SDPBackend.EFFICIENT_ATTENTION}[backend]
    q = torch.randn(1, 1, 4, 8)
    try:
        with sdpa_kernel([kernel]):
            torch.nn.functional.scaled_dot_product_attention(q, q, q, attn_mask=torch.ones(1, 1, 1, 4, dtype=torch.bool))
        return True
    except RuntimeError:
        return False


def test_sdpa_kernels_agree_with_math_under_padding_masks(tmp_path):
    """Every fused kernel this build offers gives the math kernel's embeddings on padded batches
    (the ROCm < 6.3 bug this guards against was a masked mem_efficient kernel). This CPU build
    offers flash with masks, so at least one kernel is compared here."""
    batch, _ = _batch(tmp_path)
    torch.manual_seed(0)
    m = _model(SMALL_MODEL).eval()
    assert batch["mask"].sum(1).min() < batch["mask"].shape[1]  # some sample is padded
    with torch.no_grad():
        m.attention_backend = "math"
        ref = m(batch)["embedding"]
        compared = []
        for backend in ("flash", "mem_efficient"):
            if not _kernel_runs_here(backend):
                continue
            m.attention_backend = backend
            assert torch.allclose(ref, m(batch)["embedding"], atol=1e-5), backend
            compared.append(backend)
    assert compared, "no fused SDPA kernel runs here"


# ---------------------------------------------------------------- runs through aamctl

def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


DATA = f"""apiVersion: aam/v1alpha1
kind: Dataset
metadata: {{name: oral-sub}}
spec:
  table: {ORAL}/table.biom
  tree: {ORAL}/tree.nwk
  metadata: {{path: {ORAL}/metadata.tsv}}
  targets: [{{name: age, type: regression}}]
  subsample: {{samples: 200, seed: 5}}
  maxAsvsPerSample: 48
  maxBp: 100
---
apiVersion: aam/v1alpha1
kind: Dataset
metadata: {{name: oral-new}}
spec:
  table: {ORAL}/table.biom
  metadata: {{path: {ORAL}/metadata.tsv}}
  targets: [{{name: age, type: regression}}]
  subsample: {{samples: 60, seed: 99}}
  maxAsvsPerSample: 48
  maxBp: 100
---
apiVersion: aam/v1alpha1
kind: Dataset
metadata: {{name: oral-new-random}}
spec:
  table: {ORAL}/table.biom
  metadata: {{path: {ORAL}/metadata.tsv}}
  targets: [{{name: age, type: regression}}]
  subsample: {{samples: 60, seed: 99}}
  maxAsvsPerSample: 16
  asvSelection: random
  maxBp: 100
---
apiVersion: aam/v1alpha1
kind: Dataset
metadata: {{name: oral-multi}}
spec:
  table: {ORAL}/table.biom
  metadata: {{path: {ORAL}/metadata-study.tsv}}
  targets: [{{name: age, type: regression}}, {{name: study, type: classification}}]
  categoricalColumns: [study]
  subsample: {{samples: 200, seed: 5}}
  maxAsvsPerSample: 48
  maxBp: 100
---
apiVersion: aam/v1alpha1
kind: Dataset
metadata: {{name: oral-new-multi}}
spec:
  table: {ORAL}/table.biom
  metadata: {{path: {ORAL}/metadata-study.tsv}}
  subsample: {{samples: 60, seed: 99}}
  maxAsvsPerSample: 48
  maxBp: 100
---
apiVersion: aam/v1alpha1
kind: Dataset
metadata: {{name: oral-new-unlabelled}}
spec:
  table: {ORAL}/table.biom
  metadata: {{path: {ORAL}/metadata.tsv}}
  targets: [{{name: age, type: regression}}, {{name: study, type: classification}}]
  categoricalColumns: [study]
  subsample: {{samples: 60, seed: 99}}
  maxAsvsPerSample: 48
  maxBp: 100
---
apiVersion: aam/v1alpha1
kind: Model
metadata: {{name: tiny}}
spec: {{embeddingDim: 16, ffnMultiplier: 2, dropout: 0.0, nucleotide: {{heads: 2, layers: 1}}, sample: {{heads: 2, layers: 1}}, encoderHead: {{heads: 2, layers: 1}}, targetHead: {{heads: 2, layers: 1}}}}
---
apiVersion: aam/v1alpha1
kind: Model
metadata: {{name: tiny-q}}
spec: {{embeddingDim: 16, ffnMultiplier: 2, dropout: 0.0, nucleotide: {{heads: 2, layers: 1}}, sample: {{heads: 2, layers: 1}}, encoderHead: {{heads: 2, layers: 1}}, targetHead: {{heads: 2, layers: 1, loss: quantile, quantiles: [0.1, 0.5, 0.9], hidden: [8], residual: true}}}}
---
""" + CPU_PROFILES


def _apply(home: Path, *files, wait=True, check=True, timeout=600):
    cmd = [*AAMCTL, "--home", str(home), "apply"]
    for f in files:
        cmd += ["-f", str(f)]
    if wait:
        cmd.append("--wait")
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check:
        assert p.returncode == 0, p.stdout + p.stderr
    return p


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """pretrain -> finetune -> predict (new samples) + baseline, applied in one go."""
    home = tmp_path_factory.mktemp("pipe")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AAM_CACHE_DIR", str(home / "cache"))
        yield _run_pipeline(home)


def _run_pipeline(home):
    runs = """---
apiVersion: aam/v1alpha1
kind: Run
metadata: {name: pre, labels: {suite: training}}
spec:
  stage: pretrain
  datasetRef: oral-sub
  modelRef: tiny
  hardwareRef: cpu-1
  trainer: {epochs: 4, batchSize: 8, learningRate: 0.002, warmupSteps: 5, logEverySteps: 5, earlyStopping: {patience: null}}
  outputs: {embeddings: true}
---
apiVersion: aam/v1alpha1
kind: Run
metadata: {name: fine}
spec:
  stage: finetune
  datasetRef: oral-sub
  hardwareRef: cpu-1
  initFrom: {run: pre}
  trainer: {epochs: 12, batchSize: 8, learningRate: 0.002, warmupSteps: 5, logEverySteps: 5, earlyStopping: {patience: null, metric: mae}}
  outputs: {errors: {}}
---
apiVersion: aam/v1alpha1
kind: Run
metadata: {name: pred}
spec:
  stage: predict
  datasetRef: oral-new
  hardwareRef: cpu-1
  initFrom: {run: fine}
---
apiVersion: aam/v1alpha1
kind: Run
metadata: {name: pred-same}
spec:
  stage: predict
  datasetRef: oral-sub
  hardwareRef: cpu-1
  initFrom: {run: fine}
---
apiVersion: aam/v1alpha1
kind: Run
metadata: {name: pred-insight}
spec:
  stage: predict
  datasetRef: oral-new-multi
  hardwareRef: cpu-1
  initFrom: {run: fine}
  outputs: {embeddings: true, errors: {by: [study]}}
---
apiVersion: aam/v1alpha1
kind: Run
metadata: {name: pred-passes}
spec:
  stage: predict
  datasetRef: oral-new-random
  hardwareRef: cpu-1
  initFrom: {run: fine}
  prediction: {passes: 4}
---
apiVersion: aam/v1alpha1
kind: Run
metadata: {name: fine-aux}
spec:
  stage: finetune
  datasetRef: oral-sub
  hardwareRef: cpu-1
  initFrom: {run: pre}
  trainer: {epochs: 1, batchSize: 8, learningRate: 0.002, warmupSteps: 5, logEverySteps: 5,
            lossWeights: {unifracWhenFinetuning: 0.5, countWhenFinetuning: 0.2}, profile: {steps: [2, 3]}}
---
apiVersion: aam/v1alpha1
kind: Run
metadata: {name: fine-q}
spec:
  stage: finetune
  datasetRef: oral-sub
  modelRef: tiny-q
  hardwareRef: cpu-1
  initFrom: {run: pre}
  trainer: {epochs: 3, batchSize: 8, learningRate: 0.002, warmupSteps: 5, logEverySteps: 5, earlyStopping: {patience: null, metric: mae}}
  logging: {tensorboard: true}
---
apiVersion: aam/v1alpha1
kind: Run
metadata: {name: pred-q}
spec:
  stage: predict
  datasetRef: oral-new
  hardwareRef: cpu-1
  initFrom: {run: fine-q}
---
apiVersion: aam/v1alpha1
kind: Run
metadata: {name: fine-multi}
spec:
  stage: finetune
  datasetRef: oral-multi
  hardwareRef: cpu-1
  initFrom: {run: pre}
  targets: [{name: age, loss: mae}, {name: study, weight: 0.5}]
  trainer: {epochs: 3, batchSize: 8, learningRate: 0.002, warmupSteps: 5, logEverySteps: 5, earlyStopping: {patience: null, metric: "mae:age"}}
---
apiVersion: aam/v1alpha1
kind: Run
metadata: {name: pred-multi}
spec:
  stage: predict
  datasetRef: oral-new-multi
  hardwareRef: cpu-1
  initFrom: {run: fine-multi}
---
apiVersion: aam/v1alpha1
kind: Run
metadata: {name: pred-unlabelled}
spec:
  stage: predict
  datasetRef: oral-new-unlabelled
  hardwareRef: cpu-1
  initFrom: {run: fine-multi}
---
apiVersion: aam/v1alpha1
kind: Run
metadata: {name: fine-b}
spec:
  stage: finetune
  datasetRef: oral-sub
  hardwareRef: cpu-1
  initFrom: {run: pre}
  trainer: {epochs: 3, seed: 7, batchSize: 8, learningRate: 0.002, warmupSteps: 5, logEverySteps: 5, earlyStopping: {patience: null, metric: mae}}
---
apiVersion: aam/v1alpha1
kind: Run
metadata: {name: pred-b}
spec:
  stage: predict
  datasetRef: oral-new
  hardwareRef: cpu-1
  initFrom: {run: fine-b}
---
apiVersion: aam/v1alpha1
kind: Run
metadata: {name: fine-ema}
spec:
  stage: finetune
  datasetRef: oral-sub
  hardwareRef: cpu-1
  initFrom: {run: pre}
  trainer: {epochs: 3, seed: 7, batchSize: 8, learningRate: 0.002, warmupSteps: 5, logEverySteps: 5, earlyStopping: {patience: null, metric: mae}, ema: {decay: 0.9}}
---
apiVersion: aam/v1alpha1
kind: Run
metadata: {name: pred-ema}
spec:
  stage: predict
  datasetRef: oral-new
  hardwareRef: cpu-1
  initFrom: {run: fine-ema}
---
apiVersion: aam/v1alpha1
kind: Run
metadata: {name: pred-ens}
spec:
  stage: predict
  datasetRef: oral-new
  hardwareRef: cpu-1
  initFrom: {runs: [fine, fine-b]}
---
apiVersion: aam/v1alpha1
kind: Run
metadata: {name: rf}
spec:
  stage: baseline
  datasetRef: oral-sub
  baseline: {trees: 100}
"""
    f = _write(home / "pipe.yaml", DATA + runs)
    p = _apply(home, f, timeout=900)
    return home, p.stdout


def _folder(home: Path, name: str, gen: int = 1) -> Path:
    return home / "runs" / name / str(gen)


@pytest.mark.slow
def test_pipeline_runs_in_order(pipeline):
    home, out = pipeline
    started = {n: json.loads((_folder(home, n) / "status.json").read_text())["started"] for n in ("pre", "fine", "pred")}
    finished = {n: json.loads((_folder(home, n) / "status.json").read_text())["finished"] for n in ("pre", "fine", "pred")}
    assert finished["pre"] <= started["fine"] and finished["fine"] <= started["pred"]
    for n in ("pre", "fine", "pred", "rf"):
        assert json.loads((_folder(home, n) / "status.json").read_text())["phase"] == "Succeeded"


@pytest.mark.slow
def test_predictions_and_splits_are_qiime2_metadata(pipeline, tmp_path):
    """QIIME 2 reads predictions.tsv (one target, several, a classification) and split.tsv as
    metadata files as they are, with the column types they have."""
    need_qiime()
    home, _ = pipeline
    files = {"pred": "predictions.tsv", "fine-multi": "predictions.tsv", "pred-multi": "predictions.tsv",
             "fine": "split.tsv"}
    for run, name in files.items():
        out = q2("tools", "inspect-metadata", str(_folder(home, run) / name), cwd=tmp_path)
        types = dict(re.findall(r"^\s*([\w:.-]+)\s+(numeric|categorical)\s*$", out, re.M))
        assert types.get("split") == "categorical", (run, out)
        rows = (_folder(home, run) / name).read_text().splitlines()
        n = len(rows) - (2 if rows[1].startswith("#q2:types\t") else 1)
        assert re.search(rf"IDS:\s+{n}\b", out) and (name == "split.tsv") != rows[1].startswith("#q2:types"), out
        if name == "predictions.tsv":
            assert {c: t for c, t in types.items() if c.startswith(("prediction", "truth:age"))} == {
                c: ("categorical" if c.endswith("study") else "numeric") for c in types
                if c.startswith(("prediction", "truth:age"))}, out
    q2("metadata", "tabulate", "--m-input-file", str(_folder(home, "pred") / "predictions.tsv"),
       "--o-visualization", "predictions.qzv", cwd=tmp_path)
    assert (tmp_path / "predictions.qzv").stat().st_size > 0


@pytest.mark.slow
def test_pretraining_learns(pipeline):
    home, _ = pipeline
    m = read_jsonl(_folder(home, "pre") / "metrics.jsonl")
    train = [r for r in m if r["split"] == "train"]
    val = [r for r in m if r["split"] == "validation"]
    assert train[-1]["unifrac_loss"] < train[0]["unifrac_loss"] * 0.8
    assert val[-1]["nuc_accuracy"] > train[0]["nuc_accuracy"] + 0.15
    assert val[-1]["nuc_accuracy"] > 0.5  # 4 letters: chance is 0.25
    assert (_folder(home, "pre") / "plots" / "loss.png").stat().st_size > 1000


@pytest.mark.slow
def test_peak_memory_is_logged_per_step_and_in_status(pipeline):
    """Every logged training step carries the peak memory so far (the process's peak RSS on
    CPU), never falling; status.json and describe say it and what it measures."""
    home, _ = pipeline
    train = [r for r in read_jsonl(_folder(home, "pre") / "metrics.jsonl") if r["split"] == "train"]
    peaks = [r["peak_memory_mb"] for r in train]
    assert len(peaks) > 3 and all(100 < p < 24 * 1024 for p in peaks)  # torch alone is over 100 MiB
    assert peaks == sorted(peaks)
    st = json.loads((_folder(home, "pre") / "status.json").read_text())
    assert st["peak_memory_mb"] == peaks[-1] and st["memory_kind"] == "process peak RSS"
    p = subprocess.run([*AAMCTL, "--home", str(home), "describe", "run", "pre"], capture_output=True, text=True)
    assert p.returncode == 0 and f"peak memory: {peaks[-1]:.0f} MiB (process peak RSS)" in p.stdout, p.stdout


@pytest.mark.slow
def test_initfrom_checkpoint_reads_data_only(pipeline, tmp_path):
    """A checkpoint named by initFrom.checkpoint (a file from elsewhere) is read by torch's
    weights_only loader: aam's own checkpoint, copied out of the state, predicts exactly as its
    run did; a pickle that would run code when loaded fails its run with a clear message, and
    the code never runs."""
    home, _ = pipeline
    shared = tmp_path / "from-a-colleague"
    shared.mkdir()
    shutil.copy(_folder(home, "fine") / "checkpoints" / "best.pt", shared / "fine.pt")
    marker = tmp_path / "ran"

    class RunsCode:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    good = torch.load(shared / "fine.pt", weights_only=True)
    torch.save(dict(good, hostile=RunsCode()), shared / "hostile.pt")
    runs = "".join(f"""---
apiVersion: aam/v1alpha1
kind: Run
metadata: {{name: {name}}}
spec:
  stage: predict
  datasetRef: oral-new
  hardwareRef: cpu-1
  initFrom: {{checkpoint: {shared / f}}}
""" for name, f in (("pred-copied", "fine.pt"), ("pred-hostile", "hostile.pt")))
    p = _apply(home, _write(tmp_path / "pred.yaml", runs), check=False)
    assert p.returncode == 1, p.stdout + p.stderr
    assert (_folder(home, "pred-copied") / "predictions.tsv").read_text() == \
        (_folder(home, "pred") / "predictions.tsv").read_text()
    st = json.loads((_folder(home, "pred-hostile") / "status.json").read_text())
    assert st["phase"] == "Failed" and "refused" in st["error"] and "hostile.pt" in st["error"], st
    assert not marker.exists()


@pytest.mark.slow
def test_a_model_bundle_predicts_the_same_in_a_fresh_state(pipeline, tmp_path):
    """aamctl export run fine --bundle DIR, then in another state folder, from another path, a
    predict run with initFrom.checkpoint: DIR gives the original run's predictions (to 1e-6)."""
    home, _ = pipeline
    bundle = tmp_path / "handed-on" / "fine-model"
    p = subprocess.run([*AAMCTL, "--home", str(home), "export", "run", "fine", "--bundle", str(bundle)],
                       capture_output=True, text=True)
    assert p.returncode == 0 and str(bundle) in p.stdout, p.stdout + p.stderr
    again = subprocess.run([*AAMCTL, "--home", str(home), "export", "run", "fine", "--bundle", str(bundle)],
                           capture_output=True, text=True)
    assert again.returncode == 1 and "not an empty folder" in again.stderr and "Traceback" not in again.stderr
    fresh = tmp_path / "colleague"
    run = f"""---
apiVersion: aam/v1alpha1
kind: Run
metadata: {{name: pred-bundle}}
spec:
  stage: predict
  datasetRef: oral-new
  hardwareRef: cpu-1
  initFrom: {{checkpoint: {bundle}}}
"""
    _apply(fresh, _write(tmp_path / "p.yaml", DATA + run))
    mine = [l.split("\t") for l in (_folder(home, "pred") / "predictions.tsv").read_text().splitlines()]
    theirs = [l.split("\t") for l in (_folder(fresh, "pred-bundle") / "predictions.tsv").read_text().splitlines()]
    assert mine[0] == theirs[0] and [r[0] for r in mine] == [r[0] for r in theirs]
    col = mine[0].index("prediction") if "prediction" in mine[0] else 1
    assert np.allclose([float(r[col]) for r in mine[2:]], [float(r[col]) for r in theirs[2:]], atol=1e-6, rtol=0)


@pytest.mark.slow
def test_finetune_beats_predicting_the_mean(pipeline):
    home, _ = pipeline
    folder = _folder(home, "fine")
    st = json.loads((folder / "status.json").read_text())
    rows = [l.split("\t") for l in (folder / "predictions.tsv").read_text().splitlines()[2:]]
    truth = np.array([float(r[3]) for r in rows])
    split = dict(l.split("\t") for l in (folder / "split.tsv").read_text().splitlines()[1:])
    ages = {l.split("\t")[0]: float(l.split("\t")[1]) for l in (ORAL / "metadata.tsv").read_text().splitlines()[1:]}
    train_mean = np.mean([ages[s] for s, k in split.items() if k == "train"])
    mean_mae = np.abs(truth - train_mean).mean()
    assert st["final_metrics"]["mae"] < mean_mae, (st["final_metrics"]["mae"], mean_mae)
    assert (folder / "plots" / "pred_vs_true.png").exists()


def _prediction_table(folder: Path) -> tuple[list[str], dict[str, list[str]]]:
    lines = (folder / "predictions.tsv").read_text().splitlines()
    assert lines[1].startswith("#q2:types\t")
    return lines[0].split("\t"), {row.split("\t")[0]: row.split("\t") for row in lines[2:]}


@pytest.mark.slow
def test_finetune_outputs_come_from_the_best_checkpoint(pipeline):
    """predictions.tsv of a finetune is what its best.pt predicts: its MAE is the BEST value and
    the final metrics', and a predict Run from the finetune gives the same numbers on those samples."""
    home, _ = pipeline
    folder = _folder(home, "fine")
    st = json.loads((folder / "status.json").read_text())
    header, rows = _prediction_table(folder)
    pred = np.array([float(r[2]) for r in rows.values()])
    truth = np.array([float(r[3]) for r in rows.values()])
    vals = [r for r in read_jsonl(folder / "metrics.jsonl") if r["split"] == "validation"]
    assert len({round(r["mae"], 6) for r in vals}) > 1  # the validations differ: which one is used matters
    assert np.abs(pred - truth).mean() == pytest.approx(st["best_metric"]["value"], rel=1e-4)
    assert st["final_metrics"]["mae"] == pytest.approx(st["best_metric"]["value"], rel=1e-9)
    assert st["final_metrics"]["outputs_from"] == f"checkpoints/best.pt (step {st['best_metric']['step']})"
    _, again = _prediction_table(_folder(home, "pred-same"))
    assert set(rows) < set(again)
    assert np.allclose(pred, [float(again[s][2]) for s in rows], rtol=1e-5, atol=1e-4)


def _tsv(path: Path) -> tuple[list[str], list[list[str]]]:
    lines = path.read_text().splitlines()
    skip = 2 if len(lines) > 1 and lines[1].startswith("#q2:types") else 1
    return lines[0].split("\t"), [line.split("\t") for line in lines[skip:]]


@pytest.mark.slow
def test_pretraining_embeddings_and_their_fit_to_unifrac(pipeline):
    from skbio import DistanceMatrix

    home, _ = pipeline
    folder = _folder(home, "pre")
    header, rows = _tsv(folder / "embeddings.tsv")
    assert header == ["sample-id"] + [f"dim{i}" for i in range(16)] and len(rows) == 200
    emb = np.array([[float(x) for x in r[1:]] for r in rows])
    dm = DistanceMatrix.read(str(folder / "embedding-distances.tsv"))
    assert list(dm.ids) == [r[0] for r in rows]
    assert np.allclose(dm.data, np.linalg.norm(emb[:, None] - emb[None], axis=-1), atol=1e-4)
    st = json.loads((folder / "status.json").read_text())["final_metrics"]
    assert st["embeddings"] == 200 and -1 <= st["embedding_unifrac_r"] <= 1 and st["embedding_unifrac_pairs"] > 1000
    assert (folder / "plots" / "embedding_pcoa.png").stat().st_size > 0
    assert (folder / "plots" / "embedding_vs_unifrac.png").stat().st_size > 0
    assert "embedding distance against UniFrac: r = " in (folder / "log.txt").read_text()


@pytest.mark.slow
def test_predict_writes_embeddings_and_its_errors_by_category(pipeline, tmp_path):
    home, _ = pipeline
    folder = _folder(home, "pred-insight")
    _, pred = _prediction_table(folder)
    header, rows = _tsv(folder / "embeddings.tsv")
    assert len(rows) == 60 and {r[0] for r in rows} == set(pred) and len(header) == 17
    header, errors = _tsv(folder / "errors.tsv")
    assert header == ["sample-id", "prediction", "truth", "residual", "absolute_error", "rank", "study"]
    abs_err = [float(r[4]) for r in errors]
    assert abs_err == sorted(abs_err, reverse=True) and [r[5] for r in errors] == [str(i) for i in range(1, 61)]
    st = json.loads((folder / "status.json").read_text())["final_metrics"]
    assert np.mean(abs_err) == pytest.approx(st["mae"], rel=1e-4)
    for r in errors:
        assert float(r[1]) == pytest.approx(float(pred[r[0]][2]), rel=1e-5)
    by = [line.split("\t") for line in (folder / "errors-by-study.tsv").read_text().splitlines()]
    assert by[0] == ["study", "samples", "mae", "mean_residual"] and sum(int(r[1]) for r in by[1:]) == 60
    study = {r[0]: r[6] for r in errors}
    for r in by[1:]:
        mine = [e for e, row in zip(abs_err, errors) if study[row[0]] == r[0]]
        assert float(r[2]) == pytest.approx(np.mean(mine), rel=1e-4)
    assert (folder / "plots" / "residuals.png").exists() and (folder / "plots" / "embedding_pcoa.png").exists()
    assert "worst-predicted samples" in (folder / "log.txt").read_text()
    # the finetune's validation samples: errors.tsv too, and no embeddings (not asked)
    _, fine_errors = _tsv(_folder(home, "fine") / "errors.tsv")
    assert len(fine_errors) == len(_prediction_table(_folder(home, "fine"))[1])
    assert not (_folder(home, "fine") / "embeddings.tsv").exists()
    # QIIME 2 reads the embeddings and the errors as metadata
    need_qiime()
    for name in ("embeddings.tsv", "errors.tsv"):
        out = q2("tools", "inspect-metadata", str(folder / name), cwd=tmp_path)
        assert re.search(r"IDS:\s+60\b", out), out


@pytest.mark.slow
def test_predict_on_new_samples(pipeline):
    home, _ = pipeline
    folder = _folder(home, "pred")
    lines = (folder / "predictions.tsv").read_text().splitlines()
    assert lines[0] == "sample-id\tsplit\tprediction\ttruth"
    assert lines[1] == "#q2:types\tcategorical\tnumeric\tnumeric"
    assert len(lines) == 62
    preds = np.array([float(l.split("\t")[2]) for l in lines[2:]])
    assert np.isfinite(preds).all() and 10 < preds.mean() < 90
    st = json.loads((folder / "status.json").read_text())
    assert "mae" in st["final_metrics"]  # truth was in the metadata


@pytest.mark.slow
def test_prediction_passes_give_a_spread_with_random_asvs(pipeline):
    """4 passes over other random draws of 16 ASVs: a std column, non-zero where a sample has more
    than 16 ASVs; the mean of the passes is the prediction."""
    home, _ = pipeline
    lines = (_folder(home, "pred-passes") / "predictions.tsv").read_text().splitlines()
    assert lines[0] == "sample-id\tsplit\tprediction\ttruth\tstd"
    sd = np.array([float(l.split("\t")[4]) for l in lines[2:]])
    assert len(sd) == 60 and (sd >= 0).all() and (sd > 0).mean() > 0.5
    st = json.loads((_folder(home, "pred-passes") / "status.json").read_text())
    assert st["final_metrics"]["passes"] == 4


@pytest.mark.slow
def test_ensemble_predict_averages_its_runs(pipeline):
    """A predict run over initFrom.runs [fine, fine-b] waits for both, and predicts their average,
    with the spread between them as std; its record names both runs."""
    home, _ = pipeline

    def table(name):
        lines = (_folder(home, name) / "predictions.tsv").read_text().splitlines()
        return lines[0].split("\t"), {l.split("\t")[0]: l.split("\t") for l in lines[2:]}

    _, a = table("pred")
    _, b = table("pred-b")
    header, ens = table("pred-ens")
    assert header == ["sample-id", "split", "prediction", "truth", "std"]
    assert set(ens) == set(a) == set(b) and len(ens) == 60
    pa, pb = (np.array([float(t[s][2]) for s in sorted(ens)]) for t in (a, b))
    pe = np.array([float(ens[s][2]) for s in sorted(ens)])
    sd = np.array([float(ens[s][4]) for s in sorted(ens)])
    assert np.abs(pa - pb).max() > 0.1  # two different models
    np.testing.assert_allclose(pe, (pa + pb) / 2, atol=1e-3)
    np.testing.assert_allclose(sd, np.abs(pa - pb) / 2, atol=1e-3)
    st = json.loads((_folder(home, "pred-ens") / "status.json").read_text())
    assert st["final_metrics"]["models"] == 2 and st["phase"] == "Succeeded"
    finished = [json.loads((_folder(home, n) / "status.json").read_text())["finished"] for n in ("fine", "fine-b")]
    assert max(finished) <= st["started"]
    record = list(yaml.safe_load_all((_folder(home, "pred-ens") / "record.yaml").read_text()))
    assert {"fine", "fine-b", "pre"} <= {d["metadata"]["name"] for d in record if d["kind"] == "Run"}
    main = next(d for d in record if d["metadata"]["name"] == "pred-ens")
    assert [Path(c).parents[2].name for c in main["resolved"]["initCheckpoint"]] == ["fine", "fine-b"]


def test_ema_update_follows_the_ramped_decay():
    """trainer.ema's average: the first step copies, then ema <- d ema + (1 - d) w with
    d = min(decay, (1 + n) / (10 + n)), n the steps averaged before."""
    from torch.optim.swa_utils import AveragedModel
    from aam_runtime.optim import ema_update

    lin = torch.nn.Linear(2, 1, bias=False)
    ema = AveragedModel(lin, multi_avg_fn=ema_update(0.2), use_buffers=True)
    expect = None
    for n, v in enumerate([1.0, 3.0, -2.0, 5.0]):
        with torch.no_grad():
            lin.weight.fill_(v)
        ema.update_parameters(lin)
        d = min(0.2, (1 + n) / (10 + n))  # n: the steps averaged before this one
        expect = v if expect is None else d * expect + (1 - d) * v
        torch.testing.assert_close(ema.module.weight, torch.full((1, 2), expect))
    # the ramp (2/11, 3/12) and the cap (0.2) both took part
    assert int(ema.n_averaged) == 4


@pytest.mark.slow
def test_ema_run_trains_the_same_weights_and_predicts_with_their_average(pipeline):
    """fine-ema is fine-b with trainer.ema: the raw weights follow the same trajectory bit for
    bit, the checkpoint's model (what predict and initFrom read) is the average, and validation,
    early stopping and predictions use it."""
    home, _ = pipeline
    plain = torch.load(_folder(home, "fine-b") / "checkpoints" / "last.pt", weights_only=True)
    ema = torch.load(_folder(home, "fine-ema") / "checkpoints" / "last.pt", weights_only=True)
    assert "train_model" not in plain and ema["ema_steps"] == ema["state"]["step"]
    for k in plain["model"]:
        assert torch.equal(plain["model"][k], ema["train_model"][k]), k
    assert any(not torch.equal(ema["model"][k], ema["train_model"][k]) for k in ema["model"])
    val = lambda n: [r["mae"] for r in read_jsonl(_folder(home, n) / "metrics.jsonl") if r["split"] == "validation"]  # noqa: E731
    assert len(val("fine-ema")) == len(val("fine-b")) == 3 and val("fine-ema") != val("fine-b")
    assert "ema: averaging the weights with decay 0.9" in (_folder(home, "fine-ema") / "log.txt").read_text()
    preds = {n: [l.split("\t")[2] for l in (_folder(home, n) / "predictions.tsv").read_text().splitlines()[2:]]
             for n in ("pred-b", "pred-ema")}
    assert len(preds["pred-ema"]) == 60 and preds["pred-ema"] != preds["pred-b"]


def test_ensemble_rescales_members_to_the_first_members_units():
    """Members scaled differently (fine-tuned on other samples) are averaged in units: each
    member's outputs mapped through units onto the first member's scale."""
    from aam_runtime.data.prepare import scale_target, unscale_target
    from aam_runtime.stages import _rescale

    first = {"log1p": False, "mean": 30.0, "std": 10.0, "kind": "zscore"}
    other = {"log1p": True, "mean": 3.0, "std": 0.5, "kind": "log1p_zscore"}
    z = np.array([[-1.0], [0.0], [2.0]], dtype=np.float32)
    out = _rescale(z, other, first, None)
    np.testing.assert_allclose(unscale_target(out[:, 0], first), unscale_target(z[:, 0], other), rtol=1e-5)
    assert _rescale(z, first, dict(first), None) is z
    np.testing.assert_allclose(scale_target(np.array([40.0]), first), [1.0])


@pytest.mark.slow
def test_auxiliary_losses_while_finetuning(pipeline):
    home, _ = pipeline
    train = [r for r in read_jsonl(_folder(home, "fine-aux") / "metrics.jsonl") if r["split"] == "train"]
    assert train and all({"unifrac_loss", "count_loss", "target_loss"} <= set(r) for r in train)
    r = train[-1]  # logged means over the same steps: the total is the weighted sum
    assert r["loss"] == pytest.approx(r["target_loss"] + 0.5 * r["unifrac_loss"] + 0.2 * r["count_loss"], rel=1e-4)
    plain = [r for r in read_jsonl(_folder(home, "fine") / "metrics.jsonl") if r["split"] == "train"]
    assert "unifrac_loss" not in plain[0]


def test_profile_window_writes_a_chrome_trace_and_a_top_table(pipeline):
    """trainer.profile.steps [2, 3]: torch.profiler over those optimizer steps, into the run folder."""
    home, _ = pipeline
    folder = _folder(home, "fine-aux")
    trace = json.loads((folder / "profile" / "finetune-trace.json").read_text())
    names = {e.get("name", "") for e in trace["traceEvents"]}
    assert "Optimizer.step#AdamW.step" in names or any(n.startswith("Optimizer.step") for n in names)
    assert any(n.startswith("aten::scaled_dot_product_attention") or n.startswith("aten::_scaled_dot_product")
               for n in names)
    top = (folder / "profile" / "finetune-top.txt").read_text()
    assert top.startswith("# aam profile: finetune, optimizer steps 2..3") and "Self CPU" in top and "CPU Mem" in top
    events = [e for e in read_jsonl(folder / "events.jsonl") if e.get("event") == "profiled"]
    assert len(events) == 1 and events[0]["steps"] == [2, 3]
    # only that window: the other runs have no profile folder
    assert not (_folder(home, "fine") / "profile").exists()


@pytest.mark.slow
def test_baseline_same_split_same_metrics(pipeline):
    home, _ = pipeline
    a = (_folder(home, "rf") / "split.tsv").read_text()
    b = (_folder(home, "fine") / "split.tsv").read_text()
    assert a == b
    st = json.loads((_folder(home, "rf") / "status.json").read_text())
    assert {"mae", "rmse", "r2"} <= set(st["final_metrics"])


@pytest.mark.slow
def test_wandb_offline_run_read_back(pipeline):
    home, _ = pipeline
    run = read_run(_folder(home, "pre"))
    assert run["run"]["project"] == "aam"
    assert "suite:training" in run["run"]["tags"] and "pretrain" in run["run"]["tags"]
    kinds = {d["kind"] for d in run["config"]["manifests"]}
    assert kinds == {"Run", "Dataset", "Model", "HardwareProfile"}
    assert any("train/unifrac_loss" in h for h in run["history"])
    assert "val_loss" in run["summary"]
    blob = (_folder(home, "pre") / "record.yaml").read_text() + json.dumps(run["config"])
    assert "WANDB_API_KEY" not in blob


@pytest.mark.slow
@pytest.mark.ddp
def test_ddp_two_processes_equal_single_process(tmp_path, monkeypatch):
    """2 CPU processes (gloo, accelerate launch) x batch 4 == 1 process x batch 8: same losses, same weights."""
    monkeypatch.setenv("AAM_CACHE_DIR", str(tmp_path / "cache"))
    runs = """---
apiVersion: aam/v1alpha1
kind: Run
metadata: {name: ddp2}
spec:
  stage: pretrain
  datasetRef: oral-sub
  modelRef: tiny
  hardwareRef: cpu-2proc
  trainer: {epochs: 1, maxSteps: 3, batchSize: 4, learningRate: 0.001, warmupSteps: 0, scheduler: constant, logEverySteps: 1, lossWeights: {nucleotide: 0}, precision: 'no'}
---
apiVersion: aam/v1alpha1
kind: Run
metadata: {name: single}
spec:
  stage: pretrain
  datasetRef: oral-sub
  modelRef: tiny
  hardwareRef: cpu-1
  trainer: {epochs: 1, maxSteps: 3, batchSize: 8, learningRate: 0.001, warmupSteps: 0, scheduler: constant, logEverySteps: 1, lossWeights: {nucleotide: 0}, precision: 'no'}
"""
    # precision 'no': under bf16 (precision auto on a CPU with avx512_bf16) one process and two
    # round differently (1e-4), and this test is about the DDP arithmetic, not about bf16
    f = _write(tmp_path / "ddp.yaml", DATA + runs)
    _apply(tmp_path, f)
    assert "accelerate.commands.launch" in (_folder(tmp_path, "ddp2") / "launch.sh").read_text()
    st = json.loads((_folder(tmp_path, "ddp2") / "status.json").read_text())
    assert st["world_size"] == 2
    la = [r["unifrac_loss"] for r in read_jsonl(_folder(tmp_path, "ddp2") / "metrics.jsonl") if r["split"] == "train"]
    lb = [r["unifrac_loss"] for r in read_jsonl(_folder(tmp_path, "single") / "metrics.jsonl") if r["split"] == "train"]
    # losses after 1 and 2 updates agree too: the updates were the same. (Weights are not compared:
    # parameters the loss is invariant to, like a LayerNorm bias before pooling, get only rounding
    # noise as gradient, which AdamW turns into lr-sized steps that differ with the process layout.)
    assert len(la) == 3 and np.allclose(la, lb, atol=1e-5)
    # validation metrics are reduced over both ranks: same validation loss
    va = [r for r in read_jsonl(_folder(tmp_path, "ddp2") / "metrics.jsonl") if r["split"] == "validation"][-1]
    vb = [r for r in read_jsonl(_folder(tmp_path, "single") / "metrics.jsonl") if r["split"] == "validation"][-1]
    assert va["val_loss"] == pytest.approx(vb["val_loss"], rel=0.05)


@pytest.mark.slow
@pytest.mark.ddp
def test_ddp_gradients_equal_single_process(tmp_path):
    """Pairwise UniFrac loss under DDP (2 CPU processes, gloo, accelerate launch): same loss and gradients."""
    from aamctl.planning.plan import accelerate_config, dump_documents
    cfg = accelerate_config({"nodes": 1, "devicesPerNode": 2, "accelerator": "cpu", "strategy": "ddp"},
                            {"executor": {"slurm": {"port": 29561}}}, precision="no")
    (tmp_path / "acc.yaml").write_text(dump_documents([cfg]))
    script = ROOT / "tests" / "ddp_grads.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, str(script), str(tmp_path), str(tmp_path / "one.pt")], env=env,
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(tmp_path / "acc.yaml"),
                          str(script), str(tmp_path), str(tmp_path / "two.pt")], env=env, capture_output=True,
                         text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    a = torch.load(tmp_path / "one.pt", weights_only=True)
    b = torch.load(tmp_path / "two.pt", weights_only=True)
    assert a["loss"] == pytest.approx(b["loss"], abs=1e-6)
    assert set(a["grads"]) == set(b["grads"])
    big = 0
    for k in a["grads"]:
        assert torch.allclose(a["grads"][k], b["grads"][k], atol=1e-5, rtol=1e-4), k
        big += int(a["grads"][k].abs().max() > 1e-4)
    assert big > 10  # the comparison is not between zeros


@pytest.mark.slow
def test_the_runtime_leaves_its_process_group_when_the_stage_is_done(tmp_path, monkeypatch):
    """A gloo rank that exits with its group still up can abort when its peer closes first
    (SIGABRT after the work is done: torchrun then fails a finished job). The runtime leaves the
    group once the stage is over: here a group set up before it ran is gone when it returns 0."""
    monkeypatch.setenv("AAM_CACHE_DIR", str(tmp_path / "cache"))
    run = """---
apiVersion: aam/v1alpha1
kind: Run
metadata: {name: leave}
spec:
  stage: pretrain
  datasetRef: oral-sub
  modelRef: tiny
  hardwareRef: cpu-1
  trainer: {epochs: 1, maxSteps: 1, batchSize: 4}
"""
    _apply(tmp_path, _write(tmp_path / "r.yaml", DATA + run))
    again = tmp_path / "again"
    again.mkdir()
    shutil.copy(_folder(tmp_path, "leave") / RECORD, again / RECORD)  # the run afresh: no checkpoint
    script = (
        "import torch.distributed as dist\n"
        f"dist.init_process_group('gloo', init_method='file://{tmp_path}/pg', rank=0, world_size=1)\n"
        "from aam_runtime.__main__ import main\n"
        f"code = main([{str(again)!r}])\n"
        "print('exit', code, 'still in the group', dist.is_initialized())\n")
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert "exit 0 still in the group False" in p.stdout, p.stdout[-2000:] + p.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("ema", [None, 0.9], ids=["plain", "ema"])
def test_resume_after_sigterm_gives_identical_weights(tmp_path, monkeypatch, ema):
    """With trainer.ema the resumed run restores the average too (the checkpoint's model) and
    goes on training the raw weights (train_model)."""
    monkeypatch.setenv("AAM_CACHE_DIR", str(tmp_path / "cache"))
    run = """---
apiVersion: aam/v1alpha1
kind: Run
metadata: {{name: {name}}}
spec:
  stage: pretrain
  datasetRef: oral-sub
  modelRef: tiny
  hardwareRef: cpu-1
  trainer: {{epochs: 2, batchSize: 4, learningRate: 0.001, warmupSteps: 5, logEverySteps: 1, checkpoint: {{everySteps: 1000}}{ema}}}
"""
    extra = f", ema: {{decay: {ema}}}" if ema else ""
    f = _write(tmp_path / "r.yaml", DATA + run.format(name="whole", ema=extra) + run.format(name="cut", ema=extra))
    _apply(tmp_path, f, wait=False)
    cut = _folder(tmp_path, "cut")
    # stop "cut" mid-epoch with SIGTERM, as SLURM does before a time limit
    deadline = time.time() + 120
    pid = None
    while time.time() < deadline:
        st = json.loads((cut / "status.json").read_text()) if (cut / "status.json").exists() else {}
        if st.get("step", 0) >= 5:
            out = subprocess.run(["pgrep", "-f", f"aam_runtime {cut}"], capture_output=True, text=True).stdout.split()
            pid = int(out[0]) if out else None
            break
        time.sleep(0.05)
    assert pid, "the run did not get going"
    os.kill(pid, signal.SIGTERM)
    subprocess.run([*AAMCTL, "--home", str(tmp_path), "wait", "cut", "whole", "--timeout", "300"], capture_output=True)
    assert int((cut / "exit_code").read_text()) == 75
    st = json.loads((cut / "status.json").read_text())
    assert st["phase"] == "Preempted"
    stopped_at = st["step"]
    assert stopped_at < st["total_steps"]
    # start the same run folder again: it resumes from 'last'
    p = subprocess.run([*AAMCTL, "--home", str(tmp_path), "resume", "cut"], capture_output=True, text=True)
    assert p.returncode == 0 and "from its last checkpoint" in p.stdout, p.stderr
    w = subprocess.run([*AAMCTL, "--home", str(tmp_path), "wait", "cut", "--timeout", "300"], capture_output=True, text=True)
    assert w.returncode == 0, w.stdout + (cut / "log.txt").read_text()[-2000:]
    assert "resumed from step" in (cut / "log.txt").read_text()
    events = [e["event"] for e in read_jsonl(cut / "events.jsonl")]
    assert "preempted" in events and "resumed" in events
    ca = torch.load(_folder(tmp_path, "whole") / "checkpoints" / "last.pt", weights_only=True)
    cb = torch.load(cut / "checkpoints" / "last.pt", weights_only=True)
    for key in ("model", "train_model") if ema else ("model",):
        for k in ca[key]:
            assert torch.equal(ca[key][k], cb[key][k]), (key, k)
    if ema:
        assert cb["ema_steps"] == ca["ema_steps"] == st["total_steps"]


@pytest.mark.slow
def test_quantile_head_writes_every_level_and_reports_coverage(pipeline):
    """loss quantile end to end: validation metrics carry the interval's coverage; the
    finetune and predict runs write one ordered column per level, the median as the prediction."""
    home, _ = pipeline
    val = [r for r in read_jsonl(_folder(home, "fine-q") / "metrics.jsonl") if r["split"] == "validation"]
    assert val and 0.0 <= val[-1]["coverage"] <= 1.0 and val[-1]["coverage_nominal"] == pytest.approx(0.8)
    for run in ("fine-q", "pred-q"):
        rows = (_folder(home, run) / "predictions.tsv").read_text().splitlines()
        assert rows[0].split("\t") == ["sample-id", "split", "prediction", "truth", "q0.1", "q0.5", "q0.9"]
        for line in rows[2:]:
            f = line.split("\t")
            lo, mid, hi = float(f[4]), float(f[5]), float(f[6])
            assert lo <= mid <= hi and float(f[2]) == mid
    pred = [r for r in read_jsonl(_folder(home, "pred-q") / "metrics.jsonl") if r["split"] == "predict"]
    assert "coverage" in pred[0] and "mae" in pred[0]


@pytest.mark.slow
def test_tensorboard_event_files_carry_the_metrics(pipeline):
    """logging.tensorboard: event files in the run folder that TensorBoard itself reads back, with
    the train and validation scalars of metrics.jsonl at their steps; describe names the logdir."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    home, _ = pipeline
    folder = _folder(home, "fine-q")
    runs = [p.parent for p in (folder / "tensorboard").rglob("events.out.tfevents.*")]
    assert runs, list(folder.iterdir())
    ea = EventAccumulator(str(runs[0]))
    ea.Reload()
    tags = set(ea.Tags()["scalars"])
    assert {"train/target_loss", "train/lr", "val/mae", "val/coverage"} <= tags, tags
    val = [r for r in read_jsonl(folder / "metrics.jsonl") if r["split"] == "validation"]
    got = {e.step: e.value for e in ea.Scalars("val/mae")}
    assert got == pytest.approx({r["step"]: r["mae"] for r in val}, rel=1e-6)
    assert not (_folder(home, "fine") / "tensorboard").exists()  # off by default
    out = subprocess.run([*AAMCTL, "--home", str(home), "describe", "run", "fine-q"], capture_output=True, text=True)
    assert f"tensorboard --logdir {folder / 'tensorboard'}" in out.stdout, out.stdout


@pytest.mark.slow
def test_several_targets_in_one_finetune_run(pipeline):
    """age (regression, MAE loss) and study (classification, weight 0.5) share one head: each has
    its loss, its metrics (metric:target), its prediction columns; the best metric names its
    target; predict writes both, with metrics where the new samples have the columns."""
    import pandas as pd

    home, _ = pipeline
    folder = _folder(home, "fine-multi")
    rows = read_jsonl(folder / "metrics.jsonl")
    train = [r for r in rows if r["split"] == "train"]
    val = [r for r in rows if r["split"] == "validation"]
    assert {"target_loss:age", "target_loss:study"} <= set(train[-1])
    # the total is the weighted sum of the two (weights 1 and 0.5), step by step
    for r in train:
        assert r["target_loss"] == pytest.approx(r["target_loss:age"] + 0.5 * r["target_loss:study"], rel=1e-4)
    last = val[-1]
    for key in ("mae:age", "r2:age", "accuracy:study", "f1:study", "target_loss:age", "target_loss:study"):
        assert key in last, sorted(last)
    assert "mae" not in last and "accuracy" not in last
    # the study head learned: below a uniform guess over the training classes, where its fresh
    # head (near-zero logits) starts
    split = pd.read_csv(folder / "split.tsv", sep="\t", dtype=str)
    meta = pd.read_csv(ORAL / "metadata-study.tsv", sep="\t", dtype=str).set_index("sample_id")
    n_classes = meta.loc[split[split["split"] == "train"]["sample-id"], "study"].nunique()
    assert last["target_loss:study"] < np.log(n_classes) - 0.1
    status = json.loads((folder / "status.json").read_text())
    assert status["best_metric"]["name"] == "mae:age"
    assert status["best_metric"]["value"] == min(r["mae:age"] for r in val)
    pred = pd.read_csv(folder / "predictions.tsv", sep="\t", comment="#", dtype={"sample-id": str, "truth:study": str,
                                                                     "prediction:study": str})
    probs = [c for c in pred.columns if c.startswith("probability:study:")]
    assert list(pred.columns) == ["sample-id", "split", "prediction:age", "truth:age", "prediction:study",
                                  "truth:study"] + probs and len(probs) >= n_classes
    assert np.allclose(pred[probs].sum(axis=1), 1, atol=1e-5)
    assert (pred[probs].to_numpy().argmax(1) == [probs.index(f"probability:study:{c}") for c in pred["prediction:study"]]).all()
    # the outputs are the best checkpoint's (the validation at the best step), not the last's
    best = next(r for r in val if r["step"] == status["best_metric"]["step"])
    assert np.mean(np.abs(pred["prediction:age"] - pred["truth:age"])) == pytest.approx(best["mae:age"], rel=1e-3)
    assert (pred["prediction:study"] == pred["truth:study"]).mean() == pytest.approx(best["accuracy:study"], abs=1e-6)
    assert (folder / "plots" / "pred_vs_true_age.png").exists() and (folder / "plots" / "confusion_study.png").exists()
    # predict on new samples: both targets, metrics named by target
    p = _folder(home, "pred-multi")
    out = pd.read_csv(p / "predictions.tsv", sep="\t", comment="#", dtype=str)
    assert len(out) == 60 and {"prediction:age", "prediction:study", "truth:study"} <= set(out.columns)
    summary = [r for r in read_jsonl(p / "metrics.jsonl") if r["split"] == "predict"][0]
    assert {"mae:age", "accuracy:study"} <= set(summary)
    # the training Dataset cloned onto new samples whose metadata has no study column: the same
    # predictions (same samples, same model), age compared with the truth, study only predicted
    u = pd.read_csv(_folder(home, "pred-unlabelled") / "predictions.tsv", sep="\t", comment="#", dtype=str)
    assert list(u["sample-id"]) == list(out["sample-id"])
    assert list(u["prediction:age"]) == list(out["prediction:age"])
    assert list(u["prediction:study"]) == list(out["prediction:study"])
    assert u["truth:age"].notna().all() and ("truth:study" not in u or u["truth:study"].isna().all())
    summary = [r for r in read_jsonl(_folder(home, "pred-unlabelled") / "metrics.jsonl") if r["split"] == "predict"][0]
    assert "mae:age" in summary and "accuracy:study" not in summary
