"""The rules of a Dataset that its JSON Schema cannot express."""
from __future__ import annotations

from aamctl.api.resolve import Obj, Resolved
from aamctl.api.rules.common import missing_fold
from aamctl.errors import Diagnostic


def check(res: Resolved, obj: Obj) -> list[Diagnostic]:
    d: list[Diagnostic] = []
    s = obj.spec
    split = s["split"]
    if bool(split.get("trainIds")) != bool(split.get("validationIds")):
        d.append(obj.diag("trainIds and validationIds go together", ("spec", "split"),
                          hint="give both files, or neither to split by validationFraction"))
    names = [t["name"] for t in s["targets"]]
    for i, t in enumerate(s["targets"]):
        if t["type"] == "classification" and t["name"] not in s["categoricalColumns"]:
            d.append(obj.diag(f"classification target '{t['name']}' is not a categorical column",
                              ("spec", "targets", i, "name"),
                              hint=f"add '{t['name']}' to spec.categoricalColumns"))
        by = t.get("normalizeBy")
        if by:
            at = ("spec", "targets", i, "normalizeBy")
            if t["type"] == "classification":
                d.append(obj.diag(f"normalizeBy scales a regression target; '{t['name']}' is classification", at,
                                  hint="remove normalizeBy"))
            elif by == t["name"]:
                d.append(obj.diag(f"target '{t['name']}' cannot be normalized by itself", at,
                                  hint="name another metadata column (a category such as site or study)"))
            elif t.get("normalize", "zscore") not in ("zscore", "minmax", "log1p_zscore", "log1p_minmax"):
                d.append(obj.diag(f"normalizeBy needs statistics to take per category, but normalize is "
                                  f"{t.get('normalize')}", at,
                                  hint="use normalize zscore, minmax, log1p_zscore or log1p_minmax with it, or remove normalizeBy"))
        if names.count(t["name"]) > 1 and names.index(t["name"]) != i:
            d.append(obj.diag(f"target '{t['name']}' is listed twice", ("spec", "targets", i, "name")))
    if missing_fold(split):
        d.append(obj.diag(missing_fold(split), ("spec", "split", "fold"),
                          hint=f"use a fold from 0 to {split['folds'] - 1}, or raise spec.split.folds"))
    strat = split.get("stratifyBy")
    if strat and strat not in s["categoricalColumns"]:
        d.append(obj.diag(f"stratifyBy column '{strat}' is not a categorical column",
                          ("spec", "split", "stratifyBy"), hint=f"add '{strat}' to spec.categoricalColumns"))
    return d
