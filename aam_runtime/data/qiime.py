"""QIIME 2 artifacts (.qza) read by our own code: no QIIME 2 at run time, nothing unpickled,
nothing extracted before the whole archive has been checked.

An artifact is a zip holding one folder named by its UUID (QIIME 2's "Anatomy of an Archive"):

    <uuid>/VERSION          "QIIME 2", "archive: N", "framework: ..."
    <uuid>/metadata.yaml    uuid, type (the semantic type), format (the directory format)
    <uuid>/data/...         the payload: feature-table.biom, tree.nwk, taxonomy.tsv, distance-matrix.tsv
    <uuid>/provenance/...   how it was made (not read here)
    <uuid>/checksums.md5    from archive version 5: md5 of every file (verified here)

open_artifact checks all of that, the semantic type against what the field takes (a wrong one is
refused by name, with the QIIME 2 command that makes the right one), and the members themselves:
a name that is absolute, climbs out with '..', is a link, or repeats is refused, and so is an
archive whose declared sizes pass AAM_QZA_MAX_BYTES (zipfile stops a member at its declared size,
so a zip bomb cannot inflate past it). The payload is read into memory (read_payload) or copied,
once, into a folder named by the archive's digest (payload_file) for the tools that need a path.
"""
from __future__ import annotations

import functools
import hashlib
import os
import re
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from aam_runtime.data.errors import DataError

SUFFIXES = (".qza", ".qzv")
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
MAX_MEMBERS = 100_000
MAX_RATIO = 200  # a member over 64 MiB unpacked that inflates more than this is a bomb (BIOM, Newick: < 20x)
DEFAULT_MAX_BYTES = 64 << 30

# What each Dataset field takes, the payload file of each accepted type, and what to do with a near miss.
TABLE = ("FeatureTable[Frequency]",)
TREE = ("Phylogeny[Rooted]",)
TAXONOMY = ("FeatureData[Taxonomy]",)
DISTANCES = ("DistanceMatrix",)
PAYLOADS = {"FeatureTable[Frequency]": "feature-table.biom", "Phylogeny[Rooted]": "tree.nwk",
            "FeatureData[Taxonomy]": "taxonomy.tsv", "DistanceMatrix": "distance-matrix.tsv"}
NEAR_MISSES = {
    "FeatureTable[RelativeFrequency]": "aam reads counts: use the FeatureTable[Frequency] the relative table was "
                                        "made from (the input of 'qiime feature-table relative-frequency')",
    "FeatureTable[PresenceAbsence]": "aam reads counts: use the FeatureTable[Frequency] the presence/absence table "
                                     "was made from",
    "FeatureTable[Composition]": "aam reads counts: use the FeatureTable[Frequency] before "
                                 "'qiime composition add-pseudocount'",
    "Phylogeny[Unrooted]": "root it first: qiime phylogeny midpoint-root --i-tree unrooted-tree.qza "
                           "--o-rooted-tree rooted-tree.qza (or use the rooted tree of "
                           "'qiime phylogeny align-to-tree-mafft-fasttree')",
    "FeatureData[Sequence]": "that holds the ASV sequences; aam reads them from the table's feature ids",
}


@dataclass(frozen=True)
class Artifact:
    path: str
    uuid: str
    type: str
    format: str
    archive_version: int
    framework: str
    payload: str  # the member holding the data
    payload_size: int

    def describe(self) -> dict:
        """What a record keeps of it: QIIME 2 users cite artifacts by UUID."""
        return {"uuid": self.uuid, "type": self.type, "format": self.format, "archiveVersion": self.archive_version,
                "framework": self.framework}


def is_archive(path: str | os.PathLike | None) -> bool:
    return bool(path) and str(path).lower().endswith(SUFFIXES)


def max_bytes() -> int:
    raw = os.environ.get("AAM_QZA_MAX_BYTES", "")
    return int(raw) if raw.isdigit() else DEFAULT_MAX_BYTES


def open_artifact(path: str, expect: tuple[str, ...], field: str) -> Artifact:
    """The checked artifact at path, or DataError with one message (path, field, what is wrong, how
    to fix). The whole-archive check (checksums of every member) runs once per file as it is on
    disk: preflight, the record and the UniFrac cache key all open the same archive."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{path} ({field}): file not found (check {field})")
    st = p.stat()
    return _open_checked(str(path), st.st_size, st.st_mtime_ns, tuple(expect), field)


@functools.lru_cache(maxsize=32)
def _open_checked(path: str, _size: int, _mtime_ns: int, expect: tuple[str, ...], field: str) -> Artifact:
    where = f"{path} ({field})"
    p = Path(path)
    if str(path).lower().endswith(".qzv"):
        raise DataError(f"{where}: a QIIME 2 visualization (.qzv) holds no data for aam; name the .qza artifact "
                        f"({' or '.join(expect)}) it was made from")
    try:
        zf = zipfile.ZipFile(p)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise DataError(f"{where}: not a QIIME 2 artifact: cannot read it as a zip archive ({exc}); is the file "
                        "complete? (qiime tools validate checks it)") from None
    with zf:
        infos = zf.infolist()
        root = _check_members(where, infos)
        names = {i.filename: i for i in infos}
        version, framework = _read_version(where, zf, names, root)
        meta = _read_metadata(where, zf, names, root)
        _check_type(where, meta["type"], expect, field)
        payload = _payload_member(where, names, root, meta["type"])
        if version >= 5:
            _verify_checksums(where, zf, names, root)
    return Artifact(str(path), meta["uuid"], meta["type"], meta["format"], version, framework, payload.filename,
                    payload.file_size)


def _check_members(where: str, infos: list[zipfile.ZipInfo]) -> str:
    if not infos:
        raise DataError(f"{where}: not a QIIME 2 artifact: the zip archive is empty")
    if len(infos) > MAX_MEMBERS:
        raise DataError(f"{where}: refused: {len(infos)} members (a QIIME 2 artifact has a few dozen)")
    seen, roots, total = set(), set(), 0
    for info in infos:
        name = info.filename
        parts = PurePosixPath(name).parts
        if (not name or "\\" in name or "\x00" in name or name.startswith("/") or ".." in parts
                or re.match(r"^[A-Za-z]:", name)):
            raise DataError(f"{where}: refused: member name {name!r} points outside the archive's folder; "
                            "an archive QIIME 2 wrote never has one")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise DataError(f"{where}: refused: member {name!r} is a symbolic link; an archive QIIME 2 wrote has none")
        if name in seen:
            raise DataError(f"{where}: refused: member {name!r} appears twice")
        seen.add(name)
        roots.add(parts[0])
        total += info.file_size
        if info.file_size > (64 << 20) and info.file_size > MAX_RATIO * max(info.compress_size, 1):
            raise DataError(f"{where}: refused: member {name!r} would inflate {info.file_size // info.compress_size}x "
                            f"(to {info.file_size} bytes): a zip bomb, not a QIIME 2 artifact")
    if total > max_bytes():
        raise DataError(f"{where}: refused: its members would take {total} bytes unpacked, more than the "
                        f"{max_bytes()} aam allows (set AAM_QZA_MAX_BYTES to allow more)")
    if len(roots) != 1:
        raise DataError(f"{where}: not a QIIME 2 artifact: its members sit in {len(roots)} top-level folders "
                        f"({', '.join(sorted(roots)[:3])}); an artifact has one, named by its UUID")
    root = roots.pop()
    if not UUID.match(root):
        raise DataError(f"{where}: not a QIIME 2 artifact: its top-level folder {root!r} is not a UUID")
    return root


def _member_text(where: str, zf: zipfile.ZipFile, names: dict, member: str, limit: int = 1 << 20) -> str:
    info = names.get(member)
    if info is None:
        raise DataError(f"{where}: not a complete QIIME 2 artifact: {member} is missing")
    if info.file_size > limit:
        raise DataError(f"{where}: refused: {member} is {info.file_size} bytes; QIIME 2 writes a few hundred")
    try:
        return zf.read(info).decode("utf-8")
    except (zipfile.BadZipFile, UnicodeDecodeError, OSError, ValueError, EOFError) as exc:
        raise DataError(f"{where}: damaged archive: cannot read {member} ({exc})") from None


def _read_version(where: str, zf, names: dict, root: str) -> tuple[int, str]:
    text = _member_text(where, zf, names, f"{root}/VERSION")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    fields = dict(line.split(":", 1) for line in lines[1:] if ":" in line)
    version = (fields.get("archive") or "").strip()
    if not lines or lines[0] != "QIIME 2" or not version.isdigit():
        raise DataError(f"{where}: not a QIIME 2 artifact: its VERSION file does not say 'QIIME 2' and an archive "
                        "version")
    return int(version), (fields.get("framework") or "").strip()


def _read_metadata(where: str, zf, names: dict, root: str) -> dict:
    import yaml

    text = _member_text(where, zf, names, f"{root}/metadata.yaml")
    try:
        meta = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise DataError(f"{where}: damaged archive: metadata.yaml is not YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(meta, dict) or not all(isinstance(meta.get(k), str) for k in ("uuid", "type", "format")):
        raise DataError(f"{where}: damaged archive: metadata.yaml lacks uuid, type or format")
    if meta["uuid"] != root:
        raise DataError(f"{where}: damaged archive: metadata.yaml names uuid {meta['uuid']}, its folder is {root}")
    return meta


def _check_type(where: str, found: str, expect: tuple[str, ...], field: str) -> None:
    if found in expect:
        return
    want = " or ".join(expect)
    hint = NEAR_MISSES.get(found) or f"name a {want} artifact in {field}"
    raise DataError(f"{where}: holds {found}; {field} takes {want}: {hint}")


def _payload_member(where: str, names: dict, root: str, kind: str) -> zipfile.ZipInfo:
    data = [i for n, i in names.items() if n.startswith(f"{root}/data/") and not n.endswith("/")]
    if not data:
        raise DataError(f"{where}: not a complete QIIME 2 artifact: it has no data/ folder (or an empty one)")
    want = f"{root}/data/{PAYLOADS[kind]}"
    if want in names:
        return names[want]
    if len(data) == 1:
        return data[0]
    listing = ", ".join(sorted(i.filename[len(root) + 6:] for i in data)[:5])
    raise DataError(f"{where}: its data/ folder holds {listing}, not {PAYLOADS[kind]}; re-export it with "
                    "qiime tools export and import the file again")


def _verify_checksums(where: str, zf, names: dict, root: str) -> None:
    text = _member_text(where, zf, names, f"{root}/checksums.md5", limit=64 << 20)
    listed = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        m = re.match(r"^\\?([0-9a-fA-F]{32})\s+\*?(.+)$", line)
        if not m:
            raise DataError(f"{where}: damaged archive: checksums.md5 has a line that is not 'md5  path': {line[:80]!r}")
        listed[m.group(2)] = m.group(1).lower()
    for name, info in names.items():
        rel = name[len(root) + 1:]
        if name.endswith("/") or rel == "checksums.md5":
            continue
        if rel not in listed:
            raise DataError(f"{where}: damaged archive: {rel} is not in checksums.md5")
        if _md5(zf, info, where) != listed.pop(rel):
            raise DataError(f"{where}: damaged archive: {rel} does not match its checksum in checksums.md5 (the file "
                            "changed after QIIME 2 wrote it, or the copy is incomplete)")
    if listed:
        raise DataError(f"{where}: damaged archive: checksums.md5 lists {sorted(listed)[0]}, which is not in it")


def _md5(zf, info, where: str) -> str:
    h = hashlib.md5(usedforsecurity=False)
    try:
        with zf.open(info) as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as exc:
        raise DataError(f"{where}: damaged archive: cannot read {info.filename} ({exc})") from None
    return h.hexdigest()


def read_payload(art: Artifact) -> bytes:
    with zipfile.ZipFile(art.path) as zf:
        try:
            return zf.read(art.payload)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
            raise DataError(f"{art.path}: damaged archive: cannot read {art.payload} ({exc})") from None


def payload_file(art: Artifact, folder: Path) -> Path:
    """The payload as a file (for ssu and the other readers that take a path): copied once into
    folder/<uuid>-<archive digest>/<its name> (written under a temporary name, then renamed);
    the name comes from the archive's type, never from a member's name."""
    h = hashlib.sha256()
    with open(art.path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    digest = h.hexdigest()[:16]
    name = PAYLOADS.get(art.type) or "payload"
    out = Path(folder) / f"{art.uuid}-{digest}" / name
    if out.is_file() and out.stat().st_size == art.payload_size:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{name}.{os.getpid()}.tmp"
    try:
        with zipfile.ZipFile(art.path) as zf, zf.open(art.payload) as src, open(tmp, "wb") as dst:
            for block in iter(lambda: src.read(1 << 20), b""):
                dst.write(block)
        os.replace(tmp, out)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise DataError(f"{art.path}: cannot copy {art.payload} out of the archive into {out.parent} ({exc})") from None
    finally:
        tmp.unlink(missing_ok=True)
    return out


def payload_sha256(art: Artifact) -> str:
    """sha256 of the data inside (the digest the same file outside an archive has)."""
    h = hashlib.sha256()
    with zipfile.ZipFile(art.path) as zf, zf.open(art.payload) as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()


FIELDS = (("table", TABLE), ("tree", TREE), ("distanceMatrix", DISTANCES), ("taxonomy", TAXONOMY))


def describe_inputs(spec: dict) -> dict:
    """{path: artifact description and its data's digest} for every .qza a Dataset spec names
    (the record keeps it)."""
    out = {}
    for key, expect in FIELDS:
        path = spec.get(key)
        if is_archive(path):
            art = open_artifact(path, expect, f"spec.{key}")
            out[path] = dict(art.describe(), dataSha256=payload_sha256(art), data=PurePosixPath(art.payload).name)
    return out


# the id headers of a QIIME 2 taxonomy file's first column (TSVTaxonomyFormat); anything else on the
# first line is a headerless file's first row (HeaderlessTSVTaxonomyFormat)
TAXONOMY_ID_HEADERS = {"feature id", "feature-id", "featureid", "id", "#otuid", "#otu id", "#feature id"}
MD5_ID = re.compile(r"^[0-9a-f]{32}$")


def read_taxonomy(path: str) -> dict[str, str]:
    """{feature id: taxon} from a QIIME 2 taxonomy TSV (a 'Feature ID<TAB>Taxon[<TAB>Confidence]'
    header, or none) or a .qza holding a FeatureData[Taxonomy]."""
    field = "spec.taxonomy"
    try:
        if is_archive(path):
            text = read_payload(open_artifact(path, TAXONOMY, field)).decode("utf-8-sig")
        else:
            text = Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"{path}: taxonomy file not found (check {field})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the taxonomy as UTF-8 text ({exc})") from None
    rows = [line.split("\t") for line in text.splitlines() if line.strip()
            and (not line.startswith("#") or line.split("\t", 1)[0].strip().lower() in TAXONOMY_ID_HEADERS)]
    taxon_col = 1
    if rows and rows[0][0].strip().lower() in TAXONOMY_ID_HEADERS:
        header = [c.strip().lower() for c in rows.pop(0)]
        taxon_col = header.index("taxon") if "taxon" in header else 1
    out: dict[str, str] = {}
    for n, row in enumerate(rows, start=1):
        if len(row) <= taxon_col or not row[0].strip():
            raise DataError(f"{path}: row {n} has no taxon column ('Feature ID<TAB>Taxon' expected, as qiime "
                            f"feature-classifier writes); found {chr(9).join(row)[:80]!r}")
        fid = row[0].strip()
        if fid in out:
            raise DataError(f"{path}: feature id {fid[:40]!r} appears twice; each feature needs one row")
        out[fid] = row[taxon_col].strip()
    if not out:
        raise DataError(f"{path}: the taxonomy has no rows")
    return out


def taxa_of(asv_ids: list[str], taxonomy: dict[str, str]) -> dict[str, str]:
    """The taxon of each ASV: by its sequence, or by the MD5 of its sequence (QIIME 2's DADA2
    names features by that hash)."""
    hashed = any(MD5_ID.match(k) for k in list(taxonomy)[:20])
    out = {}
    for a in asv_ids:
        t = taxonomy.get(a)
        if t is None and hashed:
            t = taxonomy.get(hashlib.md5(a.encode(), usedforsecurity=False).hexdigest())
        if t is not None:
            out[a] = t
    return out
