"""BIOM table + metadata -> the samples, ASVs and counts a run uses, with every drop reported.

Torch-free on purpose: the controller's preflight imports this module on a login node.
Order of operations (docs/data.md follows it): read table, read metadata, subsample, rarefy,
drop non-ACGT ASVs if asked, align with metadata, drop unusable targets, tokenize, select ASVs.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from aam_runtime.data.errors import DataError

log = logging.getLogger("aam.data")

PAD, A, C, G, T, START, MASK = 0, 1, 2, 3, 4, 5, 6
VOCAB_SIZE = 7
_LUT = np.zeros(256, dtype=np.int8)
for _ch, _tok in zip(b"ACGT", (A, C, G, T)):
    _LUT[_ch] = _tok
    _LUT[ord(chr(_ch).lower())] = _tok
IUPAC = set("ACGTURYSWKMBDHVN.-acgturyswkmbdhvn")


# metadata values that mean "no value" (compared after stripping white space); preflight uses them too
MISSING_VALUES = ("", "NA", "NaN", "nan", "null", "None", "not applicable", "not collected", "missing")




@dataclass
class Prepared:
    """What a run trains on, aligned: rows are samples, columns ASVs."""

    sample_ids: list[str]
    asv_ids: list[str]
    counts: "object"  # scipy.sparse.csr_matrix, samples x ASVs, float64 read counts
    metadata: "object"  # pandas.DataFrame indexed by sample id, same order as sample_ids
    report: dict = field(default_factory=dict)

    @property
    def n_samples(self) -> int:
        return len(self.sample_ids)


def read_biom(path: str):
    import biom

    from aam_runtime.data import qiime  # a QIIME 2 archive's reader (torch-free, zipfile)

    if qiime.is_archive(path):  # a QIIME 2 FeatureTable[Frequency]: the BIOM inside, read in memory
        return _biom_from_bytes(path, qiime.read_payload(qiime.open_artifact(path, qiime.TABLE, "spec.table")))
    p = Path(path)
    if not p.exists():
        raise DataError(f"{path}: table file not found (check spec.table)")
    try:
        return biom.load_table(str(p))
    except Exception as exc:  # biom raises many kinds for corrupt files
        kind = "HDF5" if _is_hdf5(p) else "JSON/TSV"
        raise DataError(f"{path}: cannot read BIOM table ({kind}): {str(exc).splitlines()[0] if str(exc) else type(exc).__name__} "
                        "(is the file complete? re-export it with 'biom convert --to-hdf5')") from None


def _biom_from_bytes(path: str, data: bytes):
    import io

    import biom
    from biom.parse import parse_biom_table

    try:
        if data[:8] == HDF5_MAGIC:
            import h5py

            with h5py.File(io.BytesIO(data), "r") as f:
                return biom.Table.from_hdf5(f)
        return parse_biom_table(io.StringIO(data.decode("utf-8")))
    except Exception as exc:  # biom raises many kinds for corrupt tables
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{path}: the BIOM table inside the archive cannot be read: {first}") from None


HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def _is_hdf5(p: Path) -> bool:
    try:
        with open(p, "rb") as f:
            return f.read(8) == HDF5_MAGIC
    except OSError:
        return False


# The id headers QIIME 2 accepts in a metadata file's first column (its "Metadata in QIIME 2"
# rules): these case-insensitively, and the #-headers below exactly (a #-line is a comment else).
Q2_ID_HEADERS = {"id", "sampleid", "sample id", "sample-id", "featureid", "feature id", "feature-id"}
Q2_HASH_ID_HEADERS = {"#SampleID", "#Sample ID", "#OTUID", "#OTU ID", "sample_name"}
Q2_TYPES = "#q2:types"


def _is_q2_id_header(cell: str) -> bool:
    return cell.strip().lower() in Q2_ID_HEADERS or cell.strip() in Q2_HASH_ID_HEADERS


def read_metadata(path: str, id_column: str):
    """A tab-separated metadata file, every value a string, indexed by sample id. QIIME 2 metadata
    files read as QIIME 2 reads them: comment lines (#...) and empty lines skipped, an id header
    such as sample-id or #SampleID in the first column used when id_column is not a column, and a
    #q2:types row (categorical / numeric per column) kept in df.attrs["q2_types"], not as a sample."""
    import io

    import pandas as pd

    p = Path(path)
    if not p.exists():
        raise DataError(f"{path}: metadata file not found (check spec.metadata.path)")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read metadata as UTF-8 text: {exc}") from None
    lines, types_row = _q2_lines(text)
    try:
        df = pd.read_csv(io.StringIO("\n".join(lines)), sep="\t", dtype=str, keep_default_na=False, comment=None)
    except Exception as exc:
        raise DataError(f"{path}: cannot read metadata as tab-separated text: {exc}") from None
    df.columns = [str(c).strip() for c in df.columns]
    if id_column not in df.columns and len(df.columns) and _is_q2_id_header(df.columns[0]):
        id_column = df.columns[0]  # a QIIME 2 metadata file: its first column holds the ids
    if id_column not in df.columns:
        cols = ", ".join(list(df.columns)[:8])
        raise DataError(f"{path}: no column '{id_column}' (columns: {cols}); "
                        "set spec.metadata.sampleIdColumn to the column holding the sample ids")
    df = df.apply(lambda col: col.str.strip())
    ids = df[id_column]
    dup = ids[ids.duplicated()]
    if len(dup):
        raise DataError(f"{path}: sample id '{dup.iloc[0]}' appears {int((ids == dup.iloc[0]).sum())} times "
                        f"in column '{id_column}' ({len(dup)} duplicates in all); each sample needs one row")
    out = df.set_index(id_column)
    out.attrs["q2_types"] = _q2_types(path, types_row, list(df.columns), id_column)
    return out


def _q2_lines(text: str) -> tuple[list[str], list[str] | None]:
    """The header and data lines of a metadata file, and the cells of its #q2:types row (None
    when it has none). Before the header, empty and # lines are skipped (a #SampleID-style id
    header is the header); after it, empty lines and # comments are."""
    lines = text.splitlines()
    out: list[str] = []
    types_row = None
    for line in lines:
        first = line.split("\t", 1)[0].strip()
        if not out:
            if not line.strip() or (first.startswith("#") and first not in Q2_HASH_ID_HEADERS):
                continue
            out.append(line)
        elif first.lower() == Q2_TYPES and types_row is None and len(out) == 1:
            types_row = line.split("\t")
        elif not line.strip() or first.startswith("#"):
            continue
        else:
            out.append(line)
    return out, types_row


def _q2_types(path: str, types_row: list[str] | None, columns: list[str], id_column: str) -> dict[str, str]:
    if types_row is None:
        return {}
    types = {}
    for col, value in zip(columns, types_row):
        v = value.strip().lower()
        if col == id_column or not v:
            continue
        if v not in ("categorical", "numeric"):
            raise DataError(f"{path}: #q2:types says '{value.strip()}' for column '{col}'; QIIME 2 knows "
                            "categorical and numeric")
        types[col] = v
    return types


_IUPAC_LUT = np.zeros(256, dtype=bool)
_IUPAC_LUT[np.frombuffer("".join(sorted(IUPAC)).encode(), dtype=np.uint8)] = True
_ACGT_LUT = np.zeros(256, dtype=bool)
_ACGT_LUT[np.frombuffer(b"ACGTacgt", dtype=np.uint8)] = True


def _letters(asv_ids) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """All ids' bytes joined, where each id starts and its length; None when an id is not ASCII."""
    try:
        joined = "".join(asv_ids).encode("ascii")
    except UnicodeEncodeError:
        return None
    lengths = np.fromiter((len(a) for a in asv_ids), dtype=np.int64, count=len(asv_ids))
    starts = np.zeros(len(asv_ids), dtype=np.int64)
    starts[1:] = np.cumsum(lengths)[:-1]
    return np.frombuffer(joined, dtype=np.uint8), starts, lengths


def _per_id_any(flags: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Per id: whether any of its letters is flagged (vectorised: one pass over all letters)."""
    if not len(flags):
        return np.zeros(len(starts), dtype=bool)
    counts = np.add.reduceat(flags.astype(np.int64), np.minimum(starts, len(flags) - 1))
    return (counts > 0) & (lengths > 0)


def non_acgt(asv_ids, letters=None) -> np.ndarray:
    """Per ASV: whether its sequence holds a letter other than A, C, G, T (either case).
    letters: what _letters(asv_ids) returned, when the caller has it already."""
    got = letters or _letters(asv_ids)
    if got is None:
        return np.array([bool(set(a.upper()) - set("ACGT")) for a in asv_ids], dtype=bool)
    joined, starts, lengths = got
    return _per_id_any(~_ACGT_LUT[joined], starts, lengths)


def check_sequences(asv_ids, table_path: str, policy: str = "pad") -> dict:
    """ASV ids must be nucleotide sequences; returns counts of non-ACGT letters. Vectorised over
    all ids' letters at once (a 200,000-ASV table takes well under a second)."""
    got = _letters(asv_ids)
    if got is None or (got[2] == 0).any() or _per_id_any(~_IUPAC_LUT[got[0]], got[1], got[2]).any():
        for asv in asv_ids:  # the first offender, for the message (a non-ASCII id is always one)
            if not asv or any(ch not in IUPAC for ch in asv):
                shown = asv if len(asv) <= 40 else asv[:37] + "..."
                raise DataError(f"{table_path}: observation id '{shown}' is not a nucleotide sequence; AAM reads the "
                                "ASV sequences themselves, so the table's observation ids must be the sequences "
                                "(e.g. deblur or DADA2 output without hashing)")
    odd = non_acgt(asv_ids, got)
    bad_ids = int(odd.sum())
    if bad_ids and policy == "error":
        first = asv_ids[int(np.flatnonzero(odd)[0])]
        raise DataError(f"{table_path}: {bad_ids} ASV sequences hold letters other than A, C, G, T "
                        f"(first: '{first[:40]}'); set spec.nonACGT to pad or drop to accept them")
    return {"asvs_with_non_acgt": bad_ids}


def tokenize(asv_ids: list[str], max_bp: int) -> tuple[np.ndarray, int]:
    """Sequences -> int8 [n, max_bp + 1] (START + bases, padded); also the number of non-ACGT bases."""
    n = len(asv_ids)
    out = np.zeros((n, max_bp + 1), dtype=np.int8)
    out[:, 0] = START
    if n == 0:
        return out, 0
    lengths = np.fromiter((min(len(s), max_bp) for s in asv_ids), dtype=np.int64, count=n)
    joined = "".join(s[:max_bp].ljust(max_bp, "\0") for s in asv_ids).encode("ascii", "replace")
    raw = np.frombuffer(joined, dtype=np.uint8).reshape(n, max_bp)
    tok = _LUT[raw]
    within = np.arange(max_bp)[None, :] < lengths[:, None]
    non_acgt = int(((tok == 0) & within).sum())
    out[:, 1:] = tok
    return out, non_acgt


def rarefy(counts, depth: int, seed: int):
    """Subsample each row (sample) of a CSR count matrix to depth reads without replacement."""
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    counts = counts.tocsr()
    rows, cols, vals = [], [], []
    keep = []
    for i in range(counts.shape[0]):
        start, end = counts.indptr[i], counts.indptr[i + 1]
        idx = counts.indices[start:end]
        c = counts.data[start:end].astype(np.int64)
        total = int(c.sum())
        if total < depth:
            continue
        drawn = rng.multivariate_hypergeometric(c, depth) if total != depth else c
        nz = drawn > 0
        r = len(keep)
        keep.append(i)
        rows.append(np.full(int(nz.sum()), r))
        cols.append(idx[nz])
        vals.append(drawn[nz].astype(np.float64))
    if not keep:
        return sp.csr_matrix((0, counts.shape[1])), keep
    m = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                      shape=(len(keep), counts.shape[1]))
    return m, keep


def input_categoricals(spec: dict) -> list[str]:
    """The Dataset's categorical columns that are inputs: a column listed because it is a declared
    (classification) target is only needed where that target is."""
    declared = {t["name"] for t in spec["targets"]}
    return [c for c in spec["categoricalColumns"] if c not in declared]


def load(spec: dict, *, need_targets: list[str] | None = None, seed: int = 0, table=None,
         metadata=None) -> Prepared:
    """Read and prepare a Dataset spec (resolved: absolute paths, defaults filled). table and
    metadata, when given, are what read_biom and read_metadata returned for it (preflight has
    read them already). Every step says in the report what it dropped."""
    report: dict = {}
    counts, sample_ids, asv_ids = _read_table(spec, table, report)
    counts, sample_ids, meta = _align_metadata(spec, counts, sample_ids, metadata, report)
    counts, sample_ids = _usable_targets(spec, meta, counts, sample_ids, need_targets or [], report)
    counts, sample_ids = _thin_samples(spec, counts, sample_ids, seed, report)
    counts, asv_ids = _clean_asvs(spec, counts, asv_ids, report)
    report["samples_used"] = len(sample_ids)
    report["asvs_used"] = len(asv_ids)
    meta = meta.loc[sample_ids]
    return Prepared(sample_ids=sample_ids, asv_ids=asv_ids, counts=counts, metadata=meta, report=report)


def _read_table(spec: dict, table, report: dict):
    """The BIOM table as samples x ASVs counts, its sample and ASV ids (checked)."""
    table = read_biom(spec["table"]) if table is None else table
    if table.shape[0] == 0 or table.shape[1] == 0:
        raise DataError(f"{spec['table']}: the table is empty ({table.shape[1]} samples x {table.shape[0]} ASVs)")
    sample_ids = [str(s) for s in table.ids(axis="sample")]
    asv_ids = [str(a) for a in table.ids(axis="observation")]
    if len(set(sample_ids)) != len(sample_ids):
        seen, dup = set(), None
        for s in sample_ids:
            if s in seen:
                dup = s
                break
            seen.add(s)
        raise DataError(f"{spec['table']}: sample id '{dup}' appears more than once in the table")
    report.update(check_sequences(asv_ids, spec["table"], spec["nonACGT"]))
    counts = table.matrix_data.T.tocsr().astype(np.float64)  # samples x ASVs
    if counts.nnz and (counts.data < 0).any():
        raise DataError(f"{spec['table']}: the table holds negative counts; AAM needs read counts")
    report["samples_in_table"] = len(sample_ids)
    report["asvs_in_table"] = len(asv_ids)
    return counts, sample_ids, asv_ids


def _align_metadata(spec: dict, counts, sample_ids: list[str], metadata, report: dict):
    """The samples that are in both the table and the metadata, and the metadata."""
    import pandas as pd

    meta_spec = spec.get("metadata")
    if meta_spec:
        meta = read_metadata(meta_spec["path"], meta_spec["sampleIdColumn"]) \
            if metadata is None else metadata
    else:
        meta = pd.DataFrame(index=pd.Index(sample_ids, name="sample_id"))
    in_both = [i for i, s in enumerate(sample_ids) if s in meta.index]
    report["dropped_not_in_metadata"] = len(sample_ids) - len(in_both)
    report["metadata_rows_not_in_table"] = int(len(meta.index) - len(in_both))
    if not in_both:
        raise DataError(f"no sample id of {spec['table']} appears in {meta_spec['path']} "
                        f"(table ids look like '{sample_ids[0]}', metadata ids like "
                        f"'{meta.index[0] if len(meta.index) else '(none)'}'); check spec.metadata.sampleIdColumn")
    return counts[in_both], [sample_ids[i] for i in in_both], meta


def _usable_targets(spec: dict, meta, counts, sample_ids: list[str], need_targets: list[str], report: dict):
    """Needed targets and input categorical columns must exist; rows with missing or non-numeric
    target values are dropped."""
    import pandas as pd

    meta_spec = spec.get("metadata")
    for col in list(need_targets) + input_categoricals(spec):
        if col not in meta.columns:
            raise DataError(f"{meta_spec['path'] if meta_spec else 'metadata'}: no column '{col}' "
                            f"(columns: {', '.join(list(meta.columns)[:8])})")
    target_types = {t["name"]: t["type"] for t in spec["targets"]}
    declared = meta.attrs.get("q2_types") or {}
    for col in need_targets:
        if target_types.get(col) == "regression" and declared.get(col) == "categorical":
            raise DataError(f"{meta_spec['path']}: regression target '{col}' is declared categorical in its #q2:types "
                            "row; declare it numeric there, or make the target classification")
    keep = np.ones(len(sample_ids), dtype=bool)
    for col in need_targets:
        values = meta.loc[sample_ids, col]
        missing = values.str.strip().isin(MISSING_VALUES).to_numpy()
        if target_types.get(col) == "regression":
            numeric = pd.to_numeric(values, errors="coerce")
            bad = numeric.isna().to_numpy() | ~np.isfinite(numeric.fillna(0).to_numpy())
            report[f"dropped_target_{col}_unusable"] = int((bad & keep).sum())
            keep &= ~bad
        else:
            report[f"dropped_target_{col}_missing"] = int((missing & keep).sum())
            keep &= ~missing
    if not keep.any():
        raise DataError(f"no sample has a usable value for target(s) {', '.join(need_targets)} "
                        "(all missing or not numeric)")
    return counts[keep], [s for s, k in zip(sample_ids, keep) if k]


def _thin_samples(spec: dict, counts, sample_ids: list[str], seed: int, report: dict):
    """spec.subsample, rarefaction to spec.rarefyDepth, and samples left with no reads."""
    sub = spec.get("subsample")
    if sub and sub["samples"] < len(sample_ids):
        rng = np.random.default_rng(sub["seed"])
        chosen = np.sort(rng.choice(len(sample_ids), size=sub["samples"], replace=False))
        counts = counts[chosen]
        sample_ids = [sample_ids[i] for i in chosen]
        report["subsampled_to"] = int(sub["samples"])
    depth = spec["rarefyDepth"]
    if depth:
        before = len(sample_ids)
        counts, kept = rarefy(counts, int(depth), seed)
        sample_ids = [sample_ids[i] for i in kept]
        report["dropped_below_rarefaction_depth"] = before - len(sample_ids)
    empty = np.asarray(counts.sum(axis=1)).ravel() <= 0
    if empty.any():
        report["dropped_empty"] = int(empty.sum())
        counts = counts[~empty]
        sample_ids = [s for s, e in zip(sample_ids, empty) if not e]
    if not sample_ids:
        raise DataError(f"{spec['table']}: no sample is left after rarefaction to {depth} reads "
                        "(lower spec.rarefyDepth)")
    return counts, sample_ids


def _clean_asvs(spec: dict, counts, asv_ids: list[str], report: dict):
    """ASVs with other letters than ACGT (nonACGT: drop), and ASVs present in no remaining sample
    (they carry nothing); the counts as sorted CSR."""
    if spec["nonACGT"] == "drop":
        good = ~non_acgt(asv_ids)
        report["dropped_asvs_non_acgt"] = int((~good).sum())
        counts = counts[:, np.flatnonzero(good)]
        asv_ids = [a for a, g in zip(asv_ids, good) if g]
    present = np.asarray((counts > 0).sum(axis=0)).ravel() > 0
    if not present.all():
        counts = counts[:, np.flatnonzero(present)]
        asv_ids = [a for a, p in zip(asv_ids, present) if p]
    counts = counts.tocsr()
    counts.sort_indices()
    return counts, asv_ids


def select_asvs(counts, limit: int, how: str, rng: np.random.Generator | None = None):
    """Per sample, the column indices (and counts) of at most `limit` ASVs.

    abundance: top counts, ties broken by table order (stable); first: table order;
    random: a fresh random subset (for the 'random' augmentation, call per epoch).
    """
    out_idx, out_cnt = [], []
    indptr, indices, data = counts.indptr, counts.indices, counts.data
    for i in range(counts.shape[0]):
        idx = indices[indptr[i]:indptr[i + 1]]
        cnt = data[indptr[i]:indptr[i + 1]]
        if len(idx) > limit:
            if how == "abundance":
                order = np.argsort(-cnt, kind="stable")[:limit]
                order.sort()
            elif how == "random":
                order = np.sort((rng or np.random.default_rng(0)).choice(len(idx), size=limit, replace=False))
            else:
                order = np.arange(limit)
            idx, cnt = idx[order], cnt[order]
        out_idx.append(idx.astype(np.int64))
        out_cnt.append(cnt.astype(np.float32))
    return out_idx, out_cnt


def asv_cut_summary(counts, limit: int, how: str) -> dict | None:
    """How maxAsvsPerSample cuts the samples: None when no sample holds more ASVs than `limit`;
    else the number cut, the largest, and (abundance selection) the share of their reads left out."""
    nnz = np.diff(counts.indptr)
    cut = np.flatnonzero(nnz > limit)
    if not len(cut):
        return None
    out = {"samples_cut": int(len(cut)), "samples": int(counts.shape[0]), "limit": int(limit),
           "largest": int(nnz.max()), "median_cut": int(np.median(nnz[cut])), "reads_dropped_fraction": None,
           "asvs_dropped_fraction": float((nnz[cut] - limit).sum() / nnz[cut].sum())}
    if how == "abundance":
        total = dropped = 0.0
        for i in cut:
            row = counts.data[counts.indptr[i]:counts.indptr[i + 1]]
            total += row.sum()
            dropped += np.partition(row, len(row) - limit)[:len(row) - limit].sum()
        out["reads_dropped_fraction"] = float(dropped / total) if total else 0.0
    return out


def describe_cut(cut: dict, how: str) -> str:
    """asv_cut_summary as one sentence."""
    kept = {"abundance": "most abundant", "first": "first (table order)", "random": "randomly drawn (each epoch)"}[how]
    text = (f"{cut['samples_cut']} of {cut['samples']} samples hold more ASVs than maxAsvsPerSample ({cut['limit']}) "
            f"and keep only their {cut['limit']} {kept} (largest sample: {cut['largest']} ASVs, median of those cut: "
            f"{cut['median_cut']}; {cut['asvs_dropped_fraction']:.0%} of their ASVs")
    if cut["reads_dropped_fraction"] is not None:
        text += f" and {cut['reads_dropped_fraction']:.1%} of their reads"
    return text + " left out)"


def file_digest(path: str | None, chunk: int = 1 << 20) -> str | None:
    """sha256 of a file's bytes (None when there is no file)."""
    if not path or not Path(path).is_file():
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return "sha256:" + h.hexdigest()
