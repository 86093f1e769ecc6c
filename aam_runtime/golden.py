"""Golden numerics: one fixed tiny AAM on fixed inputs, run per dtype, saved and compared across
platforms (`aamctl doctor --write-golden FILE` / `--golden FILE`).

A golden file holds the model's shape (a full Model spec), its weights, the inputs (tokens, counts,
the nucleotide mask, UniFrac distances, targets) and, per dtype, every output, every loss and every
parameter's gradient after one backward, as float32 on the CPU. Weights and inputs travel in the
file, so a comparison never depends on a random generator agreeing across machines or torch
versions: only the arithmetic differs, which is what the check is for (CUDA vs ROCm, a new driver,
a new torch, CPU vs GPU).

Differences are measured per tensor relative to the tensor's largest magnitude (max |a - b| /
max |golden|), so one tolerance fits logits, losses and gradients alike; the tolerances per dtype
are in TOLERANCE.
"""
from __future__ import annotations

import io
import os
import platform
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from aam_runtime.runfolder import atomic_write

FORMAT = "aam-golden/1"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# relative to each tensor's scale (see relative_difference). Measured on this CPU: fp32 math vs
# flash attention 1.8e-7; bf16 against fp32 itself at most 7.8e-3, fp16 against fp32 1.0e-3. Two
# platforms' bf16 results differ by rounding of the same size, so the tolerances sit a few times
# above those, and a wrong kernel (ROCm's masked mem_efficient before 6.3 ignores the mask) lands
# orders of magnitude above them.
TOLERANCE = {"fp32": 1e-4, "bf16": 3e-2, "fp16": 5e-3}
SHIPPED = Path(__file__).resolve().parent / "golden_files"

# the inputs: small enough for a file of a few hundred kB, big enough to cross every layer kind
BATCH, DISTINCT_ASVS, ASVS_PER_SAMPLE, BASES = 6, 24, 10, 40


class GoldenError(Exception):
    """A golden file that cannot be used (missing, not a golden file, another model version)."""


def shipped(name: str) -> Path | None:
    """A golden file shipped with aam (`cpu`), by name."""
    p = SHIPPED / f"{name}.pt"
    return p if p.is_file() else None


def make_inputs(seed: int = 7) -> dict:
    """Fixed inputs from numpy's PCG64 (the same stream on every platform)."""
    rng = np.random.default_rng(seed)
    tokens = np.zeros((DISTINCT_ASVS, BASES + 1), dtype=np.int64)
    tokens[:, 0] = 5  # START
    lengths = rng.integers(BASES - 8, BASES + 1, size=DISTINCT_ASVS)
    for i, n in enumerate(lengths):
        tokens[i, 1:n + 1] = rng.integers(1, 5, size=n)  # A C G T
    counts = np.zeros((BATCH, ASVS_PER_SAMPLE), dtype=np.float32)
    index = np.zeros((BATCH, ASVS_PER_SAMPLE), dtype=np.int64)
    mask = np.zeros((BATCH, ASVS_PER_SAMPLE), dtype=bool)
    for b in range(BATCH):
        n = int(rng.integers(3, ASVS_PER_SAMPLE + 1))  # padded samples too
        index[b, :n] = rng.choice(DISTINCT_ASVS, size=n, replace=False)
        counts[b, :n] = np.log1p(rng.integers(1, 500, size=n))
        mask[b, :n] = True
    real = (tokens != 0) & (tokens != 5)
    masked = real & (rng.random(tokens.shape) < 0.15)
    d = rng.random((BATCH, BATCH)).astype(np.float32) * 0.6 + 0.2
    d = (d + d.T) / 2
    np.fill_diagonal(d, 0.0)
    return {"tokens": torch.from_numpy(tokens), "asv_index": torch.from_numpy(index),
            "mask": torch.from_numpy(mask), "log_counts": torch.from_numpy(counts),
            "nuc_mask": torch.from_numpy(masked), "distances": torch.from_numpy(d),
            "targets": torch.from_numpy(rng.normal(30.0, 10.0, size=(BATCH, 1)).astype(np.float32))}


def _model(spec: dict, device: str, backend: str, weights: dict | None):
    from aam_runtime.model import AAM, ModelConfig

    torch.manual_seed(0)
    model = AAM(ModelConfig.from_spec(spec), max_bp=BASES, n_outputs=1, max_asvs=2 * ASVS_PER_SAMPLE)
    if weights is not None:
        try:
            model.load_state_dict(weights)
        except RuntimeError as exc:
            raise GoldenError("the golden file's weights do not fit this version's model "
                              f"({str(exc).splitlines()[0][:120]}); write a new golden file with this "
                              "version on a reference machine") from None
    model.attention_backend = backend
    return model.to(device).train()  # dropout is 0 in the golden spec: train() only picks training paths


def run(spec: dict, inputs: dict, weights: dict, dtype: str, device: str, backend: str) -> dict[str, torch.Tensor]:
    """Forward, the pretraining and target losses, one backward: name -> float32 CPU tensor."""
    from aam_runtime import losses as L
    from aam_runtime.data.table import MASK
    from aam_runtime.model import pairwise_unifrac_loss

    model = _model(spec, device, backend, weights)
    pos = inputs["nuc_mask"].to(device)
    model.mask_tokens = lambda tokens, generator=None: (tokens.masked_fill(pos, MASK), pos)
    batch = {k: inputs[k].to(device) for k in ("tokens", "asv_index", "mask", "log_counts")}
    dev_type = torch.device(device).type
    ctx = (torch.autocast(dev_type, dtype=DTYPES[dtype]) if dtype != "fp32"
           else torch.autocast(dev_type, enabled=False))
    with ctx:
        out = model(batch, mask_nucleotides=True, need_target=True)
        unifrac, _ = pairwise_unifrac_loss(out["embedding"], inputs["distances"].to(device))
        nucleotide, _ = L.nucleotide(out)
        count = L.count(out, batch)
        target = F.mse_loss(out["target"].float(), inputs["targets"].to(device))
        total = unifrac + nucleotide + count + target
    total.backward()
    result = {f"out/{k}": out[k] for k in ("embedding", "nuc_logits", "count_pred", "target")}
    result.update({"loss/unifrac": unifrac, "loss/nucleotide": nucleotide, "loss/count": count,
                   "loss/target": target, "loss/total": total})
    result.update({f"grad/{n}": p.grad for n, p in model.named_parameters() if p.grad is not None})
    return {k: v.detach().float().cpu().contiguous() for k, v in result.items()}


def supported_dtypes(device: str) -> list[str]:
    """fp32 always; bf16/fp16 where autocast runs them on this device."""
    out = ["fp32"]
    for name in ("bf16", "fp16"):
        if device.startswith("cuda"):
            if name == "bf16" and not torch.cuda.is_bf16_supported():
                continue
        else:
            try:
                with torch.autocast("cpu", dtype=DTYPES[name]):
                    torch.nn.functional.linear(torch.ones(2, 2), torch.ones(2, 2))
            except RuntimeError:
                continue
        out.append(name)
    return out


def describe_platform(device: str, backend: str) -> dict:
    hip = getattr(torch.version, "hip", None)
    build = f"ROCm {hip}" if hip else (f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU")
    name = torch.cuda.get_device_name(0) if device.startswith("cuda") else cpu_name()
    return {"torch": str(torch.__version__), "build": build, "device": device, "device_name": name,
            "attention_backend": backend, "python": platform.python_version()}


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write(path: str | os.PathLike, spec: dict, device: str, backend: str) -> dict:
    """Compute every supported dtype and save the golden file (atomic rename); returns its contents."""
    torch.manual_seed(0)
    weights = {k: v.detach().clone() for k, v in _model(spec, "cpu", backend, None).state_dict().items()}
    inputs = make_inputs()
    results = {dt: run(spec, inputs, weights, dt, device, backend) for dt in supported_dtypes(device)}
    doc = {"format": FORMAT, "spec": spec, "platform": describe_platform(device, backend),
           "weights": weights, "inputs": inputs, "results": results}
    buf = io.BytesIO()
    torch.save(doc, buf)
    atomic_write(Path(path), buf.getbuffer())
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)  # a file to share with another cluster, not a private one
    return doc


def load(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file() and shipped(str(path)) is not None:
        path = shipped(str(path))
    if not path.is_file():
        names = ", ".join(sorted(p.stem for p in SHIPPED.glob("*.pt"))) or "none"
        raise GoldenError(f"{path}: no such golden file (shipped with aam: {names})")
    try:
        doc = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets one message
        raise GoldenError(f"{path}: not a golden file torch can read ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:100] if str(exc) else ''})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise GoldenError(f"{path}: not an aam golden file (format {doc.get('format') if isinstance(doc, dict) else '?'!r}, "
                          f"expected {FORMAT!r}); write one with 'aamctl doctor --write-golden FILE'")
    return doc


def relative_difference(a: torch.Tensor, b: torch.Tensor, floor: float = 0.0) -> float:
    """max |a - b| / max(max |b|, floor): the largest difference on the golden tensor's own scale.
    floor keeps a tensor that is zero up to rounding (a LayerNorm bias feeding a softmax pool has
    a gradient of ~1e-9 where its neighbours have ~1e-1) from dividing rounding by rounding."""
    if a.shape != b.shape:
        return float("inf")
    if not b.numel():
        return 0.0
    scale = max(float(b.abs().max()), floor)
    diff = float((a - b).abs().max())
    if not np.isfinite(diff):
        return float("inf")
    return diff / scale if scale > 0 else diff


def compare(golden: dict, device: str, backend: str | None = None, show: int = 5) -> tuple[bool, list[str]]:
    """Recompute the golden file's dtypes here; (passed, report lines)."""
    backend = backend or golden["platform"].get("attention_backend", "math")
    here = supported_dtypes(device)
    lines = [f"golden: {fmt_platform(golden['platform'])}",
             f"here:   {fmt_platform(describe_platform(device, backend))}"]
    ok = True
    for dt, ref in golden["results"].items():
        if dt not in here:
            lines.append(f"{dt}: not compared (autocast {dt} is not available here)")
            continue
        got = run(golden["spec"], golden["inputs"], golden["weights"], dt, device, backend)
        floors = group_floors(ref)
        diffs = sorted(((relative_difference(got[k], v, floors[group(k)]) if k in got else float("inf"), k)
                        for k, v in ref.items()), reverse=True)
        worst = diffs[0][0] if diffs else 0.0
        tol = TOLERANCE[dt]
        bad = [d for d in diffs if not d[0] <= tol]
        ok = ok and not bad
        lines.append(f"{dt}: {'ok' if not bad else 'FAIL'}  largest difference {worst:.2e} of scale "
                     f"(tolerance {tol:.0e}); {len(bad)} of {len(diffs)} tensors over")
        listed = max(show, min(len(bad), 3 * show))
        for d, k in diffs[:listed]:
            lines.append(f"    {k:<44} {d:.2e}" + ("  over" if not d <= tol else ""))
        if len(bad) > listed:
            lines.append(f"    ... and {len(bad) - listed} more over the tolerance")
    not_here = [dt for dt in here if dt not in golden["results"]]
    if not_here:
        lines.append(f"not in the golden file: {', '.join(not_here)}")
    return ok, lines


def group(name: str) -> str:
    return name.split("/", 1)[0]  # out | loss | grad


def group_floors(ref: dict, share: float = 1e-3) -> dict[str, float]:
    """Per group (outputs, losses, gradients): share of the group's largest magnitude."""
    floors: dict[str, float] = {}
    for k, v in ref.items():
        if v.numel():
            floors[group(k)] = max(floors.get(group(k), 0.0), float(v.abs().max()) * share)
    return floors


def fmt_platform(p: dict) -> str:
    return (f"torch {p.get('torch')} ({p.get('build')}), {p.get('device')} {p.get('device_name')}, "
            f"attention {p.get('attention_backend')}")
