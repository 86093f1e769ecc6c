"""Pretraining throughput (samples/s) and peak memory at the reference model size, in one run.

Each configuration runs in its own process (so peak RSS is its own): batch 8 and 32, per-batch
ASV de-duplication on and off, on the bundled oral-age data (maxAsvsPerSample 1024, maxBp 150,
the reference defaults). Prints a table and the ratios; --json writes the numbers.

    .venv/bin/python benchmarks/train_throughput.py [--steps 4] [--device cpu|cuda] [--json out.json]
        [--dedup on|off|both] [--precision no|bf16|fp16]
    # on a GPU also: --attention math|mem_efficient|flash --compile

Model FLOP utilisation (MFU, as nanoGPT's estimate_mfu): the FLOPs each timed step executed,
forward and backward (counted by torch.utils.flop_counter over the same batches after timing,
with the CPU attention kernel's FLOPs added by torch's own SDPA formulas), per second, over the
device's peak: --peak-tflops, else the data-sheet dense peak of a known GPU, else on a CPU the
best dense matmul throughput this process reaches (torch.mm 2048^3, its threads, its dtype).

The reference implementation's rate: --reference-cmd runs it ('{batch}' and '{steps}' in the
command are replaced; the command must train exactly that many optimizer steps at that batch
and exit) at 1 and 3 steps and takes the difference, so its start-up cost cancels; without it,
--reference-samples-per-s gives the figure (default 0.35 at batch 8: measured side by side on
the development CPU, issue 15), and the table says which.

--compare REV checks that new code did not slow the default path: it checks REV out into a git
worktree and, in one run, alternates the same steps (pretraining, and fine-tuning a fresh target
head) between that tree and this one, --repeat times, at the default Model (and, with
--model-set, extra Model fields on this tree only, e.g. sequenceSkip=false):

    .venv/bin/python benchmarks/train_throughput.py --compare 1b3203f --batches 8 --repeat 3
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ORAL = ROOT / "examples" / "data" / "oral-age"
REFERENCE_SAMPLES_PER_S = 0.35  # the reference implementation, batch 8, measured side by side (issue 15)

# dense data-sheet peaks (TFLOP/s) of known accelerators: (name fragment, fp32 without TF32, bf16/fp16)
GPU_PEAK_TFLOPS = [("H200", 66.9, 989.4), ("H100", 66.9, 989.4), ("A100", 19.5, 312.0),
                   ("MI300A", 122.6, 980.6), ("MI300X", 163.4, 1307.4), ("MI250", 47.9, 383.0)]


def _cpu_sdpa_flops():
    """torch's SDPA FLOP formulas for the fused CPU attention kernel flop_counter does not know."""
    import torch
    from torch.utils import flop_counter as FC

    def fwd(query, key, value, *a, out_shape=None, **k):
        return FC.sdpa_flop_count(query, key, value)

    def bwd(grad_out, query, key, value, *a, out_shape=None, **k):
        return FC.sdpa_backward_flop_count(grad_out, query, key, value)
    aten = torch.ops.aten
    return {aten._scaled_dot_product_flash_attention_for_cpu: fwd,
            aten._scaled_dot_product_flash_attention_for_cpu_backward: bwd}


def peak_flops(device: str, precision: str, given_tflops: float | None) -> tuple[float, str]:
    """(FLOP/s, where the figure comes from)."""
    import torch
    if given_tflops:
        return given_tflops * 1e12, "--peak-tflops"
    low = precision in ("bf16", "fp16")
    if device == "cuda":
        name = torch.cuda.get_device_name(0)
        for frag, fp32, half in GPU_PEAK_TFLOPS:
            if frag in name:
                return (half if low else fp32) * 1e12, f"{name} data sheet, dense {'bf16' if low else 'fp32'}"
        raise SystemExit(f"no known peak for {name}: pass --peak-tflops")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    a = torch.randn(2048, 2048, dtype=dtype)
    b = torch.randn(2048, 2048, dtype=dtype)
    best = float("inf")
    for _ in range(6):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * 2048 ** 3 / best, f"measured: torch.mm 2048^3 {str(dtype).split('.')[-1]}, {torch.get_num_threads()} threads"


def one(batch: int, dedup: bool, steps: int, device: str, precision: str, attention: str, compile_: bool,
        root: Path = ROOT, stage: str = "pretrain", model_set: dict | None = None,
        peak_tflops: float | None = None) -> dict:
    import numpy as np
    import torch
    import torch.nn.functional as F

    sys.path.insert(0, str(root))  # the code under test: this tree, or a --compare worktree
    from aam_runtime.data import batches as B
    from aam_runtime.data import table as T
    from aam_runtime.data.unifrac import DistanceLookup, compute
    from aam_runtime.model import AAM, pairwise_unifrac_loss

    from aamctl.api.schema import fill_defaults
    from aam_runtime.model import ModelConfig

    spec = fill_defaults("Model", {"apiVersion": "aam/v1alpha1", "kind": "Model", "metadata": {"name": "bench"},
                                   "spec": {"attentionBackend": attention, "dedupAsvs": dedup,
                                            **(model_set or {})}})["spec"]
    p = T.load(fill_defaults("Dataset", {"apiVersion": "aam/v1alpha1", "kind": "Dataset", "metadata": {"name": "b"},
                                         "spec": {"table": str(ORAL / "table.biom")}})["spec"])
    enc = B.encode(p, 150, 1024, "abundance")
    lookup = DistanceLookup(compute(p.sample_ids, p.asv_ids, p.counts, str(ORAL / "tree.nwk")), p.sample_ids)
    torch.manual_seed(0)
    finetune = stage == "finetune"
    model = AAM(ModelConfig.from_spec(spec), max_bp=150, n_outputs=1 if finetune else 0).to(device)
    model.attention_backend = attention
    fwd = torch.compile(model, dynamic=True) if compile_ else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    rng = np.random.default_rng(0)
    gen = torch.Generator().manual_seed(0)
    times, occ, uniq, timed = [], 0, 0, []

    def loss_of(f, b, rows, y):
        with torch.autocast(device_type=device, dtype=dtype, enabled=dtype is not None):
            if finetune:  # a fresh target head on a standardised target (values do not matter here)
                return F.huber_loss(f(b, need_target=True)["target"].float().squeeze(-1), y)
            out = f(b, mask_nucleotides=True, generator=gen)
            target = torch.from_numpy(lookup.sub(rows)).to(device)
            return pairwise_unifrac_loss(out["embedding"], target)[0] + F.cross_entropy(out["nuc_logits"].float(), out["nuc_targets"])
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for step in range(steps + 1):  # the first step warms up
        rows = rng.choice(len(p.sample_ids), size=batch, replace=False)
        nb = B.collate_numpy(enc, rows)
        b = B.to_torch(nb, device)
        y = torch.from_numpy(rng.standard_normal(batch).astype(np.float32)).to(device) if finetune else None
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss = loss_of(fwd, b, rows, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        if step:
            times.append(time.perf_counter() - t0)
            occ += int(nb["mask"].sum())
            uniq += int(nb["tokens"].shape[0])
            timed.append((rows, b, y))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB (Linux: KiB)
    gpu_peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None
    # the FLOPs those steps executed: the same batches again, forward and backward, counted
    from torch.utils.flop_counter import FlopCounterMode
    flops, sdpa = 0, _cpu_sdpa_flops()
    for rows, b, y in timed:
        with FlopCounterMode(display=False, custom_mapping=sdpa) as fc:
            loss_of(model, b, rows, y).backward()
        opt.zero_grad(set_to_none=True)
        flops += fc.get_total_flops()
    peak_fs, peak_src = peak_flops(device, precision, peak_tflops)
    mfu = flops / sum(times) / peak_fs
    return {"batch": batch, "dedup": dedup, "samples_per_s": batch * len(times) / sum(times),
            "s_per_step": sum(times) / len(times), "peak_rss_mib": round(peak), "gpu_peak_mib": gpu_peak,
            "asv_occurrences_per_unique": occ / max(1, uniq), "threads": torch.get_num_threads(),
            "device": device, "precision": precision, "attention": attention, "compile": compile_,
            "gflop_per_step": flops / len(timed) / 1e9, "peak_tflops": peak_fs / 1e12, "peak_source": peak_src,
            "mfu": mfu, "code": str(Path(sys.modules[AAM.__module__].__file__).parent.parent)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="no", choices=["no", "bf16", "fp16"])
    ap.add_argument("--attention", default="auto", choices=["auto", "math", "mem_efficient", "flash"])
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--batches", default="8,32")
    ap.add_argument("--json", default=None)
    ap.add_argument("--compare", default=None, metavar="REV", help="git revision to compare this tree with")
    ap.add_argument("--repeat", type=int, default=3, help="--compare: alternations per configuration")
    ap.add_argument("--model-set", action="append", default=[], metavar="FIELD=VALUE",
                    help="--compare: an extra variant of this tree with a Model field set (JSON value)")
    ap.add_argument("--dedup", default="both", choices=["on", "off", "both"])
    ap.add_argument("--peak-tflops", type=float, default=None, help="the device's peak for MFU (default: see above)")
    ap.add_argument("--reference-cmd", default=None,
                    help="shell command training the reference for {steps} steps at batch {batch}")
    ap.add_argument("--reference-samples-per-s", default=str(REFERENCE_SAMPLES_PER_S),
                    help="the reference's rate when it is not run: X (batch 8) or B=X,B=X")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--root", default=str(ROOT), help=argparse.SUPPRESS)
    ap.add_argument("--stage", default="pretrain", help=argparse.SUPPRESS)
    ap.add_argument("--set-json", default="{}", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        batch, dedup = a.one.split(":")
        print(json.dumps(one(int(batch), dedup == "1", a.steps, a.device, a.precision, a.attention, a.compile,
                             Path(a.root), a.stage, json.loads(a.set_json), a.peak_tflops)))
        return
    if a.compare:
        compare(a)
        return
    batches = [int(x) for x in a.batches.split(",")]
    reference = reference_rates(a, batches)
    results = []
    dedups = {"on": (True,), "off": (False,), "both": (True, False)}[a.dedup]
    for batch in batches:
        for dedup in dedups:
            cmd = [sys.executable, __file__, "--one", f"{batch}:{int(dedup)}", "--steps", str(a.steps), "--device",
                   a.device, "--precision", a.precision, "--attention", a.attention] + (["--compile"] if a.compile else []) \
                + (["--peak-tflops", str(a.peak_tflops)] if a.peak_tflops else [])
            out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
            if out.returncode != 0:
                print(out.stderr[-2000:], file=sys.stderr)
                sys.exit(1)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            results.append(r)
            print(f"batch {batch:>3} dedup {'on ' if dedup else 'off'} {a.precision:>4}: {r['samples_per_s']:7.2f} samples/s "
                  f"({r['s_per_step']:.2f} s/step), peak RSS {r['peak_rss_mib']} MiB"
                  + (f", GPU peak {r['gpu_peak_mib']:.0f} MiB" if r["gpu_peak_mib"] else "")
                  + f", {r['gflop_per_step']:.0f} GFLOP/step, MFU {100 * r['mfu']:.1f}%"
                  + f", ASV occurrences per distinct ASV {r['asv_occurrences_per_unique']:.2f}", flush=True)
    print(f"\nMFU peak: {results[0]['peak_tflops']:.2f} TFLOP/s ({results[0]['peak_source']})")
    by = {(r["batch"], r["dedup"]): r for r in results}
    print("ratios (same run):")
    for batch in batches:
        parts = []
        on, off = by.get((batch, True)), by.get((batch, False))
        if on and off:
            parts.append(f"de-dup speed-up {on['samples_per_s'] / off['samples_per_s']:.2f}x, "
                         f"memory {on['peak_rss_mib'] / off['peak_rss_mib']:.2f}x")
        best = on or off
        ref_batch = batch if batch in reference["rates"] else min(reference["rates"], key=lambda b: abs(b - batch))
        rate = reference["rates"][ref_batch]
        parts.append(f"vs reference ({rate:.3g} samples/s at batch {ref_batch}, {reference['source']}) "
                     f"{best['samples_per_s'] / rate:.1f}x")
        print(f"  batch {batch}: " + "; ".join(parts))
    if a.json:
        Path(a.json).write_text(json.dumps({"results": results, "reference": reference}, indent=2))


def reference_rates(a, batches: list[int]) -> dict:
    """{'rates': {batch: samples/s}, 'source': ...}: run the reference (--reference-cmd) or take the figure."""
    if not a.reference_cmd:
        text = a.reference_samples_per_s
        if "=" in text:
            rates = {int(b): float(x) for b, x in (kv.split("=", 1) for kv in text.split(","))}
        else:
            rates = {8: float(text)}
        return {"rates": rates, "source": "given" if text != str(REFERENCE_SAMPLES_PER_S)
                else "given: issue 15's side-by-side measurement"}
    rates = {}
    for batch in batches:
        took = {}
        for steps in (1, 3):
            cmd = a.reference_cmd.replace("{batch}", str(batch)).replace("{steps}", str(steps))
            t0 = time.perf_counter()
            p = subprocess.run(cmd, shell=True, capture_output=True, text=True)
            took[steps] = time.perf_counter() - t0
            if p.returncode != 0:
                raise SystemExit(f"--reference-cmd failed ({p.returncode}): {cmd}\n{p.stderr[-2000:]}")
        per_step = (took[3] - took[1]) / 2
        if per_step <= 0:
            raise SystemExit("--reference-cmd took no longer for 3 steps than for 1: does it honour {steps}?")
        rates[batch] = batch / per_step
        print(f"reference, batch {batch}: {per_step:.2f} s/step ({rates[batch]:.3g} samples/s; 1 step "
              f"{took[1]:.1f}s, 3 steps {took[3]:.1f}s)", flush=True)
    return {"rates": rates, "source": "measured by --reference-cmd"}


def _child(a, batch: int, dedup: bool, root: Path, stage: str, model_set: dict) -> dict:
    cmd = [sys.executable, __file__, "--one", f"{batch}:{int(dedup)}", "--steps", str(a.steps), "--device", a.device,
           "--precision", a.precision, "--attention", a.attention, "--root", str(root), "--stage", stage,
           "--set-json", json.dumps(model_set)] + (["--compile"] if a.compile else [])
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if out.returncode != 0:
        print(out.stderr[-2000:], file=sys.stderr)
        sys.exit(1)
    return json.loads(out.stdout.strip().splitlines()[-1])


def compare(a) -> None:
    """Before/after in one run: REV's tree and this one, alternated, same data, same seeds."""
    import statistics
    import tempfile

    rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", a.compare], capture_output=True,
                         text=True, check=True).stdout.strip()
    tmp = Path(tempfile.mkdtemp(prefix="aam-before-"))
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tmp / "tree"), rev],
                   capture_output=True, check=True)
    variants = [(f"before ({rev})", tmp / "tree", {}), ("after (defaults)", ROOT, {})]
    for kv in a.model_set:
        field, value = kv.split("=", 1)
        variants.append((f"after ({kv})", ROOT, {field: json.loads(value)}))
    results = []
    try:
        for stage in ("pretrain", "finetune"):
            for batch in [int(x) for x in a.batches.split(",")]:
                got: dict = {name: [] for name, _, _ in variants}
                for _ in range(a.repeat):
                    for name, root, extra in variants:
                        r = _child(a, batch, True, root, stage, extra)
                        got[name].append(r["samples_per_s"])
                        results.append({**r, "stage": stage, "variant": name})
                base = statistics.median(got[variants[0][0]])
                for name, _, _ in variants:
                    xs = got[name]
                    print(f"{stage:8} batch {batch:>3} {name:32}: median {statistics.median(xs):6.2f} samples/s "
                          f"(runs {', '.join(f'{x:.2f}' for x in xs)}), {statistics.median(xs) / base:.3f}x before",
                          flush=True)
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tmp / "tree")], capture_output=True)
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
