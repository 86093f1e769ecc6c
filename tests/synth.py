"""Synthetic microbiome data for tests: BIOM tables, trees, metadata, with knobs to break them."""
from __future__ import annotations

from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
ORAL = ROOT / "examples" / "data" / "oral-age"


def random_seqs(n: int, length: int = 40, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    seqs = set()
    while len(seqs) < n:
        seqs.add("".join(rng.choice(list("ACGT"), size=length)))
    return sorted(seqs)


def write_table(path: Path, counts: np.ndarray, asv_ids: list[str], sample_ids: list[str], fmt: str = "hdf5") -> Path:
    """counts: samples x ASVs."""
    import biom

    t = biom.Table(np.asarray(counts).T, observation_ids=list(asv_ids), sample_ids=list(sample_ids))
    if fmt == "hdf5":
        import h5py
        with h5py.File(path, "w") as f:
            t.to_hdf5(f, "aam-tests")
    else:
        Path(path).write_text(t.to_json("aam-tests"))
    return Path(path)


def write_tree(path: Path, tips: list[str], seed: int = 0) -> Path:
    """A random rooted binary tree over the tips, with branch lengths."""
    rng = np.random.default_rng(seed)
    nodes = [f"{t}:{rng.uniform(0.01, 0.2):.4f}" for t in tips]
    while len(nodes) > 1:
        i, j = sorted(rng.choice(len(nodes), size=2, replace=False))
        b = nodes.pop(j)
        a = nodes.pop(i)
        nodes.append(f"({a},{b}):{rng.uniform(0.01, 0.2):.4f}")
    Path(path).write_text(nodes[0].rsplit(":", 1)[0] + ";\n")
    return Path(path)


def make_dataset(folder: Path, n_samples: int = 24, n_asvs: int = 30, seed: int = 0, length: int = 40,
                 classes: bool = False) -> dict:
    """A small consistent data set; returns the paths and arrays."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    asvs = random_seqs(n_asvs, length, seed)
    samples = [f"S{i:03d}" for i in range(n_samples)]
    counts = rng.poisson(3.0, size=(n_samples, n_asvs)) * (rng.random((n_samples, n_asvs)) < 0.5)
    counts[:, 0] += 1  # no empty sample
    age = rng.uniform(18, 80, size=n_samples).round(1)
    table = write_table(folder / "table.biom", counts, asvs, samples)
    tree = write_tree(folder / "tree.nwk", asvs, seed)
    lines = ["sample_id\tage\tsite"] + [f"{s}\t{a}\t{'gum' if i % 2 else 'tongue'}" for i, (s, a) in enumerate(zip(samples, age))]
    meta = folder / "metadata.tsv"
    meta.write_text("\n".join(lines) + "\n")
    return {"table": table, "tree": tree, "metadata": meta, "counts": counts, "asvs": asvs, "samples": samples,
            "age": age}


def full_spec(kind: str, spec: dict) -> dict:
    """A spec with the schema's defaults filled, as aamctl hands it to the runtime."""
    from aamctl.api.schema import fill_defaults

    return fill_defaults(kind, {"apiVersion": "aam/v1alpha1", "kind": kind, "metadata": {"name": "t"},
                                "spec": spec})["spec"]


def dataset_spec(d: dict, **over) -> dict:
    """The synthetic data set's Dataset spec (regression target age), defaults filled."""
    spec = {"table": str(d["table"]), "tree": str(d["tree"]), "metadata": {"path": str(d["metadata"])},
            "targets": [{"name": "age", "type": "regression"}]}
    spec.update(over)
    return full_spec("Dataset", spec)


# Manifests shared by the end-to-end tests: a micro model and one- and two-process CPU profiles.
MICRO_MODEL = """apiVersion: aam/v1alpha1
kind: Model
metadata: {name: micro}
spec: {embeddingDim: 8, ffnMultiplier: 1, dropout: 0.0, nucleotide: {heads: 2, layers: 1}, sample: {heads: 2, layers: 1}, encoderHead: {heads: 2, layers: 1}, targetHead: {heads: 2, layers: 1}}
"""
CPU_PROFILES = """apiVersion: aam/v1alpha1
kind: HardwareProfile
metadata: {name: cpu-1}
spec: {accelerator: cpu, cpusPerTask: 1, env: {OMP_NUM_THREADS: "1"}}
---
apiVersion: aam/v1alpha1
kind: HardwareProfile
metadata: {name: cpu-2proc}
spec: {accelerator: cpu, devicesPerNode: 2, strategy: ddp, cpusPerTask: 1, env: {OMP_NUM_THREADS: "1"}}
"""


def synth_manifests(data: dict) -> str:
    """The Dataset 'synth' over make_dataset()'s files, and the micro Model, as YAML documents."""
    return f"""apiVersion: aam/v1alpha1
kind: Dataset
metadata: {{name: synth}}
spec:
  table: {data['table']}
  tree: {data['tree']}
  metadata: {{path: {data['metadata']}}}
  targets: [{{name: age, type: regression}}]
---
{MICRO_MODEL}---
"""


def pretrain_run(data: dict, name: str, epochs: int = 2, hardware: str = "cpu", trainer_extra: str = "") -> str:
    """synth_manifests() and a pretraining Run of the micro model on them (a short CPU schedule)."""
    return f"""{synth_manifests(data)}apiVersion: aam/v1alpha1
kind: Run
metadata: {{name: {name}}}
spec:
  stage: pretrain
  datasetRef: synth
  modelRef: micro
  hardwareRef: {hardware}
  trainer: {{epochs: {epochs}, batchSize: 4, learningRate: 0.001, warmupSteps: 1, logEverySteps: 1{trainer_extra}}}
"""
