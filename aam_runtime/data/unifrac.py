"""UniFrac distance matrices: fastest backend available, cached on disk, sliced per batch.

Backends, in the order `auto` tries them: the `unifrac` Python package, the Striped UniFrac
command `ssu` (Debian unifrac-tools, conda unifrac-binaries), scikit-bio (hundreds of times
slower; warns). All agree to ~1e-6. Torch-free.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import numpy as np

from aam_runtime.data.table import DataError

log = logging.getLogger("aam.unifrac")


def cache_dir() -> Path:
    base = os.environ.get("AAM_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "aam")
    return Path(base) / "unifrac"


def available_backends() -> list[str]:
    out = []
    try:
        import unifrac  # noqa: F401
        out.append("unifrac")
    except Exception:
        pass
    if shutil.which("ssu"):
        out.append("ssu")
    try:
        import skbio  # noqa: F401
        out.append("skbio")
    except Exception:
        pass
    return out


def pick_backend(requested: str = "auto") -> str:
    have = available_backends()
    if requested != "auto":
        if requested not in have:
            raise DataError(f"UniFrac backend '{requested}' is not available here (available: {', '.join(have) or 'none'}); "
                            "install it or set spec.unifrac.backend: auto")
        return requested
    for b in ("unifrac", "ssu", "skbio"):
        if b in have:
            if b == "skbio":
                warnings.warn("UniFrac falls back to scikit-bio, hundreds of times slower than Striped UniFrac; "
                              "install 'unifrac-tools' (Debian) or 'unifrac-binaries' (conda) for ssu", stacklevel=2)
            return b
    raise DataError("no UniFrac backend: install the unifrac Python package, the ssu command or scikit-bio")


def table_digest(sample_ids, asv_ids, counts) -> str:
    h = hashlib.sha256()
    h.update("\n".join(sample_ids).encode())
    h.update(b"\0")
    h.update("\n".join(asv_ids).encode())
    c = counts.tocsr()
    for arr in (c.indptr, c.indices, c.data):
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def _write_biom(path: Path, sample_ids, asv_ids, counts) -> None:
    import biom
    import h5py

    t = biom.Table(counts.T.tocsr(), observation_ids=list(asv_ids), sample_ids=list(sample_ids))
    with h5py.File(path, "w") as f:
        t.to_hdf5(f, "aam")


def matrix_bytes(n_samples: int) -> int:
    """Bytes of the cached fp32 matrix of n samples (what the cache and ssu's output each take)."""
    return 4 * int(n_samples) ** 2


def h5_to_npy(h5_path: Path, sample_ids, out: Path, block_bytes: int = 64 << 20) -> None:
    """ssu's HDF5 output -> an fp32 .npy in sample_ids order, a block of rows at a time: memory
    stays at block_bytes whatever the matrix size (a 100,000-sample matrix is 40 GB)."""
    import h5py

    with h5py.File(h5_path, "r") as f:
        order = [x.decode() if isinstance(x, bytes) else str(x) for x in f["order"][:]]
        mat = f["matrix"]
        n = len(sample_ids)
        if mat.shape != (n, n) or len(order) != n:
            raise DataError(f"{h5_path}: ssu wrote a {mat.shape} matrix for {n} samples")
        pos = {s: i for i, s in enumerate(order)}
        try:
            src = np.array([pos[s] for s in sample_ids], dtype=np.int64)
        except KeyError as exc:
            raise DataError(f"{h5_path}: sample {exc} is missing from ssu's output") from None
        same = bool(np.array_equal(src, np.arange(n)))
        dst = np.lib.format.open_memmap(out, mode="w+", dtype=np.float32, shape=(n, n))
        step = max(1, block_bytes // max(1, 4 * n))
        for a in range(0, n, step):
            rows = src[a:a + step]
            if same:
                block = mat[a:a + len(rows)]
            else:  # h5py reads increasing row indices only
                order_rows = np.argsort(rows)
                block = np.empty((len(rows), n), dtype=mat.dtype)
                block[order_rows] = mat[rows[order_rows]]
                block = block[:, src]
            dst[a:a + len(rows)] = block
        dst.flush()
        del dst


def ssu_command(table: Path, tree: str, metric: str, out: Path, *extra: str) -> list[str]:
    """ssu's command line for one computation (fp32: the cache keeps fp32; hdf5, no PCoA)."""
    return ["ssu", "-i", str(table), "-t", str(tree), "-m", f"{metric}_fp32", "-o", str(out),
            "--format", "hdf5_fp32", "--pcoa", "0", *extra]


def run_ssu(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        msg = (proc.stderr or proc.stdout).strip().splitlines()
        raise DataError(f"ssu failed {what}: {msg[-1] if msg else proc.returncode}")


def _ssu(sample_ids, asv_ids, counts, tree: str, metric: str, work: Path | None = None,
         out: Path | None = None) -> np.ndarray | None:
    """With `out`, the matrix goes straight to that .npy (streamed, fp32) and None is returned;
    ssu's own output lands in `work` (a folder on the cache's file system: /tmp on a compute node
    is often too small for it)."""
    with tempfile.TemporaryDirectory(prefix="aam-ssu-", dir=work) as tmp:
        tpath = Path(tmp) / "table.biom"
        h5 = Path(tmp) / "dm.h5"
        _write_biom(tpath, sample_ids, asv_ids, counts)
        run_ssu(ssu_command(tpath, tree, metric, h5), f"computing {metric} UniFrac")
        target = out if out is not None else Path(tmp) / "dm.npy"
        h5_to_npy(h5, sample_ids, target)
        if out is not None:
            return None
        return np.load(target).astype(np.float64)


def _unifrac_pkg(sample_ids, asv_ids, counts, tree: str, metric: str) -> np.ndarray:
    import unifrac

    with tempfile.TemporaryDirectory(prefix="aam-unifrac-") as tmp:
        tpath = Path(tmp) / "table.biom"
        _write_biom(tpath, sample_ids, asv_ids, counts)
        fn = unifrac.unweighted if metric == "unweighted" else unifrac.weighted_normalized
        dm = fn(str(tpath), tree)
    order = list(dm.ids)
    pos = {s: i for i, s in enumerate(order)}
    idx = np.array([pos[s] for s in sample_ids])
    return np.ascontiguousarray(dm.data[np.ix_(idx, idx)], dtype=np.float64)


def _skbio(sample_ids, asv_ids, counts, tree: str, metric: str) -> np.ndarray:
    from skbio import TreeNode
    from skbio.diversity import beta_diversity

    t = TreeNode.read(tree)
    name = "unweighted_unifrac" if metric == "unweighted" else "weighted_unifrac"
    kw = {"normalized": True} if metric == "weighted_normalized" else {}
    dense = counts.toarray().astype(np.int64)
    dm = beta_diversity(name, dense, ids=list(sample_ids), taxa=list(asv_ids), tree=t, validate=False, **kw)
    return np.ascontiguousarray(dm.data, dtype=np.float64)


BACKENDS = {"ssu": _ssu, "unifrac": _unifrac_pkg, "skbio": _skbio}


_TIP = re.compile(r"[(,]\s*([^\s(),:;]+)")  # a tip: a label right after "(" or ","


def _scan_tips(text: str) -> set[str] | None:
    """Tip names of Newick text by one regular-expression pass (a 200,000-tip tree in about a
    second, where a full parse takes 15); None when the text has anything this scanner does not
    read exactly like scikit-bio (quotes, comments, unbalanced brackets): the caller parses it."""
    if "'" in text or "[" in text or '"' in text:
        return None
    body = text.strip()
    if not body.startswith("(") or not body.endswith(";") or body.count("(") != body.count(")") or body.count(";") != 1:
        return None
    names = _TIP.findall(body)
    return {n.replace("_", " ") for n in names}


def tree_tips(tree: str) -> set[str]:
    """Tip names of a Newick file (a fast scan; scikit-bio's parser for anything unusual, and for
    its messages on a broken file). scikit-bio is imported only then: its import alone is a second."""
    from aam_runtime.data import qiime

    try:
        if qiime.is_archive(tree):  # a QIIME 2 Phylogeny[Rooted]: the Newick inside
            text = qiime.read_payload(qiime.open_artifact(tree, qiime.TREE, "spec.tree")).decode("utf-8")
        else:
            text = Path(tree).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{tree}: cannot read Newick tree: {exc}") from None
    fast = _scan_tips(text)
    if fast is not None:
        return fast
    import io

    from skbio import TreeNode

    try:
        t = TreeNode.read(io.StringIO(text))
    except Exception as exc:
        raise DataError(f"{tree}: cannot read Newick tree: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    return {n.name for n in t.tips()}


def cache_key(sample_ids, asv_ids, counts, tree: str, metric: str) -> str:
    """The cache's name for a matrix: the prepared table's content, the tree file's bytes, the metric."""
    from aam_runtime.data.table import file_digest

    key_src = json.dumps({"table": table_digest(sample_ids, asv_ids, counts), "tree": file_digest(tree_path(tree)),
                          "metric": metric})
    return hashlib.sha256(key_src.encode()).hexdigest()[:24]


def tree_path(tree: str) -> str:
    """A Newick file for the UniFrac tools: the tree itself, or the one inside a QIIME 2 archive,
    copied once into the cache folder (the same bytes as the plain file: the same cache key)."""
    from aam_runtime.data import qiime

    if not qiime.is_archive(tree):
        return tree
    return str(qiime.payload_file(qiime.open_artifact(tree, qiime.TREE, "spec.tree"), cache_dir().parent / "qiime2"))


def cached(key: str) -> Path | None:
    """The cached matrix of a key, when it is complete (the ids file lands last)."""
    path = cache_dir() / f"{key}.npy"
    if not (path.exists() and Path(str(path) + ".ids.txt").exists()):
        return None
    from aam_runtime.scratch import local_copy

    return local_copy(path)  # the node-local copy when the job staged its data (HardwareProfile.scratch)


def publish(key: str, npy: Path, sample_ids) -> Path:
    """Move a finished matrix (a file in the cache folder) into place, then its ids: a reader sees
    the matrix only when both are there."""
    path = cache_dir() / f"{key}.npy"
    ids_tmp = cache_dir() / f".{key}.{os.getpid()}.ids"
    ids_tmp.write_text("\n".join(sample_ids) + "\n")
    os.replace(npy, path)
    os.replace(ids_tmp, str(path) + ".ids.txt")
    return path


def compute(sample_ids, asv_ids, counts, tree: str, metric: str = "unweighted", backend: str = "auto",
            use_cache: bool = True) -> Path:
    """Distance matrix of the prepared table, cached as fp32 .npy (read memory-mapped, a batch's
    block at a time); returns its path (ids beside it). Memory: ssu's matrix is streamed to the
    cache in blocks; the other backends hold it whole."""
    key = cache_key(sample_ids, asv_ids, counts, tree, metric)
    if use_cache and cached(key):
        log.info("UniFrac: cached matrix %s", cached(key))
        return cached(key)
    name = pick_backend(backend)
    tree = tree_path(tree)
    log.info("UniFrac: computing %s for %d samples with %s", metric, len(sample_ids), name)
    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{key}.{os.getpid()}.npy"
    try:
        if name == "ssu":
            _ssu(sample_ids, asv_ids, counts, tree, metric, work=folder, out=tmp)
        else:
            mat = BACKENDS[name](sample_ids, asv_ids, counts, tree, metric)
            np.save(tmp, np.asarray(mat, dtype=np.float32))
            del mat
        return publish(key, tmp, sample_ids)
    finally:
        tmp.unlink(missing_ok=True)


def read_ids_for(path: Path) -> list[str] | None:
    p = Path(str(path) + ".ids.txt")
    if not p.exists():
        p = path.with_suffix(".ids.txt")
    if not p.exists():
        return None
    return [line.strip() for line in p.read_text().splitlines() if line.strip()]


class DistanceLookup:
    """B x B target sub-matrices from a matrix on disk, without loading it whole."""

    def __init__(self, path: str | Path, sample_ids: list[str]):
        from aam_runtime.data import qiime

        if qiime.is_archive(path):  # a QIIME 2 DistanceMatrix: its TSV, copied once into the cache folder
            art = qiime.open_artifact(str(path), qiime.DISTANCES, "spec.distanceMatrix")
            path = qiime.payload_file(art, cache_dir().parent / "qiime2")
        self.path = Path(path)
        if not self.path.exists():
            raise DataError(f"{path}: distance matrix not found (check spec.distanceMatrix)")
        self._h5 = None
        suffix = self.path.suffix.lower()
        if suffix == ".npy":
            self._mat = np.load(self.path, mmap_mode="r")
            ids = read_ids_for(self.path)
            if ids is None:
                raise DataError(f"{path}: a .npy matrix needs its sample ids in {path}.ids.txt (one per line)")
        elif suffix in (".h5", ".hdf5"):
            import h5py
            try:
                self._h5 = h5py.File(self.path, "r")
                self._mat = self._h5["matrix"]
                ids = [x.decode() if isinstance(x, bytes) else str(x) for x in self._h5["order"][:]]
            except (OSError, KeyError) as exc:
                raise DataError(f"{path}: not a distance matrix in ssu's HDF5 format ({exc})") from None
        else:
            ids, self._mat = _read_text_matrix(self.path)
        n = self._mat.shape[0]
        if self._mat.ndim != 2 or self._mat.shape[1] != n or len(ids) != n:
            raise DataError(f"{path}: the matrix is {self._mat.shape}, with {len(ids)} ids; it must be square "
                            "with one id per row")
        pos = {s: i for i, s in enumerate(ids)}
        missing = [s for s in sample_ids if s not in pos]
        if missing:
            raise DataError(f"{path}: {len(missing)} samples of the table are not in the distance matrix "
                            f"(first: '{missing[0]}'); recompute the matrix for this table")
        self.index = np.array([pos[s] for s in sample_ids], dtype=np.int64)

    def sub(self, rows: np.ndarray) -> np.ndarray:
        """Distances among the given dataset rows, as float32 [B, B]."""
        idx = self.index[np.asarray(rows)]
        if self._h5 is not None:
            order = np.argsort(idx)
            uniq, inv = np.unique(idx[order], return_inverse=True)
            block = self._mat[uniq, :][:, uniq]  # h5py wants increasing indices
            full = block[np.ix_(inv, inv)]
            back = np.empty_like(order)
            back[order] = np.arange(len(order))
            return np.asarray(full[np.ix_(back, back)], dtype=np.float32)
        return np.asarray(self._mat[np.ix_(idx, idx)], dtype=np.float32)

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Distances from samples start..stop (of sample_ids) to every sample, float32 [stop-start, n]."""
        r = self.index[start:stop]
        if self._h5 is not None:
            order = np.argsort(r)
            block = self._mat[r[order], :]  # h5py wants increasing indices; the rows of one matrix are distinct
            block = np.asarray(block)[np.argsort(order)]
        else:
            block = np.asarray(self._mat[r, :])
        return np.asarray(block[:, self.index], dtype=np.float32)

    def prefetch(self, rows: np.ndarray) -> None:
        """Have the pages of a coming batch's B x B block read now, in a background thread
        (madvise WILLNEED), so that sub() finds them in memory: a cold block is B² random reads
        (33 ms for B = 8 on this machine's disk), which the training step before it hides. Only
        for the memory-mapped .npy; a no-op otherwise."""
        mm = getattr(self._mat, "_mmap", None)
        if mm is None or not hasattr(mm, "madvise"):
            return
        import threading

        threading.Thread(target=self._willneed, args=(mm, np.asarray(rows)), daemon=True).start()

    def _willneed(self, mm, rows: np.ndarray) -> None:
        import mmap

        idx = np.unique(self.index[rows])
        n = self._mat.shape[0]
        offset = int(getattr(self._mat, "offset", 0))
        base = offset - offset % mmap.ALLOCATIONGRANULARITY  # where numpy's mapping starts in the file
        page = mmap.PAGESIZE
        cells = offset - base + (idx[:, None] * n + idx[None, :]).ravel() * self._mat.itemsize
        for off in np.unique(cells // page) * page:
            try:
                mm.madvise(mmap.MADV_WILLNEED, int(off), page)
            except (OSError, ValueError):  # a closed map (the run ended), or an old kernel
                return

    def close(self):
        if self._h5 is not None:
            self._h5.close()


def _read_text_matrix(path: Path):
    try:
        from skbio import DistanceMatrix
        dm = DistanceMatrix.read(str(path))
        return list(dm.ids), dm.data
    except Exception as exc:
        raise DataError(f"{path}: cannot read distance matrix (expected .npy + .ids.txt, ssu .h5, or scikit-bio "
                        f"DistanceMatrix text): {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None


# the stripes folder aamctl writes for a partial-stripe computation (aamctl/stripes.py) and the
# merge job's publish step reads: its file names, in one place
STRIPES_TABLE, STRIPES_IDS, STRIPES_PLAN, STRIPES_MERGED = "table.biom", "ids.txt", "plan.json", "dm.h5"
STRIPES_PARTIALS = "partial.[0-9]*"  # ssu's partial outputs (glob)


def publish_partials(work: Path) -> Path:
    """The merge job's last step: ssu's merged HDF5 in `work` (a stripes folder written by aamctl)
    -> the cache's fp32 .npy under the key aamctl computed; the partial outputs are removed."""
    work = Path(work)
    try:
        plan = json.loads((work / STRIPES_PLAN).read_text())
        ids = [line for line in (work / STRIPES_IDS).read_text().splitlines() if line]
    except (OSError, ValueError) as exc:
        raise DataError(f"{work}: not a UniFrac stripes folder written by aamctl ({exc})") from None
    if not (work / STRIPES_MERGED).exists():
        raise DataError(f"{work / STRIPES_MERGED}: ssu's merged matrix is missing (see {work}/merge.log)")
    tmp = cache_dir() / f".{plan['key']}.{os.getpid()}.npy"
    try:
        h5_to_npy(work / STRIPES_MERGED, ids, tmp)
        path = publish(plan["key"], tmp, ids)
    finally:
        tmp.unlink(missing_ok=True)
    for p in list(work.glob(STRIPES_PARTIALS)) + [work / STRIPES_MERGED, work / STRIPES_TABLE]:
        p.unlink(missing_ok=True)
    return path


def main(argv=None) -> int:
    """python -m aam_runtime.data.unifrac publish WORK (the stripes merge job runs it)."""
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2 or args[0] != "publish":
        print("usage: python -m aam_runtime.data.unifrac publish STRIPES_FOLDER", file=sys.stderr)
        return 2
    try:
        print(f"published {publish_partials(Path(args[1]))}")
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
