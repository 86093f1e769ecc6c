"""Data pipeline: loading, rarefaction, selection, tokenization, batches, UniFrac, preflight."""
from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest

from aam_runtime.data import batches as B
from aam_runtime.data import table as T
from aam_runtime.data import unifrac as U
from aam_runtime.data.preflight import check_dataset

from synth import ORAL, dataset_spec, full_spec, make_dataset, write_table, write_tree


@pytest.fixture()
def ds(tmp_path):
    return make_dataset(tmp_path / "d")


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AAM_CACHE_DIR", str(tmp_path / "cache"))


# ---------------------------------------------------------------- loading and transforms

def test_load_aligns_and_reports(ds, tmp_path):
    meta = ds["metadata"].read_text().splitlines()
    # drop two samples from the metadata, make one target non-numeric, add a row not in the table
    meta = [meta[0]] + meta[3:] + ["GHOST\t40\tgum"]
    meta[1] = meta[1].split("\t")[0] + "\tunknown\tgum"
    ds["metadata"].write_text("\n".join(meta) + "\n")
    p = T.load(dataset_spec(ds), need_targets=["age"])
    assert p.report["dropped_not_in_metadata"] == 2
    assert p.report["metadata_rows_not_in_table"] == 1
    assert p.report["dropped_target_age_unusable"] == 1
    assert p.n_samples == 24 - 3
    assert list(p.metadata.index) == p.sample_ids
    assert p.counts.shape == (p.n_samples, len(p.asv_ids))


def test_json_biom_is_read(tmp_path):
    d = make_dataset(tmp_path / "j")
    write_table(d["table"], d["counts"], d["asvs"], d["samples"], fmt="json")
    p = T.load(dataset_spec(d))
    assert p.n_samples == 24


def test_rarefaction_seeded_and_exact(ds):
    counts = T.load(dataset_spec(ds)).counts
    depth = int(np.asarray(counts.sum(axis=1)).min())
    a, keep_a = T.rarefy(counts, depth, seed=7)
    b, keep_b = T.rarefy(counts, depth, seed=7)
    c, _ = T.rarefy(counts, depth, seed=8)
    assert (a != b).nnz == 0 and keep_a == keep_b
    assert (a != c).nnz > 0
    assert np.all(np.asarray(a.sum(axis=1)).ravel() == depth)
    assert np.all(a.toarray() <= counts[keep_a].toarray())


def test_rarefaction_drops_shallow_samples_with_count(ds):
    spec = dataset_spec(ds, rarefyDepth=int(np.median(ds["counts"].sum(1))))
    p = T.load(spec)
    assert p.report["dropped_below_rarefaction_depth"] > 0
    assert p.n_samples + p.report["dropped_below_rarefaction_depth"] == 24


def test_select_by_abundance_ties_by_table_order():
    import scipy.sparse as sp
    m = sp.csr_matrix(np.array([[5, 1, 5, 3, 5, 0]], dtype=float))
    idx, cnt = T.select_asvs(m, 3, "abundance")
    assert list(idx[0]) == [0, 2, 4]  # the three 5s, in table order
    idx, _ = T.select_asvs(m, 2, "first")
    assert list(idx[0]) == [0, 1]
    idx, _ = T.select_asvs(m, 2, "random", np.random.default_rng(0))
    assert len(idx[0]) == 2


def test_tokenize_maps_truncates_and_counts():
    tok, bad = T.tokenize(["ACGT", "acgn", "ACGTACGTAC"], max_bp=6)
    assert tok.shape == (3, 7)
    assert list(tok[0]) == [T.START, T.A, T.C, T.G, T.T, 0, 0]
    assert list(tok[1][:5]) == [T.START, T.A, T.C, T.G, 0]
    assert list(tok[2]) == [T.START, 1, 2, 3, 4, 1, 2]
    assert bad == 1


def test_tokenize_oral_age_fast():
    import time
    p = T.load(full_spec("Dataset", {"table": str(ORAL / "table.biom")}))
    t0 = time.perf_counter()
    tok, bad = T.tokenize(p.asv_ids, 150)
    assert time.perf_counter() - t0 < 2.0  # generous: measured ~10 ms
    assert tok.shape == (4921, 151) and bad == 0


def test_batch_dedup_index_reconstructs_every_sample(ds):
    p = T.load(dataset_spec(ds))
    enc = B.encode(p, 150, 1024, "abundance")
    rows = np.array([0, 3, 5, 7])
    b = B.collate_numpy(enc, rows)
    assert b["tokens"].shape[0] == len(np.unique(np.concatenate([enc.sel_idx[r] for r in rows])))
    for i, r in enumerate(rows):
        n = len(enc.sel_idx[r])
        assert b["mask"][i].sum() == n
        got = b["tokens"][b["asv_index"][i, :n]]
        want = enc.tokens[enc.sel_idx[r]][:, :b["tokens"].shape[1]]
        assert np.array_equal(got, want)
        assert np.allclose(b["log_counts"][i, :n], np.log1p(enc.sel_cnt[r]))
    assert b["asv_index"].shape[1] == max(len(enc.sel_idx[r]) for r in rows)  # pads to the longest only


def test_epoch_batches_deterministic_and_sharded():
    a = B.epoch_batches(103, 8, 2, seed=1, epoch=3)
    b = B.epoch_batches(103, 8, 2, seed=1, epoch=3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b)) and len(a) == 103 // 16
    g = a[0]
    assert np.array_equal(np.concatenate([B.shard(g, 0, 2), B.shard(g, 1, 2)]), g)


# ---------------------------------------------------------------- UniFrac

@pytest.fixture(scope="module")
def oral_subset():
    p = T.load(full_spec("Dataset", {"table": str(ORAL / "table.biom"), "subsample": {"samples": 120, "seed": 3}}))
    return p


@pytest.mark.parametrize("metric", ["unweighted", "weighted_normalized"])
def test_ssu_agrees_with_scikit_bio_on_oral_age(oral_subset, metric):
    if not shutil.which("ssu"):
        pytest.skip("ssu not installed") if not _ci() else pytest.fail("CI must have ssu (unifrac-tools)")
    p = oral_subset
    tree = str(ORAL / "tree.nwk")
    a = U._ssu(p.sample_ids, p.asv_ids, p.counts, tree, metric)
    b = U._skbio(p.sample_ids, p.asv_ids, p.counts, tree, metric)
    assert a.shape == (120, 120)
    assert np.max(np.abs(a - b)) < 1e-5


def test_unifrac_python_package_agrees_when_installed(oral_subset):
    pytest.importorskip("unifrac")
    p = oral_subset
    tree = str(ORAL / "tree.nwk")
    a = U._unifrac_pkg(p.sample_ids, p.asv_ids, p.counts, tree, "unweighted")
    b = U._skbio(p.sample_ids, p.asv_ids, p.counts, tree, "unweighted")
    assert np.max(np.abs(a - b)) < 1e-5


def _ci() -> bool:
    import os
    return os.environ.get("CI", "").lower() == "true"


def test_cache_reuses_matrix(ds, monkeypatch):
    p = T.load(dataset_spec(ds))
    path = U.compute(p.sample_ids, p.asv_ids, p.counts, str(ds["tree"]), backend="skbio")
    assert path.exists()
    monkeypatch.setitem(U.BACKENDS, "skbio", lambda *a, **k: (_ for _ in ()).throw(AssertionError("recomputed")))
    assert U.compute(p.sample_ids, p.asv_ids, p.counts, str(ds["tree"]), backend="skbio") == path
    # another table is another key
    c2 = p.counts.copy()
    c2[0, c2[0].indices[0]] += 1
    with pytest.raises(AssertionError, match="recomputed"):
        U.compute(p.sample_ids, p.asv_ids, c2, str(ds["tree"]), backend="skbio")


def test_skbio_fallback_warns(monkeypatch):
    monkeypatch.setattr(U, "available_backends", lambda: ["skbio"])
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        assert U.pick_backend("auto") == "skbio"
    assert any("hundreds of times slower" in str(x.message) for x in w)
    with pytest.raises(T.DataError, match="not available"):
        U.pick_backend("ssu")


def test_lookup_formats_agree_and_reorder(ds, tmp_path):
    import h5py
    from skbio import DistanceMatrix

    p = T.load(dataset_spec(ds))
    mat = U._skbio(p.sample_ids, p.asv_ids, p.counts, str(ds["tree"]), "unweighted")
    perm = np.random.default_rng(0).permutation(len(p.sample_ids))
    ids_perm = [p.sample_ids[i] for i in perm]
    mat_perm = mat[np.ix_(perm, perm)]
    np.save(tmp_path / "m.npy", mat_perm)
    (tmp_path / "m.npy.ids.txt").write_text("\n".join(ids_perm) + "\n")
    with h5py.File(tmp_path / "m.h5", "w") as f:
        f["matrix"] = mat_perm
        f["order"] = np.array([s.encode() for s in ids_perm])
    DistanceMatrix(mat_perm, ids_perm).write(str(tmp_path / "m.txt"))
    rows = np.array([5, 1, 9, 2])
    want = mat[np.ix_(rows, rows)]
    for f in ("m.npy", "m.h5", "m.txt"):
        lk = U.DistanceLookup(tmp_path / f, p.sample_ids)
        assert np.allclose(lk.sub(rows), want, atol=1e-6), f
        lk.close()


# ---------------------------------------------------------------- broken data corpus

def _break(kind: str, d: dict, tmp_path):
    """Apply one breakage; return (spec, stage, expected message fragment)."""
    spec = dataset_spec(d)
    stage = "pretrain"
    if kind == "truncated-biom":
        data = d["table"].read_bytes()
        d["table"].write_bytes(data[: len(data) // 3])
        return spec, stage, "cannot read BIOM table"
    if kind == "garbage-json-biom":
        d["table"].write_text('{"id": "x", "format": "Biological Observation Matrix 1.0.0", "rows": [')
        return spec, stage, "cannot read BIOM table"
    if kind == "missing-table":
        return dataset_spec(d, table=str(tmp_path / "nope.biom")), stage, "table file not found"
    if kind == "non-acgt-ids":
        write_table(d["table"], d["counts"], [f"OTU_{i}" for i in range(len(d["asvs"]))], d["samples"])
        return spec, stage, "'OTU_0' is not a nucleotide sequence"
    if kind == "iupac-with-error-policy":
        asvs = list(d["asvs"])
        asvs[0] = "N" + asvs[0][1:]
        write_table(d["table"], d["counts"], asvs, d["samples"])
        return dataset_spec(d, nonACGT="error"), stage, "letters other than A, C, G, T"
    if kind == "tree-missing-tips":
        write_tree(d["tree"], d["asvs"][:-3])
        return spec, stage, "3 of 30 ASVs of the table are not tips of the tree"
    if kind == "garbage-tree":
        d["tree"].write_text("((a,b;;\n")
        return spec, stage, "cannot read Newick tree"
    if kind == "missing-tree":
        return dataset_spec(d, tree=str(tmp_path / "nope.nwk")), stage, "tree file not found"
    if kind == "duplicate-metadata-ids":
        lines = d["metadata"].read_text().splitlines()
        d["metadata"].write_text("\n".join(lines + [lines[1]]) + "\n")
        return spec, stage, "appears 2 times"
    if kind == "metadata-no-overlap":
        lines = d["metadata"].read_text().splitlines()
        d["metadata"].write_text("\n".join([lines[0]] + ["X" + l for l in lines[1:]]) + "\n")
        return spec, stage, "no sample id of"
    if kind == "metadata-missing-id-column":
        lines = d["metadata"].read_text().splitlines()
        d["metadata"].write_text("\n".join(["specimen" + lines[0][len("sample_id"):]] + lines[1:]) + "\n")
        return spec, stage, "no column 'sample_id'"
    if kind == "missing-metadata-file":
        return dataset_spec(d, metadata={"path": str(tmp_path / "nope.tsv"), "sampleIdColumn": "sample_id"}), stage, \
            "metadata file not found"
    if kind == "nan-targets":
        lines = d["metadata"].read_text().splitlines()
        d["metadata"].write_text("\n".join([lines[0]] + [l.split("\t")[0] + "\tNaN\tgum" for l in lines[1:]]) + "\n")
        return spec, "finetune", "has no numeric value"
    if kind == "missing-target-column":
        return dataset_spec(d, targets=[{"name": "bmi", "type": "regression"}]), "finetune", "target 'bmi' is not a column"
    if kind == "missing-target-column-pretrain":
        return dataset_spec(d, targets=[{"name": "bmi", "type": "regression"}]), "pretrain", "target 'bmi' is not a column"
    if kind == "nan-targets-pretrain":
        lines = d["metadata"].read_text().splitlines()
        d["metadata"].write_text("\n".join([lines[0]] + [l.split("\t")[0] + "\tunknown\tgum" for l in lines[1:]]) + "\n")
        return spec, "pretrain", "has no numeric value"
    if kind == "rarefied-away":
        return dataset_spec(d, rarefyDepth=100000), stage, "no sample is left after rarefaction"
    if kind == "split-leaves-no-training":
        return dataset_spec(d, split={"validationFraction": 0.99, "seed": 1}), stage, "too few to split"
    if kind == "one-class":
        lines = d["metadata"].read_text().splitlines()
        d["metadata"].write_text("\n".join([lines[0]] + [l.rsplit("\t", 1)[0] + "\tgum" for l in lines[1:]]) + "\n")
        return dataset_spec(d, targets=[{"name": "site", "type": "classification"}], categoricalColumns=["site"]), \
            "finetune", "fewer than 2 classes"
    if kind == "matrix-missing-samples":
        np.save(tmp_path / "m.npy", np.zeros((3, 3)))
        (tmp_path / "m.npy.ids.txt").write_text("S000\nS001\nZZZ\n")
        return dataset_spec(d, distanceMatrix=str(tmp_path / "m.npy")), stage, "samples of the table are not in the distance matrix"
    if kind == "matrix-without-ids":
        np.save(tmp_path / "m.npy", np.zeros((24, 24)))
        return dataset_spec(d, distanceMatrix=str(tmp_path / "m.npy")), stage, "needs its sample ids"
    if kind == "matrix-not-square":
        np.save(tmp_path / "m.npy", np.zeros((24, 23)))
        (tmp_path / "m.npy.ids.txt").write_text("\n".join(d["samples"]) + "\n")
        return dataset_spec(d, distanceMatrix=str(tmp_path / "m.npy")), stage, "must be square"
    if kind == "empty-table":
        write_table(d["table"], np.zeros((0, 0)), [], [])
        return spec, stage, "the table is empty"
    if kind == "missing-split-file":
        return dataset_spec(d, split={"validationFraction": 0.2, "seed": 1, "trainIds": str(tmp_path / "tr.txt"),
                                      "validationIds": str(tmp_path / "va.txt")}), stage, "split file not found"
    raise AssertionError(kind)


BROKEN = ["truncated-biom", "garbage-json-biom", "missing-table", "non-acgt-ids", "iupac-with-error-policy",
          "tree-missing-tips", "garbage-tree", "missing-tree", "duplicate-metadata-ids", "metadata-no-overlap",
          "metadata-missing-id-column", "missing-metadata-file", "nan-targets", "missing-target-column", "one-class",
          "missing-target-column-pretrain", "nan-targets-pretrain", "rarefied-away", "split-leaves-no-training",
          "matrix-missing-samples", "matrix-without-ids", "matrix-not-square", "empty-table", "missing-split-file"]


@pytest.mark.parametrize("kind", BROKEN)
def test_preflight_broken_data(kind, tmp_path):
    d = make_dataset(tmp_path / "d")
    spec, stage, expected = _break(kind, d, tmp_path)
    problems = check_dataset(spec, stage, target=spec["targets"][0]["name"] if spec["targets"] else None,
                             need_distances=stage == "pretrain")
    assert problems, f"{kind}: no problem found"
    assert any(expected in p for p in problems), problems
    for p in problems:
        assert "\n" not in p and "Traceback" not in p


def test_preflight_points_at_the_field_and_hints_the_column(tmp_path):
    d = make_dataset(tmp_path / "d")
    spec = dataset_spec(d, targets=[{"name": "age", "type": "regression"}, {"name": "sitee", "type": "regression"}])
    [p] = check_dataset(spec, "pretrain", "age", need_distances=False)
    assert p.field == ("spec", "targets", 1, "name") and p.hint == "did you mean 'site'?"


def test_some_non_numeric_targets_are_a_warning_with_their_count(tmp_path):
    d = make_dataset(tmp_path / "d")
    lines = d["metadata"].read_text().splitlines()
    lines[1] = lines[1].split("\t")[0] + "\tNA\tgum"
    lines[2] = lines[2].split("\t")[0] + "\tforty\tgum"
    d["metadata"].write_text("\n".join(lines) + "\n")
    [p] = check_dataset(dataset_spec(d), "pretrain", "age")
    assert p.severity == "warning" and "2 of 24 samples" in p


def test_a_batch_larger_than_the_training_split_is_the_runs_problem(ds):
    [p] = check_dataset(dataset_spec(ds), "pretrain", "age", batch_size=16, processes=2)
    assert p.owner == "run" and p.field == ("spec", "trainer", "batchSize") and "fewer than one batch" in p
    assert check_dataset(dataset_spec(ds), "pretrain", "age", batch_size=4, processes=2) == []


def test_dataset_files_must_be_regular_files(ds, tmp_path):
    from aam_runtime.data.preflight import check_dataset_files

    assert check_dataset_files(dataset_spec(ds)) == []
    folder = tmp_path / "a-folder"
    folder.mkdir()
    problems = check_dataset_files(dataset_spec(ds, table=str(folder), tree=str(tmp_path / "nope" / "t.nwk")))
    assert [p.field for p in problems] == [("spec", "table"), ("spec", "tree")]
    assert "is a folder, not a file" in problems[0] and "does not exist either" in problems[1]


def test_preflight_accepts_good_data(ds):
    assert check_dataset(dataset_spec(ds), "pretrain", "age", need_distances=True) == []
    assert check_dataset(dataset_spec(ds), "finetune", "age") == []


def test_oral_age_preflight_clean():
    """The shipped Dataset, resolved through the schema as aamctl does, passes every check."""
    from aamctl.api.parse import load_paths
    from aamctl.api.validate import validate

    root = ORAL.parent.parent.parent
    res = validate(load_paths([str(root / "manifests" / "pretrain.yaml")]))
    [ds] = [o for o in res.given if o.kind == "Dataset"]
    problems = check_dataset(ds.spec, "pretrain", "age", need_distances=True, batch_size=32, seed=42)
    # only the cut the recipe chose: 64 ASVs per sample keeps 97% of the reads of the 505 it cuts
    assert [(p.field, p.severity) for p in problems] == [(("spec", "maxAsvsPerSample"), "warning")], problems
    assert "505 of 2030 samples" in problems[0]


def test_load_raises_when_nothing_left(ds):
    with pytest.raises(T.DataError, match="no sample is left after rarefaction"):
        T.load(dataset_spec(ds, rarefyDepth=10**6))


def test_drop_policy_removes_non_acgt_asvs(tmp_path):
    d = make_dataset(tmp_path / "d")
    asvs = list(d["asvs"])
    asvs[1] = asvs[1][:5] + "R" + asvs[1][6:]
    write_table(d["table"], d["counts"], asvs, d["samples"])
    p = T.load(dataset_spec(d, nonACGT="drop"))
    assert p.report["dropped_asvs_non_acgt"] == 1
    assert all("R" not in a for a in p.asv_ids)
    p2 = T.load(dataset_spec(d, nonACGT="pad"))
    assert p2.report["asvs_with_non_acgt"] == 1
    assert B.encode(p2, 150, 1024, "abundance").non_acgt_bases == 1


# ---------------------------------------------------------------- scale (issue 16)

@pytest.mark.parametrize("text", ["(A_b:1,(C:1,D)x:2)r;", "(a,b,(c,d));", "((a:1,b:1):1, c:2);\n",
                                  "(a:1e-3,b:2.5E+1)0.9:1;", "('q a':1,b);", "(a[&&NHX:x=1],b);", "a;"])
def test_fast_tree_scan_reads_tips_as_scikit_bio_does(text, tmp_path):
    from skbio import TreeNode

    p = tmp_path / "t.nwk"
    p.write_text(text)
    assert U.tree_tips(str(p)) == {n.name for n in TreeNode.read(str(p)).tips()}


def test_fast_tree_scan_on_the_oral_tree():
    from skbio import TreeNode

    tree = str(ORAL / "tree.nwk")
    assert U._scan_tips(open(tree).read()) is not None  # the fast path is the one taken
    assert U.tree_tips(tree) == {n.name for n in TreeNode.read(tree).tips()}


def test_sequence_checks_agree_with_the_letterwise_rules():
    ids = ["ACGT", "acgn", "ACGU", "AC-GT", "ACGTACGT"]
    assert list(T.non_acgt(ids)) == [False, True, True, True, False]
    assert T.check_sequences(ids, "t.biom")["asvs_with_non_acgt"] == 3
    for bad, shown in ((["ACGT", "ACGÉ"], "'ACGÉ'"), (["ACGT", ""], "''"), (["ACGT", "AC GT"], "'AC GT'")):
        with pytest.raises(T.DataError, match=shown):
            T.check_sequences(bad, "t.biom")


def test_asv_cut_is_counted_and_described():
    import scipy.sparse as sp

    counts = sp.csr_matrix(np.array([[5, 4, 3, 2, 1, 0], [1, 1, 0, 0, 0, 0], [9, 0, 0, 0, 1, 1]], dtype=float))
    assert T.asv_cut_summary(counts, 6, "abundance") is None
    cut = T.asv_cut_summary(counts, 3, "abundance")
    assert (cut["samples_cut"], cut["largest"], cut["median_cut"]) == (1, 5, 5)
    assert cut["reads_dropped_fraction"] == pytest.approx(3 / 15)  # counts 2 and 1 of 15 reads
    text = T.describe_cut(cut, "abundance")
    assert "1 of 3 samples hold more ASVs than maxAsvsPerSample (3)" in text and "20.0% of their reads" in text
    assert T.asv_cut_summary(counts, 3, "random")["reads_dropped_fraction"] is None


def test_preflight_warns_how_many_samples_max_asvs_cuts(ds):
    problems = check_dataset(dataset_spec(ds, maxAsvsPerSample=5), "pretrain")
    cut = [p for p in problems if p.field == ("spec", "maxAsvsPerSample")]
    assert len(cut) == 1 and cut[0].severity == "warning"
    nnz = np.count_nonzero(ds["counts"], axis=1)
    assert f"{int((nnz > 5).sum())} of 24 samples hold more ASVs" in cut[0]
    assert not [p for p in check_dataset(dataset_spec(ds, maxAsvsPerSample=1024), "pretrain")
                if p.field == ("spec", "maxAsvsPerSample")]


def test_preflight_refuses_a_unifrac_matrix_the_cache_cannot_hold(ds, monkeypatch, tmp_path):
    import collections
    import shutil as sh

    monkeypatch.setenv("AAM_CACHE_DIR", str(tmp_path / "cache" / "not-yet"))
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(sh, "disk_usage", lambda p: usage(10**9, 10**9 - 1000, 1000))
    problems = [p for p in check_dataset(dataset_spec(ds), "pretrain", need_distances=True) if p.severity == "error"]
    assert len(problems) == 1, problems
    msg = problems[0]
    n = 24
    assert f"the UniFrac matrix of {n} samples does not fit the cache" in msg and "0.0 MB is free there" in msg
    assert "spec.distanceMatrix" in msg.hint and "spec.subsample" in msg.hint and "AAM_CACHE_DIR" in msg.hint
    # the same data without UniFrac, or with the matrix cached already, is fine
    assert not [p for p in check_dataset(dataset_spec(ds), "pretrain") if p.severity == "error"]
    monkeypatch.undo()
    monkeypatch.setenv("AAM_CACHE_DIR", str(tmp_path / "cache2"))
    p = T.load(dataset_spec(ds))
    U.compute(p.sample_ids, p.asv_ids, p.counts, str(ds["tree"]), backend="skbio")
    monkeypatch.setattr(sh, "disk_usage", lambda p: usage(10**9, 10**9 - 1000, 1000))
    assert not [p for p in check_dataset(dataset_spec(ds), "pretrain", need_distances=True) if p.severity == "error"]


def test_ssu_output_is_streamed_to_the_cache_in_blocks(ds, tmp_path):
    """h5_to_npy converts a block of rows at a time (here 3 rows) and reorders to the table's order."""
    import h5py

    p = T.load(dataset_spec(ds))
    mat = U._skbio(p.sample_ids, p.asv_ids, p.counts, str(ds["tree"]), "unweighted")
    perm = np.random.default_rng(1).permutation(len(p.sample_ids))
    with h5py.File(tmp_path / "dm.h5", "w") as f:
        f["matrix"] = mat[np.ix_(perm, perm)].astype(np.float32)
        f["order"] = np.array([p.sample_ids[i].encode() for i in perm])
    U.h5_to_npy(tmp_path / "dm.h5", p.sample_ids, tmp_path / "m.npy", block_bytes=3 * 4 * len(perm))
    got = np.load(tmp_path / "m.npy")
    assert got.dtype == np.float32 and np.allclose(got, mat, atol=1e-6)


def test_stripe_ranges_cover_every_stripe_once():
    from aamctl.planning.stripes import stripe_ranges

    for n, parts in ((41, 4), (500, 4), (3, 8), (2, 1), (100000, 64)):
        r = stripe_ranges(n, parts)
        assert r[0][0] == 0 and r[-1][1] == (n + 1) // 2
        assert all(a < b for a, b in r) and all(r[i][1] == r[i + 1][0] for i in range(len(r) - 1))
        assert len(r) == min(parts, (n + 1) // 2)


def test_new_samples_need_not_have_the_predicted_columns(tmp_path):
    """A predict Run on new samples, with the training Dataset pointed at their files: their
    metadata lacks the classification target (and its categorical column) and holds no age
    values. Predict takes it; fine-tuning on the same file is refused, naming the column."""
    from aam_runtime.data import table as T
    d = make_dataset(tmp_path / "d")
    d["metadata"].write_text("\n".join(["sample_id\tage"] + [f"{s}\t" for s in d["samples"]]) + "\n")
    spec = dataset_spec(d, targets=[{"name": "age", "type": "regression"}, {"name": "study", "type": "classification"}],
                        categoricalColumns=["study"])
    assert check_dataset(spec, "predict", None) == []
    assert T.load(spec, need_targets=[]).n_samples == 24
    problems = check_dataset(spec, "finetune", "age")
    assert any("target 'study' is not a column" in p for p in problems), problems
    assert any("regression target 'age' has no numeric value" in p for p in problems), problems
    # a categorical column that is an input (not a target) is still needed to predict
    spec = dataset_spec(d, categoricalColumns=["site"])
    assert any("no column 'site'" in p for p in check_dataset(spec, "predict", None))


# ---------------------------------------------------------------- k-fold splits (cross-fitting)

def test_folds_partition_the_samples_stratified_and_seeded(ds):
    from aam_runtime.data.split import make_split

    spec = dataset_spec(ds, categoricalColumns=["site"], split={"folds": 4, "seed": 3, "stratifyBy": "site"})
    p = T.load(spec)
    vals = [make_split(spec, p, None, "age", {"fold": k})[1] for k in range(4)]
    # every sample is validated exactly once across the folds; each run trains on the rest
    assert sorted(np.concatenate(vals).tolist()) == list(range(p.n_samples))
    for k, v in enumerate(vals):
        train, val = make_split(spec, p, None, "age", {"fold": k})
        assert np.array_equal(val, v) and len(np.intersect1d(train, val)) == 0
        assert len(train) + len(val) == p.n_samples
    # stratified: each fold holds its share of every site (within one sample)
    sites = p.metadata["site"].to_numpy()
    for lab in set(sites):
        per_fold = [int((sites[v] == lab).sum()) for v in vals]
        assert max(per_fold) - min(per_fold) <= 1, (lab, per_fold)
    # the Run's fields replace the Dataset's: the same fold is the same split either way, and
    # another seed is another partition
    same = dataset_spec(ds, categoricalColumns=["site"], split={"folds": 4, "seed": 3, "stratifyBy": "site", "fold": 2})
    assert np.array_equal(make_split(same, p, None, "age")[1], vals[2])
    assert not np.array_equal(make_split(spec, p, None, "age", {"fold": 2, "seed": 4})[1], vals[2])


def test_a_fold_the_run_asks_for_that_is_empty_is_the_runs_problem(ds):
    # 24 samples in 30 folds: fold 29 holds no sample, which preflight says before the run is queued
    spec = dataset_spec(ds)
    [p] = check_dataset(spec, "finetune", "age", batch_size=2, split={"folds": 30, "fold": 29})
    assert p.owner == "run" and p.field == ("spec", "split") and "fold 29 of 30" in p
    assert check_dataset(spec, "finetune", "age", batch_size=2, split={"folds": 3, "fold": 2}) == []
