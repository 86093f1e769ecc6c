"""The JSON Schemas in schemas/v1alpha1: loading, validation with positions, defaults, docs.

The schema files are the single source of truth for fields, types, enums, defaults and
descriptions; nothing here repeats them.
"""
from __future__ import annotations

import copy
import difflib
import functools
import json
import math
import re
from pathlib import Path

from aamctl.api.parse import Document, format_path
from aamctl.errors import Diagnostic
from aamctl.resources import data_path

API_VERSION = "aam/v1alpha1"
KINDS = {"Dataset": "dataset", "Model": "model", "Run": "run", "HardwareProfile": "hardwareprofile",
         "Sweep": "sweep"}
KIND_ALIASES = {
    "dataset": "Dataset", "datasets": "Dataset", "ds": "Dataset",
    "model": "Model", "models": "Model",
    "run": "Run", "runs": "Run",
    "hardwareprofile": "HardwareProfile", "hardwareprofiles": "HardwareProfile", "hw": "HardwareProfile",
    "sweep": "Sweep", "sweeps": "Sweep",
}
BASE_URI = "https://aam.dev/schemas/v1alpha1/"


def is_name(text: str, max_len: int = 63) -> bool:
    """Is `text` a DNS-1123 label (the schema's name pattern) of at most max_len characters?"""
    import re

    return bool(re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", text)) and len(text) <= max_len


def schema_dir() -> Path:
    found = data_path("schemas/v1alpha1", "schemas/v1alpha1")
    if found is not None and found.is_dir():
        return found
    raise FileNotFoundError("schemas/v1alpha1 not found next to the aamctl package")


@functools.lru_cache(maxsize=None)
def _raw_schemas() -> dict[str, dict]:
    out = {}
    for f in sorted(schema_dir().glob("*.schema.json")):
        out[f.name] = json.loads(f.read_text())
    return out


@functools.lru_cache(maxsize=None)
def registry():
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012

    resources = [(s["$id"], Resource.from_contents(s, default_specification=DRAFT202012))
                 for s in _raw_schemas().values()]
    return Registry().with_resources(resources)


def kind_schema(kind: str) -> dict:
    return _raw_schemas()[f"{KINDS[kind]}.schema.json"]


@functools.lru_cache(maxsize=None)
def validator(kind: str):
    from jsonschema import Draft202012Validator

    return Draft202012Validator(kind_schema(kind), registry=registry())


def _resolve(node: dict, base_uri: str) -> tuple[dict, str]:
    """Follow $ref chains; return the target node and its base URI."""
    while isinstance(node, dict) and "$ref" in node:
        resolver = registry().resolver(base_uri=base_uri)
        resolved = resolver.lookup(node["$ref"])
        merged = dict(resolved.contents)
        # keywords written next to a $ref (description, default) refine the target
        for k, v in node.items():
            if k != "$ref":
                merged[k] = v
        base_uri = resolved.resolver._base_uri if hasattr(resolved.resolver, "_base_uri") else base_uri
        node = merged
    return node, base_uri


def _kind_root(kind: str) -> tuple[dict, str]:
    s = kind_schema(kind)
    return s, s["$id"]


def _object_branch(node: dict, base: str) -> tuple[dict, str]:
    """For oneOf [X, null] style nodes, the object-typed branch."""
    node, base = _resolve(node, base)
    for key in ("oneOf", "anyOf"):
        for branch in node.get(key, []):
            b, bb = _resolve(branch, base)
            if "properties" in b:
                return b, bb
    return node, base


def fill_defaults(kind: str, instance: dict) -> dict:
    """A copy of instance with every schema default filled in, recursively."""
    out = copy.deepcopy(instance)
    root, base = _kind_root(kind)
    _fill(root, base, out)
    return out


def _fill(node: dict, base: str, value) -> None:
    node, base = _object_branch(node, base)
    if not isinstance(value, dict):
        return
    for name, sub in node.get("properties", {}).items():
        sub_resolved, sub_base = _resolve(sub, base)
        if name not in value and "default" in sub_resolved:
            value[name] = copy.deepcopy(sub_resolved["default"])
        if name in value:
            if isinstance(value[name], dict):
                _fill(sub_resolved, sub_base, value[name])
            elif isinstance(value[name], list):
                items = sub_resolved.get("items")
                if isinstance(items, dict):
                    for item in value[name]:
                        _fill(items, sub_base, item)


def _types(node: dict, base: str) -> set[str]:
    """Every JSON type a (resolved) node admits, across oneOf/anyOf branches."""
    node, base = _resolve(node, base)
    t = node.get("type")
    out = set(t if isinstance(t, list) else [t] if t else [])
    for key in ("oneOf", "anyOf"):
        for branch in node.get(key, []):
            out |= _types(branch, base)
    return out


def coerce_integers(kind: str, instance: dict) -> dict:
    """Integral floats where the schema asks for an integer become ints (in place; returned).

    JSON Schema counts 16.0 as an integer, Python does not: range(16.0) and numpy seeds fail.
    Every integer field must reach the engine as an int, whatever YAML made of it."""
    root, base = _kind_root(kind)
    _coerce(root, base, instance)
    return instance


def _coerce(node: dict, base: str, value):
    node, base = _object_branch(node, base)
    if isinstance(value, dict):
        for name, sub in node.get("properties", {}).items():
            if name not in value:
                continue
            sub_r, sub_base = _resolve(sub, base)
            v = value[name]
            if isinstance(v, float) and v.is_integer() and "integer" in _types(sub_r, sub_base) \
                    and "number" not in _types(sub_r, sub_base):
                value[name] = int(v)
            elif isinstance(v, (dict, list)):
                _coerce(sub_r, sub_base, v)
    elif isinstance(value, list):
        items = node.get("items")
        if isinstance(items, dict):
            item_r, item_base = _resolve(items, base)
            whole = "integer" in _types(item_r, item_base) and "number" not in _types(item_r, item_base)
            for i, v in enumerate(value):
                if whole and isinstance(v, float) and v.is_integer():
                    value[i] = int(v)
                elif isinstance(v, (dict, list)):
                    _coerce(item_r, item_base, v)


def allowed_fields(kind: str, path: tuple) -> list[str]:
    node = field_schema(kind, path)
    return sorted(node.get("properties", {})) if node else []


def field_schema(kind: str, path) -> dict | None:
    """The (resolved) schema node of a field path such as ('spec', 'trainer')."""
    node, base = _kind_root(kind)
    for part in path:
        node, base = _object_branch(node, base)
        if isinstance(part, int):
            items = node.get("items")
            if not isinstance(items, dict):
                return None
            node = items
            continue
        props = node.get("properties", {})
        if part not in props and isinstance(node.get("items"), dict):  # a field of a list's items
            node, base = _object_branch(node["items"], base)
            props = node.get("properties", {})
        if part not in props:
            return None
        node = props[part]
    node, _ = _object_branch(node, base)
    return node


def _describe_value(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return f"boolean {str(v).lower()}"
    if isinstance(v, (int, float)):
        return f"number {v}"
    if isinstance(v, str):
        short = v if len(v) <= 40 else v[:37] + "..."
        return f"string '{short}'"
    if isinstance(v, list):
        return "a list"
    if isinstance(v, dict):
        return "a mapping"
    return type(v).__name__


def _expected_type(t) -> str:
    names = {"object": "a mapping", "array": "a list", "string": "a string", "integer": "an integer",
             "number": "a number", "boolean": "true or false", "null": "null"}
    if isinstance(t, list):
        return " or ".join(names.get(x, x) for x in t)
    return names.get(t, str(t))


DURATION_FORMS = "minutes ('30'), 'HH:MM:SS' or 'D-HH:MM:SS'"


def _duration_diag(doc: Document, path: tuple, inst) -> Diagnostic:
    """A SLURM time limit that is not one: say the forms, and when YAML made a number of an
    unquoted 12:00:00 (base 60), say so and how to quote it."""
    if isinstance(inst, (int, float)) and not isinstance(inst, bool):
        raw = doc.raw_numbers.get(path)
        if raw is not None:
            hint = f"YAML reads an unquoted {raw} as the number {inst} (base 60): write it in quotes, '{raw}'"
        else:
            hint = f"quote it: '{inst}' means {inst} minutes"
        return doc.diag(f"expected a SLURM time limit as a quoted string: {DURATION_FORMS}; found number {inst}",
                        path, hint=hint)
    return doc.diag(f"expected a SLURM time limit: {DURATION_FORMS}; found {_describe_value(inst)}", path)


def _error_to_diag(doc: Document, kind: str, err) -> Diagnostic:
    path = tuple(err.absolute_path)
    v = err.validator
    inst = err.instance
    if err.schema.get("format") == "slurm-duration" and v in ("type", "pattern"):
        return _duration_diag(doc, path, inst)
    if v == "additionalProperties":
        allowed = sorted(err.schema.get("properties", {}))
        extras = [k for k in inst if k not in allowed] if isinstance(inst, dict) else []
        key = extras[0] if extras else "?"
        close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
        hint = f"did you mean '{close[0]}'?" if close else (
            f"allowed fields: {', '.join(allowed)}" if allowed else "remove it")
        return doc.diag(f"unknown field '{key}'", path + (key,), hint=hint, key=True)
    if v == "required":
        missing = err.message.split("'")[1] if "'" in err.message else err.message
        return doc.diag(f"missing required field '{missing}'", path,
                        hint=f"add '{missing}:' under {format_path(path) or 'the document'}")
    word = re.fullmatch(r"\^([a-z]+)\$\(\?!\\n\)", str(err.schema.get("pattern", "")))
    if v == "type" and word and isinstance(err.validator_value, list):  # a number or one word (batchSize: 8 | auto)
        others = [t for t in err.validator_value if t != "string"]
        return doc.diag(f"expected {_expected_type(others)} or '{word.group(1)}', found {_describe_value(inst)}", path)
    if v == "type":
        hint = None
        wanted = err.validator_value if isinstance(err.validator_value, list) else [err.validator_value]
        if "string" in wanted and isinstance(inst, (int, float)) and not isinstance(inst, bool):
            raw = doc.raw_numbers.get(path, inst)
            hint = f"quote it: '{raw}'" + (f" (YAML reads an unquoted {raw} as the number {inst})" if raw != inst else "")
        return doc.diag(f"expected {_expected_type(err.validator_value)}, found {_describe_value(inst)}", path,
                        hint=hint)
    if v == "enum":
        options = ", ".join(str(o) for o in err.validator_value)
        close = difflib.get_close_matches(str(inst), [str(o) for o in err.validator_value], n=1, cutoff=0.5)
        hint = f"did you mean '{close[0]}'?" if close else None
        return doc.diag(f"expected one of: {options}; found {_describe_value(inst)}", path, hint=hint)
    if v == "const":
        return doc.diag(f"expected '{err.validator_value}', found {_describe_value(inst)}", path)
    if v in ("pattern", "maxLength") and path and path[-1] in ("name",) or (
            v in ("pattern", "maxLength") and "DNS-1123" in str(err.schema.get("description", ""))):
        return doc.diag(f"'{inst}' is not a valid name", path,
                        hint="names are DNS-1123 labels: lower-case letters, digits and '-', "
                             "start and end with a letter or digit, at most 63 characters")
    literal = re.fullmatch(r"\^([a-z]+)\$\(\?!\\n\)", str(err.validator_value)) if v == "pattern" else None
    if literal and err.schema.get("type"):  # a number or one word (batchSize: 8 | auto)
        others = [t for t in err.schema["type"] if t != "string"]
        return doc.diag(f"expected {_expected_type(others)} or '{literal.group(1)}', found {_describe_value(inst)}", path)
    if v == "pattern":
        return doc.diag(f"{_describe_value(inst)} does not have the expected form", path,
                        hint=err.schema.get("description") or f"it must match {err.validator_value}")
    if v in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        word = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}[v]
        return doc.diag(f"expected a value {word} {err.validator_value}, found {inst}", path)
    if v in ("oneOf", "anyOf"):
        from jsonschema.exceptions import best_match

        # "X or null": when the value is not null, the null branch's complaint says nothing useful
        context = [e for e in err.context if not (inst is not None and e.validator == "type"
                                                  and e.validator_value == "null")]
        sub = best_match(context) if context else None
        if sub is not None:
            return _error_to_diag(doc, kind, sub)  # its absolute_path already includes ours
    return doc.diag(err.message, path)


def _non_finite(value, path: tuple):
    """(path, value) of every NaN or infinite float, and every string (key or value) with a NUL
    character, inside a parsed document."""
    if isinstance(value, float) and not math.isfinite(value):
        yield path, value
    elif isinstance(value, str) and "\x00" in value:
        yield path, value
    elif isinstance(value, dict):
        for k, v in value.items():
            if isinstance(k, str) and "\x00" in k:
                yield path + (k,), k
            yield from _non_finite(v, path + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _non_finite(v, path + (i,))


def validate_document(doc: Document) -> list[Diagnostic]:
    """All schema problems of one document, in file order."""
    data = doc.data
    if not isinstance(data, dict):
        return [doc.diag(f"a manifest must be a mapping, found {_describe_value(data)}",
                         hint="start with 'apiVersion: aam/v1alpha1' and 'kind: ...'")]
    diags = []
    api = data.get("apiVersion")
    if api != API_VERSION:
        if api is None:
            diags.append(doc.diag("missing required field 'apiVersion'", (),
                                  hint=f"add 'apiVersion: {API_VERSION}'"))
        else:
            diags.append(doc.diag(f"unsupported apiVersion {_describe_value(api)}", ("apiVersion",),
                                  hint=f"use '{API_VERSION}'"))
    kind = data.get("kind")
    if kind not in KINDS:
        known = ", ".join(KINDS)
        if kind is None:
            diags.append(doc.diag("missing required field 'kind'", (), hint=f"one of {known}"))
        else:
            close = difflib.get_close_matches(str(kind), list(KINDS), n=1, cutoff=0.5)
            hint = f"did you mean '{close[0]}'?" if close else f"one of {known}"
            diags.append(doc.diag(f"unknown kind {_describe_value(kind)}", ("kind",), hint=hint))
        return diags
    # NaN passes every minimum and maximum (each comparison with it is false) and infinity every
    # maximum-less bound: refused here, for every field of every kind, typed or free-form
    bad = list(_non_finite(data, ()))
    for path, value in bad:
        if isinstance(value, str):
            diags.append(doc.diag("a NUL character (\\0) in a string: no path, name or value may hold one", path,
                                  hint="remove the \\0 escape"))
            continue
        what = "NaN" if value != value else ("infinity" if value > 0 else "-infinity")
        diags.append(doc.diag(f"{what} is not a finite number", path,
                              hint="write a finite value (.nan and .inf are YAML's words for NaN and infinity, "
                                   "which would pass the range checks and poison training)"))
    if bad:
        return diags
    errors = sorted(validator(kind).iter_errors(data),
                    key=lambda e: (doc.where(tuple(e.absolute_path))[0] or 0, list(map(str, e.absolute_path))))
    seen = set()
    for err in errors:
        if tuple(err.absolute_path) == () and err.validator == "required" and \
                ("'apiVersion'" in err.message or "'kind'" in err.message):
            continue  # reported above, with a better hint
        if err.validator == "const" and tuple(err.absolute_path) == ("apiVersion",):
            continue  # already reported above
        d = _error_to_diag(doc, kind, err)
        key = (d.line, d.field, d.message)
        if key not in seen:
            seen.add(key)
            diags.append(d)
    return diags


def explain(target: str) -> str:
    """kubectl-explain style docs of Kind[.field.path], read from the schemas."""
    parts = target.split(".")
    kind = KIND_ALIASES.get(parts[0].lower(), parts[0])
    if kind not in KINDS:
        raise KeyError(f"unknown kind '{parts[0]}'; one of {', '.join(KINDS)}")
    path = tuple(parts[1:])
    node = field_schema(kind, path)
    if node is None:
        parent = path[:-1]
        close = difflib.get_close_matches(path[-1], allowed_fields(kind, parent), n=1) if path else []
        extra = f"; did you mean '{close[0]}'?" if close else ""
        raise KeyError(f"field '{'.'.join(path)}' does not exist in {kind}{extra}")
    lines = [f"KIND:     {kind}", f"VERSION:  {API_VERSION}", ""]
    if path:
        lines.append(f"FIELD:    {'.'.join(path)} <{_type_word(node)}>")
        lines.append("")
    lines.append("DESCRIPTION:")
    lines.append("    " + (node.get("description") or kind_schema(kind).get("description", "")))
    if "default" in node and node["default"] not in ({}, []):
        lines.append(f"    Default: {json.dumps(node['default'])}")
    if "enum" in node:
        lines.append(f"    One of: {', '.join('null' if x is None else str(x) for x in node['enum'])}")
    shape = node
    if not node.get("properties") and isinstance(node.get("items"), dict):  # a list of objects: their fields
        shape, _ = _object_branch(node["items"], kind_schema(kind)["$id"])
    props = shape.get("properties", {})
    if props:
        required = set(shape.get("required", []))
        base = kind_schema(kind)["$id"]
        lines.append("")
        lines.append("FIELDS:")
        for name, sub in props.items():
            sub_r, _ = _object_branch(sub, base)
            req = " -required-" if name in required else ""
            lines.append(f"  {name}\t<{_type_word(sub_r)}>{req}")
            desc = sub_r.get("description", "")
            if desc:
                lines.append(f"    {desc}")
            if "default" in sub_r and sub_r["default"] not in ({}, [], None):
                lines.append(f"    Default: {json.dumps(sub_r['default'])}")
            if "enum" in sub_r:
                lines.append(f"    One of: {', '.join('null' if x is None else str(x) for x in sub_r['enum'])}")
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _type_word(node: dict) -> str:
    if "enum" in node:
        return "enum"
    if "const" in node:
        return "string"
    t = node.get("type")
    if isinstance(t, list):
        t = [x for x in t if x != "null"]
        t = t[0] if len(t) == 1 else "|".join(t)
    if t is None and "properties" in node:
        t = "object"
    return {"array": "[]" + _type_word(node.get("items", {})) if isinstance(node.get("items"), dict) else "[]",
            "object": "Object"}.get(t, t or "any")


@functools.lru_cache(maxsize=None)
def spec_defaults(kind: str) -> dict:
    """A kind's spec with every schema default filled (read-only: shared by every caller)."""
    base = {"Run": {"stage": "finetune", "datasetRef": "x"}, "Dataset": {"table": "x"},
            "HardwareProfile": {"accelerator": "cpu"}}.get(kind, {})
    doc = fill_defaults(kind, {"apiVersion": API_VERSION, "kind": kind, "metadata": {"name": "x"},
                               "spec": json.loads(json.dumps(base))})
    return doc["spec"]
