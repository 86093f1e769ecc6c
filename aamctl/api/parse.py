"""YAML -> documents with the line and column of every node.

Only the safe YAML subset is accepted (SafeLoader composition, our own construction), so no
Python object tags are ever built. Aliases are expanded with a budget, which stops alias bombs
("billion laughs") before they eat memory; duplicate keys and tabs are errors with a position.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from aamctl.errors import AamError, Diagnostic

MAX_NODES = 100_000  # far above any real manifest, far below an alias bomb
MAX_DEPTH = 64  # real manifests are under 10 levels deep; Python's recursion limit is far beyond this
MAX_BYTES = 4 * 1024 * 1024
YAML_SUFFIXES = (".yaml", ".yml")
STDIN_LABEL = "<stdin>"


@dataclass
class Document:
    """One YAML document: its data, where it came from, and where each field stands."""

    data: object
    file: str
    index: int  # 0-based position of the document in its file
    positions: dict[tuple, tuple[int, int]] = field(default_factory=dict)
    key_positions: dict[tuple, tuple[int, int]] = field(default_factory=dict)
    base_dir: Path = Path(".")
    # the text of scalars YAML turned into numbers though they look like times (12:00:00 -> 43200)
    raw_numbers: dict[tuple, str] = field(default_factory=dict)

    def where(self, path: tuple | list, key: bool = False) -> tuple[int | None, int | None]:
        """Line and column (1-based) of the field at path (its key when key=True), or of the
        nearest parent that is written in the file (defaults are not)."""
        path = tuple(path)
        while True:
            if key and path in self.key_positions:
                return self.key_positions[path]
            if not key and path in self.positions:
                return self.positions[path]
            if not path:
                return self.positions.get((), (None, None))
            if key and path in self.positions and isinstance(path[-1], int):
                return self.positions[path]  # list items have no key
            path = path[:-1]

    def diag(self, message: str, path=(), hint: str | None = None, key: bool = True) -> Diagnostic:
        line, col = self.where(path, key=key)
        return Diagnostic(message, file=self.file, line=line, column=col,
                          field=format_path(path) or None, hint=hint)


def format_path(path) -> str:
    out = ""
    for p in path:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out += ("." if out else "") + str(p)
    return out


def _too_deep(file: str, mark) -> AamError:
    return AamError(Diagnostic(f"nested more than {MAX_DEPTH} levels deep", file=file, line=mark.line + 1,
                               column=mark.column + 1,
                               hint="manifests are a few levels deep; is this file generated, or hostile?"))


class _Loader(yaml.SafeLoader):
    """SafeLoader whose composer stops at MAX_DEPTH with a position, instead of a RecursionError."""

    def __init__(self, text: str, file: str):
        super().__init__(text)
        self._file = file
        self._depth = 0

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _too_deep(self._file, self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


class _Builder:
    def __init__(self, file: str):
        self.file = file
        self.count = 0
        self.positions: dict[tuple, tuple[int, int]] = {}
        self.key_positions: dict[tuple, tuple[int, int]] = {}
        self.raw_numbers: dict[tuple, str] = {}
        self._scalar = yaml.constructor.SafeConstructor()

    def _error(self, node, message, hint=None):
        return AamError(Diagnostic(message, file=self.file, line=node.start_mark.line + 1,
                                   column=node.start_mark.column + 1, hint=hint))

    def build(self, node, path=()):
        if len(path) > MAX_DEPTH:  # aliases can nest deeper than the text does
            raise _too_deep(self.file, node.start_mark)
        self.count += 1
        if self.count > MAX_NODES:
            raise self._error(node, f"document expands to more than {MAX_NODES} nodes",
                              "YAML aliases may be nested into an alias bomb; write the values out")
        self.positions[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
        if isinstance(node, yaml.ScalarNode):
            try:
                value = self._scalar.construct_object(node, deep=True)
            except yaml.constructor.ConstructorError as exc:
                raise self._error(node, f"cannot read value: {exc.problem}",
                                  "only plain YAML values are allowed (no !!python tags)") from None
            if isinstance(value, bytes) or not isinstance(value, (str, int, float, bool, type(None))):
                value = str(node.value)  # timestamps and binaries stay text
            elif isinstance(value, (int, float)) and not isinstance(value, bool) and ":" in node.value:
                self.raw_numbers[path] = node.value  # YAML 1.1 base 60: 12:00:00 is 43200
            return value
        if isinstance(node, yaml.SequenceNode):
            if node.tag not in ("tag:yaml.org,2002:seq",):
                raise self._error(node, f"unsupported tag {node.tag}", "remove the tag")
            return [self.build(child, path + (i,)) for i, child in enumerate(node.value)]
        if isinstance(node, yaml.MappingNode):
            if node.tag not in ("tag:yaml.org,2002:map",):
                raise self._error(node, f"unsupported tag {node.tag}", "remove the tag")
            out: dict = {}
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    raise self._error(key_node, "YAML merge keys (<<) are not supported",
                                      "write the fields out")
                if not isinstance(key_node, yaml.ScalarNode):
                    raise self._error(key_node, "mapping keys must be plain strings")
                key = self._scalar.construct_object(key_node)
                if not isinstance(key, str):
                    key = str(key_node.value)
                if key in out:
                    raise self._error(key_node, f"duplicate key '{key}'",
                                      "each field may appear once; delete one of them")
                self.key_positions[path + (key,)] = (key_node.start_mark.line + 1,
                                                     key_node.start_mark.column + 1)
                out[key] = self.build(value_node, path + (key,))
            return out
        raise self._error(node, "unsupported YAML node")  # pragma: no cover


def _yaml_error(exc: yaml.YAMLError, file: str, text: str) -> Diagnostic:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    line = mark.line + 1 if mark else None
    col = mark.column + 1 if mark else None
    hint = "check indentation and quoting"
    if "\t" in problem or "'\\t'" in problem:
        hint = "YAML indentation must use spaces, not tabs"
    elif mark is not None:
        lines = text.splitlines()
        if 0 <= mark.line < len(lines) and "\t" in lines[mark.line]:
            hint = "YAML indentation must use spaces, not tabs"
    return Diagnostic(f"invalid YAML: {problem}", file=file, line=line, column=col, hint=hint)


def parse_text(text: str, file: str, base_dir: Path | None = None) -> list[Document]:
    """Parse a multi-document YAML text; raises AamError with positions."""
    if len(text.encode("utf-8", "replace")) > MAX_BYTES:
        raise AamError(Diagnostic(f"file is larger than {MAX_BYTES // 1024 // 1024} MiB", file=file,
                                  hint="manifests are small; is this a data file?"))
    docs: list[Document] = []
    base = base_dir if base_dir is not None else Path(".")
    loader = _Loader(text, file)
    try:
        index = 0
        while loader.check_node():
            node = loader.get_node()
            if node is None:  # pragma: no cover
                break
            builder = _Builder(file)
            data = builder.build(node)
            docs.append(Document(data=data, file=file, index=index, positions=builder.positions,
                                 key_positions=builder.key_positions, base_dir=base,
                                 raw_numbers=builder.raw_numbers))
            index += 1
    except yaml.YAMLError as exc:
        raise AamError(_yaml_error(exc, file, text)) from None
    finally:
        loader.dispose()
    return docs


def expand_paths(paths: list[str]) -> list[str]:
    """FILE|DIR|- arguments -> an ordered list of files ('-' stays '-')."""
    out: list[str] = []
    for p in paths:
        if p == "-":
            out.append(p)
            continue
        path = Path(p)
        if path.is_dir():
            found = sorted(str(f) for f in path.rglob("*") if f.suffix in YAML_SUFFIXES and f.is_file())
            out.extend(found)
        elif path.exists():
            out.append(str(path))
        else:
            raise AamError(Diagnostic("no such file or directory", file=p,
                                      hint="check the path given to -f"))
    return out


def read_manifest_text(name: str) -> tuple[str, Path]:
    """The text of a manifest file (or '-' for standard input) and the folder its relative paths
    are read from; AamError when it is not UTF-8 text or cannot be read."""
    label = STDIN_LABEL if name == "-" else name
    try:
        if name == "-":
            raw = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read().encode()
            base = Path(os.getcwd())
        else:
            raw = Path(name).read_bytes()
            base = Path(name).resolve().parent
    except OSError as exc:
        raise AamError(Diagnostic(f"cannot read file: {exc.strerror}", file=label)) from None
    try:
        return raw.decode("utf-8"), base
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise AamError(Diagnostic(f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})", file=label,
                                  line=line, hint="manifests are YAML text files; save it as UTF-8")) from None


def load_documents(paths: list[str]) -> tuple[list[Document], list[Diagnostic]]:
    """Parse every file; the documents of the readable files and the problems of the others
    (one broken file never hides the others)."""
    docs: list[Document] = []
    errors: list[Diagnostic] = []
    for name in expand_paths(paths):
        label = STDIN_LABEL if name == "-" else name
        try:
            text, base = read_manifest_text(name)
            file_docs = parse_text(text, label, base)
            file_docs = [d for d in file_docs if d.data is not None] or file_docs
            if not file_docs or all(d.data is None for d in file_docs):
                errors.append(Diagnostic("file holds no YAML document", file=label,
                                         hint="an empty manifest does nothing; add a kind or remove the file"))
                continue
            docs.extend(file_docs)
        except AamError as exc:
            errors.extend(exc.diagnostics)
        except RecursionError:  # a last line of defence: MAX_DEPTH should stop it first
            errors.append(Diagnostic("nested too deeply to read", file=label, hint="manifests are a few levels deep"))
    return docs, errors


def load_paths(paths: list[str]) -> list[Document]:
    """Parse every file; collects all errors of all files before raising."""
    docs, errors = load_documents(paths)
    if errors:
        raise AamError(errors)
    return docs
