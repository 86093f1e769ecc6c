"""QIIME 2 artifacts (.qza) as Dataset inputs, read by our own code: archives made by the real
`qiime tools import` read the same as the plain files; wrong semantic types and hostile archives
(path traversal, links, bombs, missing parts, damaged checksums) are refused with one message,
writing nothing."""
from __future__ import annotations

import hashlib
import json
import uuid
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import aamctl, need_qiime, q2
from synth import CPU_PROFILES, MICRO_MODEL, ORAL, make_dataset

from aam_runtime.data import qiime
from aam_runtime.data import unifrac as U
from aam_runtime.data.errors import DataError
from aam_runtime.data.table import file_digest, read_biom
from aam_runtime.data.unifrac import tree_tips


@pytest.fixture(scope="module")
def archives(tmp_path_factory) -> dict:
    """The bundled data as QIIME 2 made it: table, rooted and unrooted tree, a relative-frequency table."""
    need_qiime()
    d = tmp_path_factory.mktemp("q2")
    q2("tools", "import", "--type", "FeatureTable[Frequency]", "--input-format", "BIOMV210Format",
       "--input-path", str(ORAL / "table.biom"), "--output-path", "table.qza", cwd=d)
    q2("tools", "import", "--type", "Phylogeny[Rooted]", "--input-path", str(ORAL / "tree.nwk"),
       "--output-path", "tree.qza", cwd=d)
    q2("tools", "import", "--type", "Phylogeny[Unrooted]", "--input-path", str(ORAL / "tree.nwk"),
       "--output-path", "unrooted.qza", cwd=d)
    q2("feature-table", "relative-frequency", "--i-table", "table.qza", "--o-relative-frequency-table",
       "relative.qza", cwd=d)
    # a taxonomy of the first 4000 ASVs (no classifier runs offline: the labels are made up), and one
    # of every ASV keyed by the MD5 of its sequence, as DADA2 names features
    asvs = [str(a) for a in read_biom(str(ORAL / "table.biom")).ids(axis="observation")]
    (d / "taxonomy.tsv").write_text("Feature ID\tTaxon\tConfidence\n" + "".join(
        f"{a}\tk__Bacteria; p__P{i % 7}; c__C{i % 13}\t0.9\n" for i, a in enumerate(asvs[:4000])))
    (d / "taxonomy-md5.tsv").write_text("".join(
        f"{hashlib.md5(a.encode()).hexdigest()}\tk__Bacteria; p__P{i % 7}\n" for i, a in enumerate(asvs)))
    q2("tools", "import", "--type", "FeatureData[Taxonomy]", "--input-path", "taxonomy.tsv",
       "--output-path", "taxonomy.qza", cwd=d)
    q2("tools", "import", "--type", "FeatureData[Taxonomy]", "--input-format", "HeaderlessTSVTaxonomyFormat",
       "--input-path", "taxonomy-md5.tsv", "--output-path", "taxonomy-md5.qza", cwd=d)
    return {k: d / f"{k}.qza" for k in ("table", "tree", "unrooted", "relative", "taxonomy", "taxonomy-md5")} | {
        "dir": d, "asvs": asvs}


def test_a_real_table_archive_reads_as_the_biom_file_it_was_made_from(archives):
    art = qiime.open_artifact(str(archives["table"]), qiime.TABLE, "spec.table")
    peek = q2("tools", "peek", str(archives["table"]), cwd=archives["dir"])
    assert art.uuid in peek and art.type == "FeatureTable[Frequency]" and art.archive_version >= 5
    assert read_biom(str(archives["table"])) == read_biom(str(ORAL / "table.biom"))
    assert qiime.payload_sha256(art) == file_digest(str(ORAL / "table.biom"))


def test_a_real_tree_archive_has_the_tips_of_the_newick_file(archives):
    assert tree_tips(str(archives["tree"])) == tree_tips(str(ORAL / "tree.nwk"))


def test_a_taxonomy_reads_from_its_archive_and_its_tsv_and_by_md5(archives):
    plain = qiime.read_taxonomy(str(archives["dir"] / "taxonomy.tsv"))
    assert qiime.read_taxonomy(str(archives["taxonomy"])) == plain and len(plain) == 4000
    asvs = archives["asvs"]
    assert qiime.taxa_of(asvs, plain) == {a: plain[a] for a in asvs[:4000]}
    by_md5 = qiime.taxa_of(asvs, qiime.read_taxonomy(str(archives["taxonomy-md5"])))
    assert len(by_md5) == len(asvs) and by_md5[asvs[8]] == "k__Bacteria; p__P1"


def test_a_taxonomy_is_checked_against_the_table_before_a_run_is_queued(archives, tmp_path):
    files = tmp_path / "in.yaml"

    def apply(taxonomy):
        files.write_text(_dataset_yaml(archives["table"], archives["tree"]).replace(
            "  maxBp: 100\n", f"  maxBp: 100\n  taxonomy: {taxonomy}\n") + _pretrain_yaml("pre", "q2") + MICRO_MODEL
            + "---\n" + CPU_PROFILES)
        return aamctl(tmp_path / "home", "apply", "-f", str(files), "--dry-run", check=False)
    p = apply(archives["taxonomy"])
    assert p.returncode == 0 and "921 of 4921 ASVs of the table have no taxon" in p.stdout + p.stderr
    p = apply(archives["taxonomy-md5"])
    assert p.returncode == 0 and "no taxon" not in p.stdout + p.stderr
    other = tmp_path / "other.tsv"
    other.write_text("Feature ID\tTaxon\nACGT\tk__Bacteria\n")
    p = apply(other)
    assert p.returncode != 0 and "no ASV of" in p.stderr and "spec.taxonomy" in p.stderr and "in.yaml:" in p.stderr
    p = apply(archives["tree"])
    assert p.returncode != 0 and "holds Phylogeny[Rooted]; spec.taxonomy takes FeatureData[Taxonomy]" in p.stderr


@pytest.mark.parametrize("name, field, needle", [
    ("unrooted", "tree", "qiime phylogeny midpoint-root"),
    ("relative", "table", "FeatureTable[Frequency]"),
    ("tree", "table", "Phylogeny[Rooted]"),
])
def test_a_wrong_semantic_type_is_refused_by_name_with_the_fix(archives, name, field, needle):
    expect = {"tree": qiime.TREE, "table": qiime.TABLE}[field]
    with pytest.raises(DataError) as err:
        qiime.open_artifact(str(archives[name]), expect, f"spec.{field}")
    msg = str(err.value)
    assert str(archives[name]) in msg and f"spec.{field}" in msg and needle in msg


def _dataset_yaml(table, tree, metadata=ORAL / "metadata.tsv", name="q2") -> str:
    return f"""apiVersion: aam/v1alpha1
kind: Dataset
metadata: {{name: {name}}}
spec:
  table: {table}
  tree: {tree}
  metadata: {{path: {metadata}}}
  targets: [{{name: age, type: regression}}]
  subsample: {{samples: 120, seed: 5}}
  maxAsvsPerSample: 32
  maxBp: 100
---
"""


def _pretrain_yaml(name: str, dataset: str) -> str:
    return f"""apiVersion: aam/v1alpha1
kind: Run
metadata: {{name: {name}}}
spec:
  stage: pretrain
  datasetRef: {dataset}
  hardwareRef: cpu-1
  modelRef: micro
  trainer: {{maxSteps: 2, batchSize: 8, logEverySteps: 1, seed: 7, earlyStopping: {{patience: null}}}}
---
"""


def _record(home: Path, run: str) -> list[dict]:
    folder = Path(json.loads(aamctl(home, "get", "run", run, "-o", "json").stdout)[0]["folder"])
    return list(yaml.safe_load_all((folder / "record.yaml").read_text())), folder


@pytest.mark.slow
def test_the_same_run_from_archives_and_from_plain_files_sees_the_same_data(archives, tmp_path, monkeypatch):
    """Same underlying data digests in the records, the archive's UUID beside them, same first-step loss."""
    monkeypatch.setenv("AAM_CACHE_DIR", str(tmp_path / "cache"))
    home = tmp_path / "home"
    files = tmp_path / "runs.yaml"
    files.write_text(_dataset_yaml(archives["table"], archives["tree"], name="from-q2")
                     + _dataset_yaml(ORAL / "table.biom", ORAL / "tree.nwk", name="from-files")
                     + _pretrain_yaml("pre-q2", "from-q2") + _pretrain_yaml("pre-files", "from-files") + MICRO_MODEL + "---\n" + CPU_PROFILES)
    aamctl(home, "apply", "-f", str(files), "--wait", "--timeout", "600", timeout=900)
    (rec_q2, folder_q2), (rec_files, folder_files) = _record(home, "pre-q2"), _record(home, "pre-files")
    ann_q2 = next(d for d in rec_q2 if d["kind"] == "Run")["metadata"]["annotations"]
    ann_files = next(d for d in rec_files if d["kind"] == "Run")["metadata"]["annotations"]
    arts = json.loads(ann_q2["aam/qiime2-artifacts"])
    plain = json.loads(ann_files["aam/data-digests"])
    table_uuid = qiime.open_artifact(str(archives["table"]), qiime.TABLE, "t").uuid
    assert arts[str(archives["table"])]["uuid"] == table_uuid
    assert arts[str(archives["table"])]["dataSha256"] == plain[str(ORAL / "table.biom")]
    assert arts[str(archives["tree"])]["dataSha256"] == plain[str(ORAL / "tree.nwk")]
    assert "aam/qiime2-artifacts" not in ann_files

    def first_loss(folder):
        rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        return next(r for r in rows if r.get("split") == "train" and "loss" in r)["loss"]
    assert first_loss(folder_q2) == first_loss(folder_files)
    # the record of the archive run applies again (another state) and checks the archive's digest
    again = tmp_path / "again.yaml"
    again.write_text((folder_q2 / "record.yaml").read_text())
    aamctl(tmp_path / "home2", "apply", "-f", str(again), "--dry-run")
    # its UniFrac distances go out as QIIME 2's DistanceMatrix, and that archive comes back in
    out = aamctl(home, "export", "run", "pre-q2", "--distances", str(tmp_path / "unifrac.tsv")).stdout
    assert "120 samples" in out and "qiime tools import --type DistanceMatrix" in out
    q2("tools", "import", "--type", "DistanceMatrix", "--input-path", "unifrac.tsv", "--output-path", "dm.qza",
       cwd=tmp_path)
    ids = (tmp_path / "unifrac.tsv").read_text().splitlines()[0].split("\t")[1:]
    ours = U.DistanceLookup(str(tmp_path / "unifrac.tsv"), ids)
    theirs = U.DistanceLookup(str(tmp_path / "dm.qza"), ids)
    mat = ours.rows(0, len(ids))
    assert mat.shape == (120, 120) and np.allclose(mat, mat.T) and (mat.diagonal() == 0).all() and mat.max() > 0
    assert np.array_equal(theirs.rows(0, len(ids)), mat)
    assert qiime.open_artifact(str(tmp_path / "dm.qza"), qiime.DISTANCES, "spec.distanceMatrix").type == "DistanceMatrix"
    for args, needle in ((["--distances", str(tmp_path / "no" / "x.tsv")], "no such folder"),
                         (["--distances", str(tmp_path)], "is a folder"),
                         (["--distances", "x.tsv", "--bundle", "b"], "give one")):
        p = aamctl(home, "export", "run", "pre-q2", *args, check=False)
        assert p.returncode != 0 and needle in p.stderr, p.stderr


# ---- hostile and damaged archives, made here (no QIIME 2 needed) ---------------------------------

def _craft(path: Path, *, root: str | None = None, version: str = "QIIME 2\narchive: 5\nframework: 2022.11.1\n",
           type_: str = "FeatureTable[Frequency]", data: dict | None = None, checksums: bool = True,
           extra: dict | None = None, drop: tuple = (), corrupt: str | None = None, link: str | None = None) -> Path:
    """An archive shaped like QIIME 2's, with knobs to break it."""
    root = root or str(uuid.uuid4())
    data = {"data/feature-table.biom": (ORAL / "table.biom").read_bytes()} if data is None else data
    files = {"VERSION": version.encode(),
             "metadata.yaml": f"uuid: {root}\ntype: {type_}\nformat: BIOMV210DirFmt\n".encode(), **data}
    if checksums:
        files["checksums.md5"] = "".join(f"{hashlib.md5(b).hexdigest()}  {n}\n" for n, b in files.items()).encode()
    if corrupt:
        files[corrupt] = files[corrupt][:-1] + bytes([files[corrupt][-1] ^ 1])
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, blob in files.items():
            if name not in drop:
                zf.writestr(f"{root}/{name}", blob)
        for name, blob in (extra or {}).items():
            zf.writestr(name, blob)
        if link:
            info = zipfile.ZipInfo(f"{root}/data/{link}")
            info.external_attr = (0o120777 << 16)
            zf.writestr(info, "/etc/passwd")
    return path


def _bomb(path: Path) -> Path:
    root = str(uuid.uuid4())
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"{root}/VERSION", "QIIME 2\narchive: 5\nframework: 2022.11.1\n")
        zf.writestr(f"{root}/metadata.yaml", f"uuid: {root}\ntype: FeatureTable[Frequency]\nformat: BIOMV210DirFmt\n")
        with zf.open(f"{root}/data/feature-table.biom", "w", force_zip64=True) as f:
            block = bytes(1 << 20)
            for _ in range(400):  # 400 MiB of zeros in about 400 KiB
                f.write(block)
    return path


HOSTILE = {
    "traversal": (lambda p: _craft(p, extra={"../../evil.txt": b"x"}), "points outside"),
    "absolute": (lambda p: _craft(p, extra={"/tmp/evil.txt": b"x"}), "points outside"),
    "symlink": (lambda p: _craft(p, link="passwd"), "symbolic link"),
    "bomb": (_bomb, "zip bomb"),
    "no-data": (lambda p: _craft(p, data={}), "no data/ folder"),
    "two-roots": (lambda p: _craft(p, extra={f"{uuid.uuid4()}/VERSION": b"QIIME 2\n"}), "top-level folders"),
    "not-uuid-root": (lambda p: _craft(p, root="my-table"), "is not a UUID"),
    "no-version": (lambda p: _craft(p, drop=("VERSION",)), "VERSION is missing"),
    "not-qiime": (lambda p: _craft(p, version="hello\n"), "does not say 'QIIME 2'"),
    "bad-checksum": (lambda p: _craft(p, corrupt="data/feature-table.biom"), "does not match its checksum"),
    "no-checksums": (lambda p: _craft(p, checksums=False), "checksums.md5 is missing"),
    "wrong-type": (lambda p: _craft(p, type_="FeatureTable[RelativeFrequency]"), "aam reads counts"),
    "not-a-zip": (lambda p: (p.write_bytes(b"PK\x03\x04 but not really a zip" * 10), p)[1], "not a QIIME 2 artifact"),
    "bad-biom": (lambda p: _craft(p, data={"data/feature-table.biom": b"\x89HDF\r\n\x1a\n garbage"}),
                 "cannot be read"),
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_a_hostile_or_damaged_archive_is_refused_with_one_message_writing_nothing(kind, tmp_path, monkeypatch):
    make, needle = HOSTILE[kind]
    data = tmp_path / "data"
    data.mkdir()
    archive = make(data / "table.qza")
    cache = tmp_path / "cache"
    monkeypatch.setenv("AAM_CACHE_DIR", str(cache))
    files = tmp_path / "in.yaml"
    files.write_text(_dataset_yaml(archive, ORAL / "tree.nwk") + _pretrain_yaml("pre", "q2") + MICRO_MODEL + "---\n" + CPU_PROFILES)
    before = sorted(p for p in tmp_path.rglob("*") if "home" not in p.relative_to(tmp_path).parts)
    p = aamctl(tmp_path / "home", "apply", "-f", str(files), check=False, cwd=tmp_path)
    assert p.returncode != 0
    out = p.stdout + p.stderr
    assert needle in out and str(archive) in out and "spec.table" in out, out
    assert "internal error" not in out
    assert sorted(q for q in tmp_path.rglob("*") if "home" not in q.relative_to(tmp_path).parts) == before
    assert not cache.exists()
    assert not Path("/tmp/evil.txt").exists()


def test_a_too_large_archive_is_refused_before_anything_is_read(tmp_path, monkeypatch):
    archive = _craft(tmp_path / "t.qza")
    monkeypatch.setenv("AAM_QZA_MAX_BYTES", "1000")
    with pytest.raises(DataError, match="AAM_QZA_MAX_BYTES"):
        qiime.open_artifact(str(archive), qiime.TABLE, "spec.table")


def test_a_visualization_is_refused_with_what_to_name_instead(tmp_path):
    with pytest.raises(DataError, match=r"visualization \(.qzv\)"):
        qiime.open_artifact(str(_craft(tmp_path / "t.qzv")), qiime.TABLE, "spec.table")


def test_an_archive_the_payload_of_which_is_copied_out_lands_in_the_folder_named_by_its_digest(tmp_path):
    archive = _craft(tmp_path / "t.qza")
    art = qiime.open_artifact(str(archive), qiime.TABLE, "spec.table")
    out = qiime.payload_file(art, tmp_path / "cache")
    assert out.parent.parent == tmp_path / "cache" and out.name == "feature-table.biom"
    assert out.read_bytes() == (ORAL / "table.biom").read_bytes()
    assert qiime.payload_file(art, tmp_path / "cache") == out  # once
    assert [p.name for p in out.parent.iterdir()] == ["feature-table.biom"]


def test_archive_version_4_has_no_checksums_and_still_reads(tmp_path):
    """Archives before version 5 carry no checksums.md5 (QIIME 2 2019 and older)."""
    d = make_dataset(tmp_path / "synth", n_samples=6, n_asvs=8)
    archive = _craft(tmp_path / "old.qza", version="QIIME 2\narchive: 4\nframework: 2019.10.0\n", checksums=False,
                     data={"data/feature-table.biom": Path(d["table"]).read_bytes()})
    assert read_biom(str(archive)) == read_biom(str(d["table"]))
