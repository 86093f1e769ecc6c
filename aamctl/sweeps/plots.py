"""A sweep's plots: objective.png (objective by trial, running best), parameters.png (objective
against each parameter), importance.png (Optuna's parameter importance, when it can be computed)."""
from __future__ import annotations

import json
import os
from pathlib import Path

from aamctl.api.sweepspace import direction
from aamctl.phases import TrialState


def write_plots(folder: Path, trials, spec: dict, study=None) -> None:  # study: an optuna.Study, for importance
    """objective.png (objective by trial, running best), parameters.png (objective against each
    parameter) and importance.png (Optuna's parameter importance, when it can be computed)."""
    done = sorted([t for t in trials if t["state"] == TrialState.COMPLETE and t["value"] is not None],
                  key=lambda t: t["number"])
    if not done:
        return
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    metric = spec["objective"]["metric"]
    best_fn = max if direction(spec) == "maximize" else min
    xs = [t["number"] for t in done]
    ys = [t["value"] for t in done]
    running = [best_fn(ys[:i + 1]) for i in range(len(ys))]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(xs, ys, "o", label="trial")
    ax.step(xs, running, where="post", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(metric)
    ax.legend()
    fig.tight_layout()
    _save(fig, folder / "objective.png")
    plt.close(fig)
    params = [p["path"] for p in spec["parameters"]]
    fig, axes = plt.subplots(1, len(params), figsize=(4 * len(params), 3.5), squeeze=False)
    for ax, path in zip(axes[0], params):
        vals = [json.loads(t["params"]).get(path) for t in done]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
            ax.plot(vals, ys, "o")
            r = next((p.get("range") for p in spec["parameters"] if p["path"] == path), None)
            if r and r.get("log"):
                ax.set_xscale("log")
        else:
            text = [v if isinstance(v, str) else json.dumps(v) for v in vals]
            labels = sorted(set(text))
            ax.plot([labels.index(x) for x in text], ys, "o")
            ax.set_xticks(range(len(labels)))
            ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=7)
        ax.set_xlabel(path.split(".")[-1])
        ax.set_ylabel(metric)
    fig.tight_layout()
    _save(fig, folder / "parameters.png")
    plt.close(fig)
    if study is not None and len(done) >= 3 and len(params) >= 1:
        try:
            import optuna
            imp = optuna.importance.get_param_importances(study)
        except Exception:
            imp = None
        if imp:
            fig, ax = plt.subplots(figsize=(6, 0.5 + 0.5 * len(imp)))
            names = list(imp)[::-1]
            ax.barh([n.split(".")[-1] for n in names], [imp[n] for n in names])
            ax.set_xlabel(f"importance for {metric}")
            fig.tight_layout()
            _save(fig, folder / "importance.png")
            plt.close(fig)


def _save(fig, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=90)
    os.replace(tmp, path)
