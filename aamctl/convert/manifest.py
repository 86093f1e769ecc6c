"""The manifests a conversion writes: each value with the comment that says where it came from
(the flag, or the reference's default beside ours), names made DNS-1123, and YAML rendered with
those comments."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from aamctl.api.schema import API_VERSION, spec_defaults
from aamctl.convert.flags import BASELINE, PREDICT
from aamctl.convert.launch import Launch


class Manifest:
    """A manifest under construction, with a comment per field path."""

    def __init__(self, kind: str, name: str):
        self.kind, self.name = kind, name
        self.spec: dict = {}
        self.comments: dict[str, str] = {}
        self.header: list[str] = []
        self.defaults = spec_defaults(kind)

    def set(self, path: str, value, comment: str | None = None) -> None:
        node = self.spec
        keys = path.split(".")
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
        if comment:
            self.comments[path] = comment

    def default(self, path: str):
        node = self.defaults
        for k in path.split("."):
            if not isinstance(node, dict) or k not in node:
                return None
            node = node[k]
        return node

    def document(self) -> dict:
        return {"apiVersion": API_VERSION, "kind": self.kind, "metadata": {"name": self.name}, "spec": self.spec}


def _fmt(v) -> str:
    return json.dumps(v) if isinstance(v, (list, dict, str)) else yaml.safe_dump(v).split("\n")[0]


@dataclass
class Converted:
    dataset: Manifest
    model: Manifest | None
    hardware: Manifest
    run: Manifest


def dns_name(text: str, fallback: str) -> str:
    name = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    name = re.sub(r"-{2,}", "-", name)[:63].strip("-")
    return name or fallback


def name_for(launch: Launch) -> str:
    o = launch.options
    where = o.get("--output-dir") or o.get("--output")
    if where:
        stem = Path(where.rstrip("/")).name
        if launch.command in (PREDICT, BASELINE):
            stem = Path(stem).stem
        return dns_name(stem, launch.command)
    return dns_name(launch.command, "run")


def render(m: Manifest) -> str:
    lines = [f"# {h}" for h in m.header]
    lines += [f"apiVersion: {API_VERSION}", f"kind: {m.kind}", "metadata:", f"  name: {m.name}", "spec:"]
    lines += _render_map(m.spec, m.comments, "", 1)
    return "\n".join(lines) + "\n"


def _scalar(v) -> str:
    if isinstance(v, (list, tuple)) and all(not isinstance(x, (dict, list)) for x in v):
        return "[" + ", ".join(_scalar(x) for x in v) + "]"
    if isinstance(v, dict) and all(not isinstance(x, (dict, list)) for x in v.values()):
        return "{" + ", ".join(f"{_key(k)}: {_scalar(x)}" for k, x in v.items()) + "}"
    text = yaml.safe_dump(v, default_flow_style=True, width=10_000).strip()
    if text.endswith("\n..."):
        text = text[:-4].rstrip()
    return text


def _key(k) -> str:
    return str(k) if re.match(r"^[A-Za-z_][A-Za-z0-9_.-]*$", str(k)) else _scalar(str(k))


def _render_map(node: dict, comments: dict, prefix: str, depth: int) -> list[str]:
    """Block style where a nested field carries its own comment (or holds more structure),
    flow style for small leaves."""
    pad = "  " * depth
    out = []
    for k, v in node.items():
        path = f"{prefix}{k}"
        comment = comments.get(path)
        tail = f"  # {comment}" if comment else ""
        nested_comment = any(c.startswith(path + ".") for c in comments)
        if isinstance(v, dict) and (nested_comment or any(isinstance(x, (dict, list)) for x in v.values())):
            out.append(f"{pad}{_key(k)}:{tail}")
            out += _render_map(v, comments, path + ".", depth + 1)
        elif isinstance(v, list) and any(isinstance(x, dict) for x in v):
            out.append(f"{pad}{_key(k)}:{tail}")
            for item in v:
                out.append(f"{pad}  - {_scalar(item)}")
        else:
            out.append(f"{pad}{_key(k)}: {_scalar(v)}{tail}")
    return out


# flag values that look like secrets are never written into a manifest
SECRET = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD", re.I)
