"""The rules of a Model that its JSON Schema cannot express."""
from __future__ import annotations

from aamctl.api.resolve import Obj, Resolved
from aamctl.api.rules.common import differs_from_default
from aamctl.errors import Diagnostic


def check(res: Resolved, obj: Obj) -> list[Diagnostic]:
    d: list[Diagnostic] = []
    s = obj.spec
    dim = s["embeddingDim"]
    by_default: dict[int, list[str]] = {}
    for level in ("nucleotide", "sample", "encoderHead", "targetHead"):
        heads = s[level]["heads"]
        if dim % heads == 0:
            continue
        written = obj.doc is not None and ("spec", level, "heads") in obj.doc.key_positions
        if written:
            d.append(obj.diag(f"embeddingDim {dim} is not divisible by {heads} heads",
                              ("spec", level, "heads"), hint="choose heads that divide embeddingDim"))
        else:
            by_default.setdefault(heads, []).append(level)
    for heads, levels in by_default.items():
        d.append(obj.diag(f"embeddingDim {dim} is not divisible by {heads} heads (the default of "
                          f"{', '.join(levels)})", ("spec", "embeddingDim"),
                          hint=f"use a multiple of {heads}, or set heads for those levels"))
    d.extend(check_target_head(obj))
    return d


# targetHead fields that only mean something with one loss or activation: written with another,
# they would be silently ignored
_LOSS_ONLY = {"huberDelta": ("huber",), "quantiles": ("quantile",), "asymmetric": ("asymmetric",)}


def check_target_head(obj: Obj) -> list[Diagnostic]:
    """targetHead options that contradict each other, on the Model alone."""
    d: list[Diagnostic] = []
    th = obj.spec["targetHead"]
    at = ("spec", "targetHead")
    q = th.get("quantiles") or []
    if any(b <= a for a, b in zip(q, q[1:])):
        d.append(obj.diag(f"quantiles must increase, found {q}", (*at, "quantiles"),
                          hint=f"write them in order: {sorted(set(q))}"))
    for key, losses in _LOSS_ONLY.items():
        if differs_from_default(obj, *at, key) and th["loss"] not in losses:
            d.append(obj.diag(f"{key} is used by loss {losses[0]}, but the loss is {th['loss']}", (*at, key),
                              hint=f"set loss: {losses[0]}, or remove {key}"))
    if th.get("residual") and not th.get("hidden"):
        d.append(obj.diag("residual needs an MLP to go around (hidden is empty)", (*at, "residual"),
                          hint="give hidden widths, e.g. hidden: [64, 32], or remove residual"))
    if th.get("hiddenDropout") is not None and not th.get("hidden"):
        d.append(obj.diag("hiddenDropout acts between hidden layers, but hidden is empty", (*at, "hiddenDropout"),
                          hint="give hidden widths, or remove hiddenDropout"))
    if obj.spec.get("categoricalAt") == "asvs" and obj.spec["categoricalFusion"] in ("gated", "gmu", "cross-attention"):
        why = "attends per ASV position already" if obj.spec["categoricalFusion"] == "cross-attention" else \
            "gates the pooled vector"
        d.append(obj.diag(f"categoricalAt asvs applies to concat, add and film; {obj.spec['categoricalFusion']} {why}",
                          ("spec", "categoricalAt"), hint="remove categoricalAt, or use concat, add or film"))
    b = th.get("bounds") or {}
    if (b.get("min") is not None or b.get("max") is not None) and th.get("outputActivation") != "bounded":
        d.append(obj.diag(f"bounds apply to outputActivation bounded, but it is {th.get('outputActivation')}",
                          (*at, "bounds"), hint="set outputActivation: bounded, or remove bounds"))
    elif b.get("min") is not None and b.get("max") is not None and b["min"] >= b["max"]:
        d.append(obj.diag(f"bounds.min {b['min']:g} is not below bounds.max {b['max']:g}", (*at, "bounds", "min")))
    return d
