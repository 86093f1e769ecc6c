"""A trained model as a folder you can hand to a colleague: nothing in it is a pickle. The
format and its reader (bundle_export.py writes one: aamctl export run NAME --bundle OUT_DIR):

    model.safetensors   the weights (the averaged ones under trainer.ema), safetensors
    model.json          what predict needs besides weights (model spec, tokenization, targets,
                        scaling, classes, categorical levels), the run, the checkpoint's step
    record.yaml         the run's record: every resolved manifest, provenance, data digests
    metrics.json        the run's final and best metrics
    README.md           a model card: data, metric on which split, intended use

initFrom.checkpoint names the folder; checkpoints.load_checkpoint reads it as data only.
"""
from __future__ import annotations

import json
from pathlib import Path

FORMAT = "aam-model-bundle/1"
RECORD = "record.yaml"  # the run's own record.yaml, copied
WEIGHTS = "model.safetensors"
DESCRIPTION = "model.json"
METRICS = "metrics.json"
CARD = "README.md"


class BundleError(Exception):
    pass


def is_bundle(path: Path) -> bool:
    return Path(path).is_dir() and (Path(path) / DESCRIPTION).is_file()


def read_bundle(path: Path) -> dict:
    """A bundle as a checkpoint's dict ({"model", "meta"}): tensors through safetensors, the rest
    as JSON; nothing is unpickled."""
    from safetensors.torch import load_file

    path = Path(path)
    try:
        desc = json.loads((path / DESCRIPTION).read_text())
    except (OSError, ValueError) as exc:
        raise BundleError(f"{path / DESCRIPTION}: not readable as a model description ({exc})") from None
    if desc.get("format") != FORMAT:
        raise BundleError(f"{path}: bundle format {desc.get('format')!r}; this aam reads {FORMAT}")
    if not (path / WEIGHTS).is_file():
        raise BundleError(f"{path}: no {WEIGHTS}")
    try:
        weights = load_file(str(path / WEIGHTS))
    except Exception as exc:  # safetensors raises its own error types for a damaged file
        raise BundleError(f"{path / WEIGHTS}: not a safetensors file ({type(exc).__name__}: {exc})") from None
    return {"model": weights, "meta": desc["meta"], "bundle": {k: desc.get(k) for k in ("run", "generation", "step")}}


def model_card(desc: dict, metrics: dict, record: list | dict) -> str:
    meta = desc["meta"]
    docs = record if isinstance(record, list) else [record]
    run = next((d for d in docs if d.get("kind") == "Run"), {})
    ds = next((d for d in docs if d.get("kind") == "Dataset"), {})
    ann = (run.get("metadata") or {}).get("annotations") or {}
    best = metrics.get("best") or {}
    targets = [t["name"] for t in meta.get("targets") or []] or ([meta["target"]] if meta.get("target") else [])
    lines = [f"# aam model: run/{desc.get('run')} (generation {desc.get('generation')})", "",
             f"- stage: {meta.get('stage')}; checkpoint: {desc.get('checkpoint')} (step {desc.get('step')})",
             f"- predicts: {', '.join(targets) or 'nothing (a pretrained encoder: fine-tune it)'}"
             + (f" ({meta.get('target_type')})" if meta.get("target_type") else ""),
             f"- data: Dataset {(ds.get('metadata') or {}).get('name')}: table {(ds.get('spec') or {}).get('table')}",
             f"- data digests: {ann.get('aam/data-digests', 'not recorded')}",
             f"- best {best.get('name', 'metric')}: {best.get('value')} at step {best.get('step')} on the run's "
             "validation split (split.tsv of the run folder; record.yaml says how it was drawn)",
             f"- final validation metrics: {json.dumps(metrics.get('final'), sort_keys=True)}",
             "", "Intended use: predictions for samples like the training data (same amplicon region, "
             "sequencing and processing; ASVs are read by their sequence, so unseen ASVs are fine). "
             "Check the metric on your own held-out samples before relying on it.", "",
             "Use it: `initFrom: {checkpoint: PATH-OF-THIS-FOLDER}` in a predict Run (or a finetune Run to "
             "start from these weights). `aamctl apply -f record.yaml` reproduces the training run.", ""]
    return "\n".join(lines)
