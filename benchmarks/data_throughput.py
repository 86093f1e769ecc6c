"""Data pipeline speed on the oral-age data, on one core: load, tokenize, batches/s, de-dup ratios.

    .venv/bin/python benchmarks/data_throughput.py [--model-samples-per-s X]

--model-samples-per-s: what the model consumes on this CPU (from train_throughput.py, batch 32);
the script prints how many times faster the pipeline produces batches than the model eats them.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main():
    import numpy as np

    from aam_runtime.data import batches as B
    from aam_runtime.data import table as T

    ap = argparse.ArgumentParser()
    ap.add_argument("--model-samples-per-s", type=float, default=None)
    a = ap.parse_args()
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}) if hasattr(os, "sched_setaffinity") else None
    oral = ROOT / "examples" / "data" / "oral-age"
    t0 = time.perf_counter()
    from aamctl.api.schema import fill_defaults

    spec = fill_defaults("Dataset", {"apiVersion": "aam/v1alpha1", "kind": "Dataset", "metadata": {"name": "b"},
                                     "spec": {"table": str(oral / "table.biom"),
                                              "metadata": {"path": str(oral / "metadata.tsv")}}})["spec"]
    p = T.load(spec)
    t_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    tokens, _ = T.tokenize(p.asv_ids, 150)
    t_tok = time.perf_counter() - t0
    enc = B.encode(p, 150, 1024, "abundance")
    print(f"load table + metadata: {t_load:.3f} s; tokenize {len(p.asv_ids)} ASVs: {t_tok * 1000:.1f} ms")
    rng = np.random.default_rng(0)
    B.to_torch(B.collate_numpy(enc, np.arange(8)))  # warm-up: the first call imports torch
    for batch in (8, 32, 128):
        occ = uniq = 0
        n = 200 if batch < 128 else 100
        t0 = time.perf_counter()
        for _ in range(n):
            rows = rng.choice(p.n_samples, size=batch, replace=False)
            b = B.to_torch(B.collate_numpy(enc, rows))
            occ += int(b["mask"].sum())
            uniq += int(b["tokens"].shape[0])
        dt = time.perf_counter() - t0
        line = (f"batch {batch:>3}: {n / dt:8.1f} batches/s ({n * batch / dt:9.0f} samples/s) on one core; "
                f"ASV occurrences per distinct ASV {occ / uniq:.2f}")
        if a.model_samples_per_s and batch == 32:
            line += f"; {n * batch / dt / a.model_samples_per_s:.0f}x what the model consumes"
        print(line)


if __name__ == "__main__":
    main()
