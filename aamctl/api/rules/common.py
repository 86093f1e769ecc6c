"""What several kinds' rules share."""
from __future__ import annotations

from aamctl.api.resolve import Obj
from aamctl.api.schema import field_schema


def differs_from_default(obj: Obj, *path) -> bool:
    """Does this field differ from the schema's default? (Not "was it written": a record writes
    every default out, and must validate exactly as its manifest did.)"""
    value = obj.spec
    for key in path[1:]:
        value = (value or {}).get(key)
    node = field_schema(obj.kind, tuple(path)) or {}
    default = node.get("default")
    if isinstance(default, dict) and isinstance(value, dict):
        sub = {k: (node.get("properties") or {}).get(k, {}).get("default") for k in value}
        return any(value[k] != sub.get(k) for k in value)
    return value != default


def time_seconds(text: str) -> int:
    """SLURM time (MM, MM:SS, HH:MM:SS, D-HH[:MM[:SS]]) -> seconds."""
    days = 0
    if "-" in text:
        d, text = text.split("-", 1)
        days = int(d)
        parts = [int(x) for x in text.split(":")] + [0, 0]
        h, m, s = parts[0], parts[1], parts[2]
    else:
        parts = [int(x) for x in text.split(":")]
        if len(parts) == 1:
            h, m, s = 0, parts[0], 0
        elif len(parts) == 2:
            h, m, s = 0, parts[0], parts[1]
        else:
            h, m, s = parts
    return ((days * 24 + h) * 60 + m) * 60 + s


def missing_fold(split: dict) -> str | None:
    """What is wrong when a split's fold is not one of its folds; None when it is (or no folds)."""
    folds, fold = split.get("folds"), split.get("fold", 0)
    if folds and fold >= folds:
        return f"fold {fold} does not exist: {folds} folds are numbered 0 to {folds - 1}"
    return None
