"""/upload of a Parquet file (its ``PAR1`` magic): read with ``prepare``'s Parquet reader and scored
as the same rows uploaded as text and as ``ctrlab predict`` of the file (1e-6), through the fast
lane and the route alike; bad Parquet (truncated, a column of the wrong type or missing, a bad
value, too many rows by the footer's count) is a 4xx naming the row group, row and column, never a
500. The data is generated (tests/conftest.py: tiny_bundle), no ../shared/data needed."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

import ctrlab.cli as cli
from conftest import tiny_bundle
from ctrlab.serve import fastlane
from ctrlab.serve.app import INLINE_BODY_BYTES, create_app

MAX_ROWS = 50

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def criteo_table(text: str, columns: list[str]) -> pa.Table:
    """Criteo TSV lines as a typed table: I* int64, C* string, empty fields null (missing)."""
    types = {c: pa.string() if c.startswith("C") else pa.int64() for c in columns}
    return pa_csv.read_csv(io.BytesIO(text.encode()), read_options=pa_csv.ReadOptions(column_names=columns),
                           parse_options=pa_csv.ParseOptions(delimiter="\t"),
                           convert_options=pa_csv.ConvertOptions(column_types=types, strings_can_be_null=True))


def parquet_bytes(table: pa.Table, **options) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, **options)
    return buf.getvalue()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    raw, bundle = tiny_bundle(tmp_path_factory.mktemp("upload_parquet"), 2000, seed=11)
    text = "\n".join(raw.read_text().splitlines()[:40]) + "\n"
    app = create_app(bundle, threads=1, max_rows=MAX_ROWS, max_body_bytes=400_000)
    with TestClient(app) as client:
        table = criteo_table(text, ["label", *client.get("/metadata").json()["columns"]])
        yield client, bundle, text, table


def upload(client, data: bytes, name: str = "rows.parquet") -> tuple[int, dict]:
    response = client.post("/upload", params={"debug": "true"}, files={"file": (name, data)})
    payload = response.json()
    payload.get("debug", {}).pop("timing_ms", None)
    return response.status_code, payload


def test_parquet_upload_scores_as_text_and_predict(setup, tmp_path, monkeypatch):
    client, bundle, text, table = setup
    status, as_text = upload(client, text.encode(), "rows.txt")
    assert status == 200 and as_text["debug"]["format"] == "criteo"
    want = np.float32(as_text["data"])[:, 0]
    small = parquet_bytes(table, write_statistics=False)  # fits the fast lane
    large = parquet_bytes(table, compression="none", row_group_size=7)  # larger than the lane takes: the route
    assert len(small) < INLINE_BODY_BYTES - 500 < INLINE_BODY_BYTES < len(large)
    path = tmp_path / "rows.parquet"
    path.write_bytes(large)
    out = tmp_path / "scores.tsv"
    assert cli.main(["predict", str(bundle), str(path), "--out", str(out), "--threads", "1"]) == 0
    np.testing.assert_allclose(np.loadtxt(out, dtype=np.float32), want, atol=1e-6, rtol=0)
    for data in (small, large):
        status, body = upload(client, data)
        assert status == 200, body
        assert body["debug"]["format"] == "parquet" and body["debug"]["rows"] == len(want)
        np.testing.assert_allclose(np.float32(body["data"])[:, 0], want, atol=1e-6, rtol=0)
        monkeypatch.setattr(fastlane.FastLane, "_small", lambda self, h: False)  # the same through the route
        assert upload(client, data) == (status, body)
        monkeypatch.undo()


def test_bad_parquet_uploads(setup, monkeypatch):
    client, _bundle, text, table = setup
    good = parquet_bytes(table)
    column = table.column_names.index
    n = table.num_rows
    bad_number = pa.array(["1"] * 9 + ["x"] + ["2"] * (n - 10))
    too_many = parquet_bytes(pa.concat_tables([table, table]))
    pages_broken = too_many[:100] + bytes(100) + too_many[200:]  # counted from the footer: no data read
    cases = {
        "truncated": (good[: len(good) // 2], 422, "upload: not a readable Parquet file"),
        "magic only": (b"PAR1", 422, "not a readable Parquet file"),
        "wrong type": (parquet_bytes(table.set_column(column("C3"), "C3", pa.array([["a"]] * n))), 422,
                       "field 'C3': column type list<element: string>, expected a scalar column"),
        "missing column": (parquet_bytes(table.drop_columns(["C5"])), 422, "field 'C5': no such column"),
        "bad value": (parquet_bytes(table.set_column(column("I2"), "I2", bad_number), row_group_size=8), 422,
                      "upload, row group 1, row 1: field 'I2': expected a number, got 'x'"),
        "no rows": (parquet_bytes(table.slice(0, 0)), 400, "the uploaded Parquet file has no rows"),
        "too many rows": (too_many, 413, f"the upload has {2 * n} rows; the limit is {MAX_ROWS} rows per request"),
        "too many, pages broken": (pages_broken, 413, f"the limit is {MAX_ROWS} rows per request"),
    }
    by_lane = {name: upload(client, data) for name, (data, _, _) in cases.items()}
    monkeypatch.setattr(fastlane.FastLane, "_small", lambda self, h: False)
    assert {name: upload(client, data) for name, (data, _, _) in cases.items()} == by_lane
    for name, (_data, status, message) in cases.items():
        got, body = by_lane[name]
        assert got == status and message in body["detail"], (name, got, body)
        assert "/tmp" not in body["detail"] and "ctrlab-upload" not in body["detail"]
    status, body = upload(client, ("\n".join([text.splitlines()[0]] * (2 * n)) + "\n").encode(), "rows.txt")
    assert status == 413 and f"the limit is {MAX_ROWS} rows per request" in body["detail"]  # as text
