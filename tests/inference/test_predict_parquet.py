"""``ctrlab predict`` on a Parquet file and on a directory of Parquet parts: the same scores as the
same rows as Criteo text, one output line per input row in row order (the id: the 1-based row in
its file, FILE:ROW with several parts), a skipped bad row keeping its place and naming its row
group and row. Generated data (tests/conftest.py: tiny_bundle), no ../shared/data needed."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

import ctrlab.cli as cli
from conftest import tiny_bundle
from ctrlab.inference import Predictor

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict_parquet")
    raw, bundle = tiny_bundle(root, 1500, seed=13)
    text = "\n".join(raw.read_text().splitlines()[:30]) + "\n"
    columns = list(Predictor(bundle, threads=1).schema.columns)
    types = {c: pa.string() if c.startswith("C") else pa.int64() for c in columns}
    table = pa_csv.read_csv(io.BytesIO(text.encode()), read_options=pa_csv.ReadOptions(column_names=columns),
                            parse_options=pa_csv.ParseOptions(delimiter="\t"),
                            convert_options=pa_csv.ConvertOptions(column_types=types, strings_can_be_null=True))
    rows_tsv = root / "rows.tsv"
    rows_tsv.write_text(text)
    return root, bundle, rows_tsv, table


def predict(bundle, inputs, out, *options) -> list[list[str]]:
    assert cli.main(["predict", str(bundle), str(inputs), "--out", str(out), "--threads", "1", *options]) == 0
    return [line.split("\t") for line in out.read_text().splitlines()]


def test_file_and_directory_of_parts(setup, tmp_path):
    root, bundle, rows_tsv, table = setup
    want = np.float32([p for (p,) in predict(bundle, rows_tsv, tmp_path / "text.tsv")])
    one = tmp_path / "rows.parquet"
    pq.write_table(table, one, row_group_size=8)
    lines = predict(bundle, one, tmp_path / "one.tsv", "--id-column")
    assert [i for i, _ in lines] == [str(k) for k in range(1, 31)]  # row k of the file
    np.testing.assert_allclose(np.float32([p for _, p in lines]), want, atol=1e-6, rtol=0)
    parts = tmp_path / "parts"
    parts.mkdir()
    pq.write_table(table.slice(0, 18), parts / "part-0.parquet", row_group_size=5)
    pq.write_table(table.slice(18), parts / "part-1.parquet")
    (parts / "_SUCCESS").write_text("")
    lines = predict(bundle, parts, tmp_path / "parts.tsv", "--id-column", "--header")
    assert lines[0] == ["id", "probability"]
    ids = [f"{parts / 'part-0.parquet'}:{k}" for k in range(1, 19)] + \
          [f"{parts / 'part-1.parquet'}:{k}" for k in range(1, 13)]
    assert [i for i, _ in lines[1:]] == ids
    np.testing.assert_allclose(np.float32([p for _, p in lines[1:]]), want, atol=1e-6, rtol=0)


def test_a_skipped_row_keeps_its_place(setup, tmp_path):
    _root, bundle, _rows_tsv, table = setup
    path = tmp_path / "bad.parquet"
    values = pa.array(["1"] * 12 + ["x"] + ["2"] * 17)  # row 12 (row group 1, row 2): not a number
    pq.write_table(table.set_column(table.column_names.index("I2"), "I2", values), path, row_group_size=10)
    assert cli.main(["predict", str(bundle), str(path), "--out", str(tmp_path / "e.tsv"), "--threads", "1"]) != 0
    lines = predict(bundle, path, tmp_path / "skip.tsv", "--id-column", "--bad-lines", "skip")
    assert len(lines) == 30 and [i for i, *_ in lines] == [str(k) for k in range(1, 31)]
    assert lines[12][1:] == ["", "field 'I2': expected a number, got 'x'"]
    assert all(p and not why for _, p, why in lines[:12] + lines[13:])
