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
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import numpy as np

from .table import DataError

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


def _ssu(sample_ids, asv_ids, counts, tree: str, metric: str) -> np.ndarray:
    import h5py

    with tempfile.TemporaryDirectory(prefix="aam-ssu-") as tmp:
        tpath = Path(tmp) / "table.biom"
        out = Path(tmp) / "dm.h5"
        _write_biom(tpath, sample_ids, asv_ids, counts)
        cmd = ["ssu", "-i", str(tpath), "-t", tree, "-m", f"{metric}_fp64", "-o", str(out),
               "--format", "hdf5_fp64", "--pcoa", "0"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            msg = (proc.stderr or proc.stdout).strip().splitlines()
            raise DataError(f"ssu failed computing {metric} UniFrac: {msg[-1] if msg else proc.returncode}")
        with h5py.File(out, "r") as f:
            order = [x.decode() if isinstance(x, bytes) else str(x) for x in f["order"][:]]
            mat = f["matrix"][:]
    pos = {s: i for i, s in enumerate(order)}
    idx = np.array([pos[s] for s in sample_ids])
    return np.ascontiguousarray(mat[np.ix_(idx, idx)], dtype=np.float64)


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


def tree_tips(tree: str) -> set[str]:
    """Tip names of a Newick file (cheap: scikit-bio parse)."""
    from skbio import TreeNode

    try:
        t = TreeNode.read(tree)
    except Exception as exc:
        raise DataError(f"{tree}: cannot read Newick tree: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    return {n.name for n in t.tips()}


def compute(sample_ids, asv_ids, counts, tree: str, metric: str = "unweighted", backend: str = "auto",
            use_cache: bool = True) -> Path:
    """Distance matrix of the prepared table, cached; returns the .npy path (ids beside it)."""
    from .table import file_digest

    key_src = json.dumps({"table": table_digest(sample_ids, asv_ids, counts), "tree": file_digest(tree),
                          "metric": metric})
    key = hashlib.sha256(key_src.encode()).hexdigest()[:24]
    folder = cache_dir()
    path = folder / f"{key}.npy"
    if use_cache and path.exists() and Path(str(path) + ".ids.txt").exists():
        log.info("UniFrac: cached matrix %s", path)
        return path
    name = pick_backend(backend)
    log.info("UniFrac: computing %s for %d samples with %s", metric, len(sample_ids), name)
    mat = BACKENDS[name](sample_ids, asv_ids, counts, tree, metric)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{key}.{os.getpid()}.npy"
    np.save(tmp, mat)
    ids_tmp = folder / f".{key}.{os.getpid()}.ids"
    ids_tmp.write_text("\n".join(sample_ids) + "\n")
    os.replace(ids_tmp, str(path) + ".ids.txt")
    os.replace(tmp, path)
    return path


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
