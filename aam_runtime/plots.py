"""PNG figures in the run folder: loss curves, predicted vs true, confusion matrix."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from aam_runtime.runfolder import CONFUSION_PLOT, LOSS_PLOT, PRED_PLOT


def pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save(fig, out: Path, name: str) -> Path:
    """Lay a figure out, write it as out/name (PNG, 100 dpi) and close it."""
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    fig.savefig(path, dpi=100)
    pyplot().close(fig)
    return path


def loss_curves(metrics: list[dict], out: Path) -> Path | None:
    train = [m for m in metrics if m.get("split") == "train"]
    val = [m for m in metrics if m.get("split") == "validation"]
    if not train and not val:
        return None
    plt = pyplot()
    keys = [k for k in ("loss", "unifrac_loss", "nuc_loss", "target_loss") if any(k in m for m in train)]
    fig, axes = plt.subplots(1, max(1, len(keys)), figsize=(4.5 * max(1, len(keys)), 3.5), squeeze=False)
    for ax, k in zip(axes[0], keys or ["loss"]):
        ax.plot([m["step"] for m in train if k in m], [m[k] for m in train if k in m], label="train")
        vk = "val_loss" if k == "loss" else k
        if any(vk in m for m in val):
            ax.plot([m["step"] for m in val if vk in m], [m[vk] for m in val if vk in m], "o-", label="validation")
        ax.set_title(k)
        ax.set_xlabel("step")
        ax.legend()
    return save(fig, out, LOSS_PLOT)


def scatter(y: np.ndarray, p: np.ndarray, out: Path, title: str, name: str = PRED_PLOT) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.scatter(y, p, s=8, alpha=0.6)
    lo, hi = float(min(y.min(), p.min())), float(max(y.max(), p.max()))
    ax.plot([lo, hi], [lo, hi], "k--", lw=1)
    ax.set_xlabel("true")
    ax.set_ylabel("predicted")
    ax.set_title(title)
    return save(fig, out, name)


def confusion(y: np.ndarray, pred: np.ndarray, classes: list, out: Path, title: str, name: str = CONFUSION_PLOT) -> Path:
    plt = pyplot()
    n = len(classes)
    m = np.zeros((n, n), dtype=int)
    for a, b in zip(y, pred):
        if 0 <= a < n:
            m[a, b] += 1
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * n, 1.0 + 0.6 * n))
    ax.imshow(m, cmap="Blues")
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=8)
    ax.set_xticks(range(n), [str(c) for c in classes], rotation=45)
    ax.set_yticks(range(n), [str(c) for c in classes])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    return save(fig, out, name)
