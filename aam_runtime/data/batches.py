"""Prepared data -> batches the model consumes.

A batch pads only to its longest sample and carries the distinct ASVs it holds once
(`tokens`, [U, L]) with, per sample slot, the index of its ASV in that list (`asv_index`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from aam_runtime.data.table import PAD, Prepared, select_asvs, tokenize


@dataclass
class Encoded:
    """A Prepared data set in model form (numpy; torch tensors are made per batch)."""

    prepared: Prepared
    tokens: np.ndarray  # [n_asvs, max_bp + 1] int8
    sel_idx: list  # per sample: ASV column indices kept
    sel_cnt: list  # per sample: their counts
    targets: np.ndarray | None = None  # [n_samples] float32 (regression, normalized) or int64 classes
    categoricals: np.ndarray | None = None  # [n_samples, C] int64 codes, 0 = unknown
    non_acgt_bases: int = 0

    def redraw(self, limit: int, key: list[int]) -> None:
        """asvSelection random: draw each sample's ASVs again from a generator seeded by `key`
        ([seed, epoch] for a training epoch; pass_key for a validation or prediction pass)."""
        self.sel_idx, self.sel_cnt = select_asvs(self.prepared.counts, limit, "random", np.random.default_rng(key))


def pass_key(seed: int, p: int) -> list[int]:
    """The draw of prediction pass p (the same in validation and in predict runs)."""
    return [seed, 7919, p]


def encode(prepared: Prepared, max_bp: int, limit: int, how: str, seed: int = 0) -> Encoded:
    tokens, bad = tokenize(prepared.asv_ids, max_bp)
    rng = np.random.default_rng(seed)
    idx, cnt = select_asvs(prepared.counts, limit, how, rng)
    return Encoded(prepared=prepared, tokens=tokens, sel_idx=idx, sel_cnt=cnt, non_acgt_bases=bad)


def collate_numpy(enc: Encoded, rows) -> dict:
    """Rows of the data set -> a padded batch of numpy arrays."""
    rows = np.asarray(rows, dtype=np.int64)
    parts = [enc.sel_idx[r] for r in rows]
    lens = np.fromiter((len(p) for p in parts), dtype=np.int64, count=len(parts))
    b, s = len(rows), int(lens.max())
    flat = np.concatenate(parts)
    uniq, inv = np.unique(flat, return_inverse=True)
    mask = np.arange(s)[None, :] < lens[:, None]
    asv_index = np.zeros((b, s), dtype=np.int64)
    asv_index[mask] = inv
    log_counts = np.zeros((b, s), dtype=np.float32)
    log_counts[mask] = np.log1p(np.concatenate([enc.sel_cnt[r] for r in rows]))
    tok = enc.tokens[uniq]
    width = int((tok != PAD).sum(axis=1).max())  # trim columns that are padding for every ASV
    out = {"rows": rows, "tokens": tok[:, :width].astype(np.int64), "asv_index": asv_index,
           "mask": mask, "log_counts": log_counts}
    if enc.targets is not None:
        out["targets"] = enc.targets[rows]
    if enc.categoricals is not None:
        out["categoricals"] = enc.categoricals[rows]
    return out


def to_torch(batch: dict, device=None) -> dict:
    import torch

    out = {}
    for k, v in batch.items():
        t = torch.from_numpy(np.ascontiguousarray(v))
        out[k] = t.to(device, non_blocking=True) if device is not None else t
    return out


def epoch_batches(n: int, batch_size: int, world: int, seed: int, epoch: int, shuffle: bool = True,
                  drop_last: bool = True) -> list[np.ndarray]:
    """Global batches (batch_size x world rows) of one epoch, deterministic in (seed, epoch)."""
    order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
    g = batch_size * world
    full = n // g
    out = [order[i * g:(i + 1) * g] for i in range(full)]
    if not drop_last and n % g:
        out.append(order[full * g:])
    return out


def shard(global_batch: np.ndarray, rank: int, world: int) -> np.ndarray:
    """This rank's rows of a global batch (contiguous blocks, so the gather order is the batch order)."""
    per = int(np.ceil(len(global_batch) / world))
    return global_batch[rank * per:(rank + 1) * per]
