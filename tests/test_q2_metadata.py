"""QIIME 2 metadata files read as QIIME 2 reads them: id headers, comment rows, the #q2:types row
(its declarations honoured), and the whole Dataset path (preflight and load) on such a file."""
from __future__ import annotations

from pathlib import Path

import pytest

from aam_runtime.data import table as T

ROOT = Path(__file__).resolve().parent.parent
ORAL = ROOT / "examples" / "data" / "oral-age"


def _q2_copy(tmp_path, header="sample-id", kinds=None, comments=True) -> Path:
    """The bundled metadata rewritten as a QIIME 2 metadata file."""
    rows = (ORAL / "metadata.tsv").read_text().splitlines()
    cols = rows[0].split("\t")
    out = []
    if comments:
        out += ["# exported from QIIME 2", ""]
    out.append("\t".join([header] + cols[1:]))
    kinds = {"age": "numeric"} if kinds is None else kinds
    if kinds is not False:
        out.append("\t".join(["#q2:types"] + [kinds.get(c, "categorical") for c in cols[1:]]))
    if comments:
        out.append("# a comment between rows")
    out += rows[1:]
    p = tmp_path / "sample-metadata.tsv"
    p.write_text("\n".join(out) + "\n")
    return p


@pytest.mark.parametrize("header", ["sample-id", "#SampleID", "id", "SampleID", "sample_name"])
def test_a_qiime2_metadata_file_reads_like_the_plain_one(tmp_path, header):
    plain = T.read_metadata(str(ORAL / "metadata.tsv"), "sample_id")
    q2 = T.read_metadata(str(_q2_copy(tmp_path, header=header)), "sample_id")
    assert list(q2.index) == list(plain.index) and list(q2.columns) == list(plain.columns)
    assert (q2.to_numpy() == plain.to_numpy()).all()
    assert "#q2:types" not in q2.index and q2.attrs["q2_types"]["age"] == "numeric"


def test_the_types_row_is_honoured(tmp_path):
    bad = _q2_copy(tmp_path, kinds={"age": "categorical"})
    spec = {"table": str(ORAL / "table.biom"), "metadata": {"path": str(bad), "sampleIdColumn": "sample_id"},
            "targets": [{"name": "age", "type": "regression"}], "categoricalColumns": [], "nonACGT": "keep",
            "rarefyDepth": None, "subsample": None}
    with pytest.raises(T.DataError, match="declared categorical in its #q2:types row"):
        T.load(spec, need_targets=["age"])
    wrong = tmp_path / "w.tsv"
    wrong.write_text("sample-id\tage\n#q2:types\tnumber\nS1\t3\n")
    with pytest.raises(T.DataError, match="QIIME 2 knows categorical and numeric"):
        T.read_metadata(str(wrong), "sample_id")
