"""Evaluation metrics (regression: MAE, RMSE, R2; classification: accuracy, macro F1, AUROC)."""
from __future__ import annotations

import numpy as np


def regression(y: np.ndarray, p: np.ndarray) -> dict:
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    p = np.asarray(p, dtype=np.float64).reshape(-1)
    if len(y) == 0:
        return {}
    err = p - y
    ss_res = float((err ** 2).sum())
    ss_tot = float(((y - y.mean()) ** 2).sum())
    return {"mae": float(np.abs(err).mean()), "rmse": float(np.sqrt((err ** 2).mean())),
            "r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else 0.0}


def probabilities(logits: np.ndarray) -> np.ndarray:
    """Class probabilities [n, k] from a head's outputs (logits, or the log of averaged
    probabilities: the softmax gives those back)."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def classification(y: np.ndarray, logits: np.ndarray, n_classes: int) -> dict:
    from sklearn.metrics import f1_score, roc_auc_score

    y = np.asarray(y).reshape(-1)
    if len(y) == 0:
        return {}
    logits = np.asarray(logits, dtype=np.float64).reshape(len(y), -1)
    pred = logits.argmax(1)
    prob = probabilities(logits)
    out = {"accuracy": float((pred == y).mean()),
           "f1": float(f1_score(y, pred, average="macro", labels=list(range(n_classes)), zero_division=0))}
    present = np.unique(y)
    if len(present) > 1:
        try:
            if n_classes == 2:
                out["auroc"] = float(roc_auc_score(y, prob[:, 1]))
            else:
                out["auroc"] = float(roc_auc_score(y, prob, multi_class="ovr", average="macro",
                                                   labels=list(range(n_classes))))
        except ValueError:
            pass
    return out
