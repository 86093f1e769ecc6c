"""Seeded synthetic amplicon data at any scale: a BIOM table, a Newick tree and metadata.

    python benchmarks/synth_data.py OUT --samples 100000 --asvs 200000 [--per-sample 53]
        [--length 150 | --length 100:250] [--depth 1000] [--seed 0]

What makes it realistic enough to measure with:
- a random binary tree over the ASVs (random joining, so depth grows like log n), with branch
  lengths; each ASV's sequence evolves down that tree by substitutions, so related ASVs have
  similar sequences and UniFrac between samples means something;
- long-tailed ASV frequencies: a log-normal base popularity, boosted in each of a few
  "environments" for one clade (a run of neighbouring tips), so samples of one environment share
  lineages;
- sparse counts: each sample holds a log-normal number of ASVs (median --per-sample), drawn by
  popularity, with log-normal abundances summing to --depth reads (at least one read each);
- metadata: `age` (depends on the environment and on richness, plus noise), `env` (the
  environment, for classification) and `study` (random, 4 levels).

The "rich" variant of the scale benchmark is --per-sample 2500 (1,000-5,000 ASVs per sample).
Memory and time grow with the number of non-zero counts: nothing is samples x ASVs.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

BASES = np.frombuffer(b"ACGT", dtype=np.uint8)


def random_tree(n: int, rng: np.random.Generator):
    """Random joining: (parent of each node, branch length of each node, root). Nodes 0..n-1 are
    the tips; a parent always has a larger id than its children."""
    parent = np.full(2 * n - 1, -1, dtype=np.int64)
    pool = list(range(n))
    nxt = n
    while len(pool) > 1:
        i = int(rng.integers(len(pool)))
        a = pool[i]
        pool[i] = pool[-1]
        pool.pop()
        j = int(rng.integers(len(pool)))
        b = pool[j]
        parent[a] = parent[b] = nxt
        pool[j] = nxt  # the new node takes b's place
        nxt += 1
    length = rng.uniform(0.002, 0.04, size=2 * n - 1)
    return parent, length, nxt - 1


def tip_order_and_newick(parent: np.ndarray, length: np.ndarray, root: int, names: list[str]) -> tuple[np.ndarray, str]:
    """Tips left to right (neighbours are related), and the Newick text; iterative (no recursion
    limit at 200,000 tips)."""
    n_tips = len(names)
    kids: list[list[int]] = [[] for _ in range(len(parent))]
    for c in range(len(parent) - 1):
        kids[int(parent[c])].append(c)
    out: list[str] = []
    order = []
    stack = [(root, 0)]
    while stack:
        node, state = stack.pop()
        if node < n_tips:
            order.append(node)
            out.append(f"{names[node]}:{length[node]:.4f}")
            continue
        if state == 0:
            out.append("(")
            stack.append((node, 1))
            stack.append((kids[node][0], 0))
        elif state == 1:
            out.append(",")
            stack.append((node, 2))
            stack.append((kids[node][1], 0))
        else:
            out.append(")" if node == root else f"):{length[node]:.4f}")
    return np.array(order, dtype=np.int64), "".join(out) + ";\n"


def evolve(parent: np.ndarray, length: np.ndarray, root: int, n_tips: int, max_len: int, rng: np.random.Generator,
           rate: float = 0.3) -> np.ndarray:
    """Tip sequences [n_tips, max_len] (ASCII): a random root sequence, substitutions down each
    branch (Poisson in branch length x rate x sites)."""
    n = len(parent)
    seqs = np.empty((n, max_len), dtype=np.uint8)
    seqs[root] = BASES[rng.integers(4, size=max_len)]
    n_mut = rng.poisson(length * rate * max_len)
    for node in range(n - 2, -1, -1):  # parents before children (parents have larger ids)
        s = seqs[parent[node]].copy()
        k = int(n_mut[node])
        if k:
            s[rng.integers(max_len, size=k)] = BASES[rng.integers(4, size=k)]
        seqs[node] = s
    tips = seqs[:n_tips]
    # distinct sequences: re-mutate duplicates until none is left
    while True:
        _, first = np.unique(tips.view(f"V{max_len}").ravel(), return_index=True)
        dup = np.setdiff1d(np.arange(n_tips), first)
        if not len(dup):
            return tips
        tips[dup, rng.integers(max_len, size=len(dup))] = BASES[rng.integers(4, size=len(dup))]


def generate(out: Path, samples: int, asvs: int, per_sample: float = 53, length: str = "150", depth: int = 1000,
             seed: int = 0, environments: int = 8) -> dict:
    import biom
    import h5py
    import scipy.sparse as sp

    t0 = time.time()
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lo, _, hi = length.partition(":")
    lo, hi = int(lo), int(hi or lo)
    parent, blen, root = random_tree(asvs, rng)
    raw = evolve(parent, blen, root, asvs, hi, rng)
    lens = rng.integers(lo, hi + 1, size=asvs) if hi > lo else np.full(asvs, lo)
    names = [raw[i, :lens[i]].tobytes().decode() for i in range(asvs)]
    if len(set(names)) < asvs:  # truncation made two equal: give each its full length
        seen: set[str] = set()
        for i in range(asvs):
            if names[i] in seen:
                names[i] = raw[i].tobytes().decode()
            seen.add(names[i])
    tips, newick = tip_order_and_newick(parent, blen, root, names)
    (out / "tree.nwk").write_text(newick)
    t_tree = time.time() - t0

    # popularity: log-normal base, each environment boosts one clade (a run of neighbouring tips)
    base = rng.lognormal(0.0, 2.0, size=asvs)
    cum = []
    for g in range(environments):
        w = base.copy()
        width = max(1, asvs // environments)
        start = int(rng.integers(0, max(1, asvs - width)))
        w[tips[start:start + width]] *= 20.0
        c = np.cumsum(w)
        cum.append(c / c[-1])
    env = rng.integers(environments, size=samples)
    rich = np.clip(np.rint(rng.lognormal(np.log(per_sample), 0.5, size=samples)), 1, asvs).astype(np.int64)
    indptr = np.zeros(samples + 1, dtype=np.int64)
    cols, vals = [], []
    for i in range(samples):
        k = int(rich[i])
        draw = np.searchsorted(cum[env[i]], rng.random(2 * k + 16), side="right")
        draw = np.minimum(draw, asvs - 1)
        _, first = np.unique(draw, return_index=True)
        chosen = np.sort(draw[np.sort(first)][:k])
        k = len(chosen)
        ab = rng.lognormal(0.0, 1.5, size=k) * base[chosen]
        reads = np.ones(k, dtype=np.int64)
        if depth > k:
            reads += rng.multinomial(depth - k, ab / ab.sum())
        cols.append(chosen)
        vals.append(reads)
        indptr[i + 1] = indptr[i] + k
    counts = sp.csr_matrix((np.concatenate(vals).astype(np.float64), np.concatenate(cols), indptr),
                           shape=(samples, asvs))
    rich = np.diff(indptr)
    sample_ids = [f"syn{i:06d}" for i in range(samples)]
    t_counts = time.time() - t0 - t_tree

    table = biom.Table(counts.T.tocsr(), observation_ids=names, sample_ids=sample_ids)
    with h5py.File(out / "table.biom", "w") as f:
        table.to_hdf5(f, "aam synth_data.py")
    age = 20 + 4.0 * env + 6.0 * (np.log(rich) - np.log(per_sample)) + rng.normal(0, 5, size=samples)
    study = rng.integers(4, size=samples)
    lines = ["sample_id\tage\tenv\tstudy"] + [f"{s}\t{a:.1f}\tenv{e}\tstudy{t}"
                                              for s, a, e, t in zip(sample_ids, age, env, study)]
    (out / "metadata.tsv").write_text("\n".join(lines) + "\n")
    info = {"samples": samples, "asvs": asvs, "nnz": int(counts.nnz), "asvs_per_sample_median": float(np.median(rich)),
            "asvs_per_sample_max": int(rich.max()), "length": length, "depth": depth, "seed": seed,
            "seconds": round(time.time() - t0, 1), "seconds_tree": round(t_tree, 1),
            "seconds_counts": round(t_counts, 1)}
    (out / "synth.json").write_text(json.dumps(info, indent=1) + "\n")
    return info


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--samples", type=int, required=True)
    ap.add_argument("--asvs", type=int, required=True)
    ap.add_argument("--per-sample", type=float, default=53, help="median ASVs per sample (rich: 2500)")
    ap.add_argument("--length", default="150", help="ASV length, or LO:HI for lengths drawn per ASV")
    ap.add_argument("--depth", type=int, default=1000, help="reads per sample")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    if a.asvs < 2 or a.samples < 1:
        ap.error("need at least 2 ASVs and 1 sample")
    print(json.dumps(generate(a.out, a.samples, a.asvs, a.per_sample, a.length, a.depth, a.seed)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
