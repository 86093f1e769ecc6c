"""kubectl's equality-based label selectors."""
from __future__ import annotations

import re

from aamctl.errors import UsageError

SELECTOR_TERM = re.compile(r"\s*(!?)\s*([A-Za-z0-9][-A-Za-z0-9_./]*)\s*(?:(==|=|!=)\s*([-A-Za-z0-9_.]*))?\s*")


def parse_selector(selector: str) -> list[tuple[str, str, str | None]]:
    """key, !key, key=value, key==value, key!=value, comma-separated -> [(key, op, value)]."""
    terms = []
    for term in selector.split(","):
        m = SELECTOR_TERM.fullmatch(term)
        if not term.strip() or m is None or (m.group(1) and m.group(3)):
            raise UsageError(f"invalid label selector '{selector}': '{term.strip()}' is not one of key, !key, "
                             "key=value or key!=value")
        neg, key, op, value = m.groups()
        terms.append((key, "absent" if neg else {"==": "=", None: "exists"}.get(op, op), value))
    return terms


def match_labels(labels: dict, terms: list) -> bool:
    for key, op, value in terms:
        have = labels.get(key)
        if op == "exists" and have is None or op == "absent" and have is not None:
            return False
        if op == "=" and have != value or op == "!=" and have == value:
            return False
    return True
