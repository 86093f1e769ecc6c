"""How each part's cost grows with the data: samples, ASVs, ASVs per sample. One run, one table.

    .venv/bin/python benchmarks/scale.py --out /work/scale [--sizes 10000,30000,100000]
        [--rich 2000] [--ssu-up-to 30000] [--train-asvs 64,256,1024,2500,5000] [--json out.json]

Data: benchmarks/synth_data.py, seeded (samples x 2 ASVs in the table, median 53 ASVs per
sample like the oral data; the rich variant: median 2,500 ASVs per sample, 1,000-5,000).
Every measurement runs in its own process, so each peak RSS is that step's own.

- load: read the BIOM table and prepare it (T.load); encode: tokenize + per-sample ASV choice;
- preflight: `aamctl apply --dry-run` of a finetune run and of a pretraining run (whole command);
- batches: the data pipeline's batches per second (collate, batch 8; rich: batch 2 and 8);
- ssu: UniFrac into a fresh cache (seconds, peak RSS of ssu + conversion, cache bytes), then a
  batch's B x B block read from the memory-mapped cache: cold (pages dropped with fadvise) and warm;
- train: one pretraining step (UniFrac + masked nucleotides, reference Model sizes, batch 2, CPU)
  against ASVs per sample, gradient checkpointing off and on, under a 20 GiB address-space cap
  (a step that needs more reports "out of memory" instead of taking the machine down);
- status: `aamctl status` with 10,000 runs in the store (benchmarks/status_runs.py).

Growth exponents are the least-squares slope of log(cost) against log(samples).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _children_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def _spec(data: Path, **over) -> dict:
    from aamctl.api.schema import fill_defaults

    spec = {"table": str(data / "table.biom"), "tree": str(data / "tree.nwk"),
            "metadata": {"path": str(data / "metadata.tsv")}, "targets": [{"name": "age", "type": "regression"}],
            "maxBp": 150, **over}
    return fill_defaults("Dataset", {"apiVersion": "aam/v1alpha1", "kind": "Dataset", "metadata": {"name": "s"},
                                     "spec": spec})["spec"]


# ------------------------------------------------------------------ steps (each in its own process)

def step_load(data: Path, limit: int) -> dict:
    from aam_runtime.data import batches as B
    from aam_runtime.data import table as T

    t0 = time.perf_counter()
    p = T.load(_spec(data))
    t1 = time.perf_counter()
    tokens, _ = T.tokenize(p.asv_ids, 150)
    t2 = time.perf_counter()
    B.encode(p, 150, limit, "abundance")
    t3 = time.perf_counter()
    return {"load_s": t1 - t0, "tokenize_s": t2 - t1, "encode_s": t3 - t2, "nnz": int(p.counts.nnz),
            "samples": p.n_samples, "asvs": len(p.asv_ids), "rss_mib": _rss_mib()}


def step_batches(data: Path, limit: int, batch: int, n: int) -> dict:
    import numpy as np

    from aam_runtime.data import batches as B
    from aam_runtime.data import table as T

    p = T.load(_spec(data))
    enc = B.encode(p, 150, limit, "abundance")
    order = B.epoch_batches(p.n_samples, batch, 1, 0, 0)[:n]
    occ = uniq = 0
    t0 = time.perf_counter()
    for rows in order:
        nb = B.collate_numpy(enc, rows)
        occ += int(nb["mask"].sum())
        uniq += nb["tokens"].shape[0]
    dt = time.perf_counter() - t0
    return {"batches_per_s": len(order) / dt, "batch": batch, "occurrences_per_distinct_asv": occ / max(1, uniq),
            "asv_slots_per_batch": occ / max(1, len(order)),
            "rss_mib": _rss_mib()}


def step_ssu(data: Path, cache: Path, batch: int, reads: int) -> dict:
    import numpy as np

    os.environ["AAM_CACHE_DIR"] = str(cache)
    from aam_runtime.data import table as T
    from aam_runtime.data import unifrac as U

    p = T.load(_spec(data))
    t0 = time.perf_counter()
    path = U.compute(p.sample_ids, p.asv_ids, p.counts, str(data / "tree.nwk"), backend="ssu", use_cache=False)
    seconds = time.perf_counter() - t0
    lookup = U.DistanceLookup(path, p.sample_ids)
    rng = np.random.default_rng(0)
    batches = [rng.choice(p.n_samples, size=batch, replace=False) for _ in range(reads)]
    cold = []
    fd = os.open(path, os.O_RDONLY)
    for rows in batches:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        t = time.perf_counter()
        lookup.sub(rows)
        cold.append(time.perf_counter() - t)
    prefetched = []
    for rows in batches:  # as training does: the block is asked for one step ahead
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        lookup.prefetch(rows)
        time.sleep(0.05)  # a 50 ms training step in between
        t = time.perf_counter()
        lookup.sub(rows)
        prefetched.append(time.perf_counter() - t)
    os.close(fd)
    warm = []
    for rows in batches:
        t = time.perf_counter()
        lookup.sub(rows)
        warm.append(time.perf_counter() - t)
    return {"ssu_s": seconds, "cache_bytes": path.stat().st_size, "cache_format": "fp32 .npy (memory-mapped)",
            "batch_read_cold_ms": 1000 * float(np.median(cold)),
            "batch_read_prefetched_ms": 1000 * float(np.median(prefetched)), "batch_read_warm_ms": 1000 * float(np.median(warm)),
            "rss_mib": _rss_mib(), "ssu_rss_mib": _children_rss_mib()}


def step_train(data: Path, asvs: int, ckpt: bool, steps: int, batch: int) -> dict:
    import numpy as np
    import torch
    import torch.nn.functional as F

    from aam_runtime.data import batches as B
    from aam_runtime.data import table as T
    from aam_runtime.model import AAM, ModelConfig, pairwise_unifrac_loss
    from aamctl.api.schema import fill_defaults

    spec = fill_defaults("Model", {"apiVersion": "aam/v1alpha1", "kind": "Model", "metadata": {"name": "m"},
                                   "spec": {"gradientCheckpointing": ckpt}})["spec"]
    p = T.load(_spec(data))
    enc = B.encode(p, 150, asvs, "abundance")
    nnz = np.array([len(x) for x in enc.sel_idx])
    big = np.flatnonzero(nnz >= asvs)  # samples that fill the limit
    if len(big) < batch:
        return {"skipped": f"fewer than {batch} samples with {asvs} ASVs"}
    torch.manual_seed(0)
    model = AAM(ModelConfig.from_spec(spec), max_bp=150, max_asvs=max(1024, asvs))
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    times = []
    try:
        for step in range(max(1, steps + (steps > 0))):
            rows = big[step * batch:(step + 1) * batch] if len(big) >= (steps + 1) * batch else big[:batch]
            b = B.to_torch(B.collate_numpy(enc, rows))
            t0 = time.perf_counter()
            out = model(b, mask_nucleotides=True, generator=gen)
            target = torch.rand(len(rows), len(rows))
            target = (target + target.T) / 2 * (1 - torch.eye(len(rows)))
            loss = pairwise_unifrac_loss(out["embedding"], target)[0] + \
                F.cross_entropy(out["nuc_logits"].float(), out["nuc_targets"])
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if step or steps == 0:  # --train-steps 0: time the first (cold) step alone
                times.append(time.perf_counter() - t0)
    except (RuntimeError, MemoryError) as exc:
        if "memory" not in str(exc).lower() and not isinstance(exc, MemoryError):
            raise
        return {"asvs": asvs, "checkpointing": ckpt, "oom": True, "rss_mib": _rss_mib()}
    return {"asvs": asvs, "checkpointing": ckpt, "s_per_step": float(np.mean(times)), "batch": batch,
            "rss_mib": _rss_mib(), "threads": torch.get_num_threads()}


# ------------------------------------------------------------------ driver

def _one(args: list[str], cap_gib: float | None = None, timeout: float = 3600) -> dict:
    def limit():
        if cap_gib:
            cap = int(cap_gib * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    p = subprocess.run([sys.executable, __file__, "--one", *args], capture_output=True, text=True,
                       preexec_fn=limit, timeout=timeout)
    if p.returncode != 0:
        tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
        return {"error": " | ".join(tail)}
    return json.loads(p.stdout.strip().splitlines()[-1])


def _timed_cmd(cmd: list[str], env: dict) -> dict:
    """A whole command in a child process: seconds, its peak RSS, exit status, last line."""
    code = ("import resource, subprocess, sys, time, json; t=time.perf_counter(); "
            "p=subprocess.run(sys.argv[1:], capture_output=True, text=True); "
            "print(json.dumps({'s': time.perf_counter()-t, 'rc': p.returncode, "
            "'rss_mib': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss/1024, "
            "'last': (p.stderr.strip().splitlines() or [''])[-1][:300]}))")
    p = subprocess.run([sys.executable, "-c", code, *cmd], capture_output=True, text=True, env=env)
    return json.loads(p.stdout)


def ensure_data(out: Path, name: str, samples: int, asvs: int, per_sample: float, depth: int) -> Path:
    folder = out / name
    want = {"samples": samples, "asvs": asvs}
    info = folder / "synth.json"
    if info.exists():
        have = json.loads(info.read_text())
        if all(have.get(k) == v for k, v in want.items()):
            return folder
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "synth_data.py"), str(folder), "--samples", str(samples),
                    "--asvs", str(asvs), "--per-sample", str(per_sample), "--depth", str(depth)],
                   check=True, capture_output=True)
    return folder


def preflight(data: Path, stage: str, home: Path, cache: Path) -> dict:
    run = {"pretrain": "  stage: pretrain\n  modelRef: m\n",
           "finetune": "  stage: finetune\n  modelRef: m\n  target: age\n"}[stage]
    (data / f"{stage}.yaml").write_text(f"""apiVersion: aam/v1alpha1
kind: Dataset
metadata: {{name: scale}}
spec:
  table: table.biom
  tree: tree.nwk
  metadata: {{path: metadata.tsv}}
  targets: [{{name: age, type: regression}}]
  maxBp: 150
---
apiVersion: aam/v1alpha1
kind: Model
metadata: {{name: m}}
spec: {{}}
---
apiVersion: aam/v1alpha1
kind: Run
metadata: {{name: scale-{stage}}}
spec:
  datasetRef: scale
{run}  trainer: {{epochs: 1, batchSize: 8}}
""")
    env = dict(os.environ, AAM_CACHE_DIR=str(cache))
    r = _timed_cmd([str(ROOT / ".venv" / "bin" / "aamctl"), "--home", str(home), "apply", "--dry-run", "-f",
                    str(data / f"{stage}.yaml")], env)
    return r


def slope(xs, ys) -> float | None:
    import numpy as np

    pts = [(x, y) for x, y in zip(xs, ys) if y and y > 0]
    if len(pts) < 2:
        return None
    lx, ly = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
    return float(np.polyfit(lx, ly, 1)[0])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "aam-scale")
    ap.add_argument("--sizes", default="10000,30000,100000")
    ap.add_argument("--rich", type=int, default=2000, help="samples of the rich variant (0: none)")
    ap.add_argument("--ssu-up-to", type=int, default=30000, help="largest size UniFrac is computed at")
    ap.add_argument("--train-asvs", default="64,256,1024,2500,5000")
    ap.add_argument("--train-steps", type=int, default=2)
    ap.add_argument("--status-runs", type=int, default=10000)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--only", default=None, help="comma-separated steps of the sized runs to measure "
                    "(load,preflight,batches,ssu); skips the rich data, training and status")
    ap.add_argument("--one", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        kind, *rest = a.one
        fns = {"load": lambda d, lim: step_load(Path(d), int(lim)),
               "batches": lambda d, lim, b, n: step_batches(Path(d), int(lim), int(b), int(n)),
               "ssu": lambda d, c, b, n: step_ssu(Path(d), Path(c), int(b), int(n)),
               "train": lambda d, k, ck, st, b: step_train(Path(d), int(k), ck == "1", int(st), int(b))}
        print(json.dumps(fns[kind](*rest)))
        return 0

    a.out.mkdir(parents=True, exist_ok=True)
    results: dict = {"sizes": {}, "rich": {}, "train": [], "status": None}
    sizes = [int(x) for x in a.sizes.split(",") if x]
    for n in sizes:
        data = ensure_data(a.out, f"s{n // 1000}k", n, 2 * n, 53, 1000)
        r: dict = {"data": json.loads((data / "synth.json").read_text())}
        only = set(a.only.split(",")) if a.only else {"load", "preflight", "batches", "ssu"}
        if "load" in only:
            r["load"] = _one(["load", str(data), "1024"])
        if "preflight" in only:
            r["preflight_finetune"] = preflight(data, "finetune", a.out / "home", a.out / "cache-preflight")
            r["preflight_pretrain"] = preflight(data, "pretrain", a.out / "home", a.out / "cache-preflight")
        if "batches" in only:
            r["batches"] = _one(["batches", str(data), "1024", "8", "2000"])
        if n <= a.ssu_up_to and "ssu" in only:
            r["ssu"] = _one(["ssu", str(data), str(a.out / f"cache-{n}"), "8", "30"], timeout=7200)
            for f in (a.out / f"cache-{n}" / "unifrac").glob("*.npy*"):
                f.unlink()  # tens of GB at scale: measured, not kept
        results["sizes"][n] = r
        print(json.dumps({n: r}), flush=True)
    if a.rich and not a.only:
        data = ensure_data(a.out, f"rich{a.rich // 1000}k", a.rich, 20 * a.rich, 2500, 20000)
        r = {"data": json.loads((data / "synth.json").read_text())}
        r["load"] = _one(["load", str(data), "5000"])
        r["preflight_pretrain"] = preflight(data, "pretrain", a.out / "home", a.out / "cache-preflight")
        r["batches_b2"] = _one(["batches", str(data), "5000", "2", "200"])
        r["batches_b8"] = _one(["batches", str(data), "5000", "8", "100"])
        results["rich"] = r
        print(json.dumps({"rich": r}), flush=True)
        for k in [int(x) for x in a.train_asvs.split(",") if x]:
            for ck in (0, 1):
                t = _one(["train", str(data), str(k), str(ck), str(a.train_steps), "2"], cap_gib=20, timeout=7200)
                t.setdefault("asvs", k)
                t.setdefault("checkpointing", bool(ck))
                results["train"].append(t)
                print(json.dumps(t), flush=True)
    if a.status_runs and not a.only:
        p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "status_runs.py"), "--runs", str(a.status_runs),
                            "--repeat", "3"], capture_output=True, text=True)
        results["status"] = p.stdout.strip()
        print(p.stdout, flush=True)
    report(results, sizes)
    if a.json:
        a.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


def report(results: dict, sizes: list[int]) -> None:
    rows = results["sizes"]
    print("\n| step | " + " | ".join(f"{n:,} samples" for n in sizes) + " | growth exponent |")
    print("|---" * (len(sizes) + 2) + "|")

    def line(label, get, fmt="{:.2f}"):
        vals = []
        for n in sizes:
            try:
                vals.append(get(rows[n]))
            except (KeyError, TypeError):
                vals.append(None)
        e = slope(sizes, vals)
        cells = [fmt.format(v) if isinstance(v, (int, float)) else "-" for v in vals]
        print(f"| {label} | " + " | ".join(cells) + f" | {'' if e is None else f'{e:.2f}'} |")
    line("table load + prepare, s", lambda r: r["load"]["load_s"])
    line("tokenize, s", lambda r: r["load"]["tokenize_s"])
    line("ASV selection (encode), s", lambda r: r["load"]["encode_s"])
    line("load + encode peak RSS, MiB", lambda r: r["load"]["rss_mib"], "{:.0f}")
    line("preflight (finetune), s", lambda r: r["preflight_finetune"]["s"])
    line("preflight (pretrain), s", lambda r: r["preflight_pretrain"]["s"])
    line("preflight peak RSS, MiB", lambda r: r["preflight_pretrain"]["rss_mib"], "{:.0f}")
    line("batches/s (batch 8)", lambda r: r["batches"]["batches_per_s"], "{:.0f}")
    line("ssu UniFrac, s", lambda r: r["ssu"]["ssu_s"], "{:.1f}")
    line("ssu peak RSS, MiB", lambda r: r["ssu"]["ssu_rss_mib"], "{:.0f}")
    line("cache size, MB", lambda r: r["ssu"]["cache_bytes"] / 1e6, "{:.0f}")
    line("batch block read cold, ms", lambda r: r["ssu"]["batch_read_cold_ms"], "{:.3f}")
    line("batch block read, cold but prefetched 50 ms ahead, ms", lambda r: r["ssu"]["batch_read_prefetched_ms"], "{:.3f}")
    line("batch block read warm, ms", lambda r: r["ssu"]["batch_read_warm_ms"], "{:.3f}")


if __name__ == "__main__":
    sys.exit(main())
