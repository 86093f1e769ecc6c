"""What a model learned, as files beside its predictions (Run spec.outputs, opt-in):

    embeddings.tsv            one row per sample: the pooled sample vector (QIIME 2 metadata)
    embedding-distances.tsv   Euclidean distances between those vectors, as QIIME 2's and
                              scikit-bio's DistanceMatrix text (PERMANOVA, PCoA, ...)
    plots/embedding_pcoa.png  the first two principal coordinates, coloured by the target
    plots/embedding_vs_unifrac.png   pretrain: the distance the model predicts against UniFrac
    errors.tsv                predict: each sample's residual (or hit), worst first, with the
                              metadata columns asked for; errors-by-COLUMN.tsv per category
    plots/residuals.png       predict, regression: residual against the truth

Which vector: a pretraining's sample embedding is the encoder's pooled output, the one whose
distances are trained to match UniFrac; a predict Run's is the target head's pooled vector, the
one the prediction is read from (of the first model of an ensemble: members' spaces differ).
numpy and matplotlib only here; the stages hand in the vectors.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from aam_runtime.console import log
from aam_runtime.data.distances import write_distance_text
from aam_runtime.runfolder import (EMBEDDING_DISTANCES, EMBEDDINGS, ERRORS, ID_HEADER, PCOA_PLOT, RESIDUAL_PLOT,
                                   UNIFRAC_PLOT, RunFolder, atomic_write, errors_by_name, q2_types_row)

WORST = 20  # the worst-predicted samples named in the log


def write_embeddings(folder: RunFolder, ids: list[str], emb: np.ndarray) -> list[Path]:
    """embeddings.tsv and embedding-distances.tsv (written a block of rows at a time)."""
    emb = np.asarray(emb, dtype=np.float64)
    header = [ID_HEADER] + [f"dim{i}" for i in range(emb.shape[1])]
    lines = ["\t".join(header), q2_types_row(header, set())]
    lines += [sid + "\t" + "\t".join(f"{v:.6g}" for v in row) for sid, row in zip(ids, emb.tolist())]
    atomic_write(folder.file(EMBEDDINGS), "\n".join(lines) + "\n")
    sq = (emb ** 2).sum(1)

    def block(start: int, stop: int) -> np.ndarray:
        d2 = sq[start:stop, None] + sq[None, :] - 2.0 * emb[start:stop] @ emb.T
        d = np.sqrt(np.maximum(d2, 0.0))
        for i in range(start, stop):
            d[i - start, i] = 0.0
        return d
    write_distance_text(folder.file(EMBEDDING_DISTANCES), ids, block)
    return [folder.file(EMBEDDINGS), folder.file(EMBEDDING_DISTANCES)]


def principal_coordinates(emb: np.ndarray, k: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """The first k principal coordinates of Euclidean distances between rows (the same as the
    principal components of the centred vectors) and each one's share of the variance."""
    x = np.asarray(emb, dtype=np.float64)
    x = x - x.mean(0)
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    var = s ** 2
    share = var / var.sum() if var.sum() > 0 else np.zeros_like(var)
    k = min(k, len(s))
    return u[:, :k] * s[:k], share[:k]


def pcoa_plot(folder: RunFolder, emb: np.ndarray, colour: np.ndarray | None, label: str, title: str) -> Path:
    from aam_runtime.plots import pyplot, save

    pc, share = principal_coordinates(emb)
    if pc.shape[1] < 2:
        pc = np.concatenate([pc, np.zeros((len(pc), 2 - pc.shape[1]))], axis=1)
        share = np.concatenate([share, np.zeros(2 - len(share))])
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    if colour is not None and colour.dtype.kind in "fiu":
        ok = np.isfinite(colour)
        ax.scatter(pc[~ok, 0], pc[~ok, 1], s=8, c="lightgrey", label="no value")
        sc = ax.scatter(pc[ok, 0], pc[ok, 1], s=8, c=colour[ok], cmap="viridis")
        fig.colorbar(sc, ax=ax, label=label)
    elif colour is not None:
        for value in sorted(set(colour.tolist()))[:20]:
            at = colour == value
            ax.scatter(pc[at, 0], pc[at, 1], s=8, label=str(value) or "no value")
        ax.legend(fontsize=7, markerscale=2)
    else:
        ax.scatter(pc[:, 0], pc[:, 1], s=8)
    ax.set_xlabel(f"PC1 ({share[0]:.0%})")
    ax.set_ylabel(f"PC2 ({share[1]:.0%})")
    ax.set_title(title)
    return save(fig, folder.plots, PCOA_PLOT)


def unifrac_fit(folder: RunFolder, emb: np.ndarray, lookup, rows: np.ndarray, pairs: int = 20000,
                seed: int = 0) -> dict:
    """The pretraining's distance, tanh(||e_i - e_j|| / 10) (what its UniFrac loss compares),
    against UniFrac over random sample pairs: the figure and its correlation."""
    from aam_runtime.plots import pyplot, save

    n = len(rows)
    rng = np.random.default_rng(seed)
    i = rng.integers(0, n, size=pairs)
    j = rng.integers(0, n, size=pairs)
    keep = i != j
    i, j = i[keep], j[keep]
    predicted = np.tanh(np.linalg.norm(emb[i] - emb[j], axis=1) / 10.0)
    truth = np.empty(len(i))
    for start in range(0, len(i), 4096):  # a row block of the matrix per chunk of pairs
        a, b = i[start:start + 4096], j[start:start + 4096]
        uniq = np.unique(np.concatenate([a, b]))
        sub = lookup.sub(rows[uniq])
        pos = {v: k for k, v in enumerate(uniq.tolist())}
        truth[start:start + len(a)] = sub[[pos[x] for x in a.tolist()], [pos[x] for x in b.tolist()]]
    r = float(np.corrcoef(predicted, truth)[0, 1]) if predicted.std() > 0 and truth.std() > 0 else float("nan")
    mae = float(np.abs(predicted - truth).mean())
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.scatter(truth, predicted, s=3, alpha=0.3)
    ax.plot([0, 1], [0, 1], "k--", lw=1)
    ax.set_xlabel("UniFrac distance")
    ax.set_ylabel("embedding distance, tanh(||e_i - e_j|| / 10)")
    ax.set_title(f"{len(i)} pairs: r = {r:.3f}, MAE {mae:.3f}")
    save(fig, folder.plots, UNIFRAC_PLOT)
    return {"embedding_unifrac_r": r, "embedding_unifrac_mae": mae, "embedding_unifrac_pairs": int(len(i))}


def write_errors(folder: RunFolder, ids: list[str], pred: list, truth: list, kind: str, metadata,
                 by: list[str], target: str) -> dict:
    """errors.tsv (samples with a truth, worst first), errors-by-COLUMN.tsv per column asked
    for, the residual plot; the summary's numbers. pred/truth: values in the target's units (or
    class names)."""
    known = [k for k, t in enumerate(truth) if t not in ("", None) and not (isinstance(t, float) and math.isnan(t))]
    if not known:
        log("outputs: errors: no sample has the truth, so there are no errors to analyse")
        return {}
    if kind == "classification":
        err = np.array([0.0 if pred[k] == truth[k] else 1.0 for k in known])
        cols = ["prediction", "truth", "correct"]
        cells = [[str(pred[k]), str(truth[k]), "yes" if e == 0 else "no"] for k, e in zip(known, err)]
        order = np.argsort(-err, kind="stable")
    else:
        p = np.array([float(pred[k]) for k in known])
        t = np.array([float(truth[k]) for k in known])
        err = p - t
        cols = ["prediction", "truth", "residual", "absolute_error"]
        cells = [[f"{a:.6g}", f"{b:.6g}", f"{a - b:.6g}", f"{abs(a - b):.6g}"] for a, b in zip(p, t)]
        order = np.argsort(-np.abs(err), kind="stable")
    extra = [c for c in by if c in metadata.columns]
    header = [ID_HEADER] + cols + ["rank"] + extra
    lines = ["\t".join(header), q2_types_row(header, {"prediction", "truth", "correct", *extra}
                                             if kind == "classification" else set(extra))]
    for rank, o in enumerate(order, start=1):
        sid = ids[known[o]]
        lines.append("\t".join([sid, *cells[o], str(rank)] + [str(metadata.at[sid, c]) for c in extra]))
    atomic_write(folder.file(ERRORS), "\n".join(lines) + "\n")
    worst = [ids[known[o]] for o in order[:WORST]]
    log(f"outputs: errors: the {len(worst)} worst-predicted samples: {', '.join(worst)}")
    summary = {"errors_samples": len(known)}
    for column in extra:
        summary[f"errors_by_{column}"] = _by_category(folder, column, [str(metadata.at[ids[k], column]) for k in known],
                                                      err, kind)
    if kind != "classification":
        _residual_plot(folder, t, err, target)
    return summary


def _by_category(folder: RunFolder, column: str, values: list[str], err: np.ndarray, kind: str) -> int:
    """errors-by-COLUMN.tsv: per category its samples and error (MAE and bias, or error rate)."""
    vals = np.array(values, dtype=object)
    header = [column, "samples"] + (["error_rate"] if kind == "classification" else ["mae", "mean_residual"])
    lines = ["\t".join(header)]
    cats = sorted(set(values), key=lambda c: -int((vals == c).sum()))
    for c in cats:
        e = err[vals == c]
        stats = [f"{e.mean():.6g}"] if kind == "classification" else [f"{np.abs(e).mean():.6g}", f"{e.mean():.6g}"]
        lines.append("\t".join([c or "(empty)", str(len(e))] + stats))
    atomic_write(folder.file(errors_by_name(column)), "\n".join(lines) + "\n")
    return len(cats)


def _residual_plot(folder: RunFolder, truth: np.ndarray, residual: np.ndarray, target: str) -> Path:
    from aam_runtime.plots import pyplot, save

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.8))
    ax.scatter(truth, residual, s=8, alpha=0.6)
    ax.axhline(0, color="k", lw=1, ls="--")
    ax.set_xlabel(f"true {target}")
    ax.set_ylabel("predicted - true")
    ax.set_title(f"residuals (MAE {np.abs(residual).mean():.3g}, bias {residual.mean():+.3g})")
    return save(fig, folder.plots, RESIDUAL_PLOT)
