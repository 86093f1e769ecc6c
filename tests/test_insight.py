"""The insight outputs' arithmetic on small arrays (the end-to-end runs are in test_training)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from aam_runtime import insight
from aam_runtime import runfolder as RF
from aam_runtime.runfolder import RunFolder


def _rows(path):
    lines = path.read_text().splitlines()
    assert lines[1].startswith("#q2:types\t")
    return lines[0].split("\t"), [line.split("\t") for line in lines[2:]]


def test_principal_coordinates_keep_the_distances_of_a_plane():
    rng = np.random.default_rng(0)
    plane = rng.normal(size=(30, 2)) @ np.array([[3.0, 0.0], [0.0, 1.0]])
    emb = np.concatenate([plane, np.zeros((30, 3))], axis=1) @ np.linalg.qr(rng.normal(size=(5, 5)))[0]
    pc, share = insight.principal_coordinates(emb)
    d = lambda x: np.linalg.norm(x[:, None] - x[None], axis=-1)  # noqa: E731
    assert np.allclose(d(pc), d(emb), atol=1e-8) and share.sum() == pytest.approx(1.0) and share[0] > share[1]


def test_embeddings_and_their_distance_matrix(tmp_path):
    from skbio import DistanceMatrix

    folder = RunFolder(tmp_path)
    emb = np.random.default_rng(1).normal(size=(7, 4))
    ids = [f"s{i}" for i in range(7)]
    insight.write_embeddings(folder, ids, emb)
    header, rows = _rows(folder.file(RF.EMBEDDINGS))
    assert header == ["sample-id", "dim0", "dim1", "dim2", "dim3"] and [r[0] for r in rows] == ids
    dm = DistanceMatrix.read(str(folder.file(RF.EMBEDDING_DISTANCES)))
    assert np.allclose(dm.data, np.linalg.norm(emb[:, None] - emb[None], axis=-1), atol=1e-6)
    path = insight.pcoa_plot(folder, emb, np.array(["a", "b"] * 3 + ["a"]), "site", "t")
    assert path.stat().st_size > 0


def test_regression_errors_are_ranked_and_summed_by_category(tmp_path):
    folder = RunFolder(tmp_path)
    ids = ["a", "b", "c", "d", "e"]
    meta = pd.DataFrame({"site": ["gum", "gum", "tongue", "tongue", "gum"]}, index=ids)
    pred, truth = [10.0, 20.0, 30.0, 40.0, 50.0], [12.0, 20.0, 25.0, float("nan"), 41.0]
    out = insight.write_errors(folder, ids, pred, truth, "regression", meta, ["site"], "age")
    header, rows = _rows(folder.file(RF.ERRORS))
    assert header == ["sample-id", "prediction", "truth", "residual", "absolute_error", "rank", "site"]
    assert [r[0] for r in rows] == ["e", "c", "a", "b"]  # d has no truth; worst first
    assert [float(r[3]) for r in rows] == [9.0, 5.0, -2.0, 0.0] and out["errors_samples"] == 4
    by = [line.split("\t") for line in folder.file(RF.errors_by_name("site")).read_text().splitlines()]
    assert by[0] == ["site", "samples", "mae", "mean_residual"]
    assert by[1] == ["gum", "3", f"{(9 + 2 + 0) / 3:.6g}", f"{(9 - 2 + 0) / 3:.6g}"] and by[2] == ["tongue", "1", "5", "5"]
    assert (folder.plots / RF.RESIDUAL_PLOT).exists()


def test_classification_errors_mark_hits_and_rates(tmp_path):
    folder = RunFolder(tmp_path)
    ids = ["a", "b", "c"]
    meta = pd.DataFrame({"study": ["1", "1", "2"]}, index=ids)
    insight.write_errors(folder, ids, ["x", "y", "x"], ["x", "x", ""], "classification", meta, ["study"], "site")
    header, rows = _rows(folder.file(RF.ERRORS))
    assert header[:4] == ["sample-id", "prediction", "truth", "correct"]
    assert [(r[0], r[3]) for r in rows] == [("b", "no"), ("a", "yes")]
    assert folder.file(RF.errors_by_name("study")).read_text().splitlines()[1] == "1\t2\t0.5"
    assert not (folder.plots / RF.RESIDUAL_PLOT).exists()
