"""Tests for the server's fast paths (issue 14), each against the path it shortcuts:

* the JSON codec (:mod:`ctrlab.serve.codec`, orjson) gives exactly ``json.loads``'s value or
  exception, including where orjson alone would differ (big integers, NaN, lone surrogates, BOM);
* the columnar request form ``{"columns": {...}}`` scores like the same rows, and its errors name
  the row and field (or the column);
* micro-batching: concurrent requests are scored in fewer model calls, each gets its own scores
  (as scored alone, within 1e-6: the model's kernels round by batch size), and a bad row fails
  only its own request, with its own row number;
* /metrics reports the worker's resident memory; a small /upload (scored on the event loop)
  answers like the rows sent to /v1/predict, and a one-block file is read and encoded without
  helper threads with the same tables, hashes and scores as the threaded path.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import numpy as np
import pyarrow as pa
import pytest
from fastapi.testclient import TestClient

from ctrlab.data.formats import input_schema
from ctrlab.data.readers import RowReader
from ctrlab.inference import Predictor, offline, score_files
from ctrlab.serve import codec
from ctrlab.serve.app import create_app
from conftest import tiny_bundle

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("fast_paths")
    raw, _bundle = tiny_bundle(root, 1000, seed=11)
    predictor = Predictor(root / "bundle", threads=1)
    lines = raw.read_text().splitlines()[:40]
    rows = [dict(zip(predictor.columns, line.split("\t")[1:])) for line in lines]
    return root / "bundle", predictor, lines, rows


@pytest.fixture(scope="module")
def client(setup):
    with TestClient(create_app(setup[0], threads=1, max_rows=100)) as c:
        yield c


# --------------------------------------------------------------------------------------------
# codec
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("body", [
    b'{"rows": [{"I1": 3, "C1": "ab"}]}', b"123456789012345678901234567890", b"-9223372036854775809",
    b"18446744073709551615", b"[1e400, -1e400]", b"NaN", b"[Infinity]", b'"\\ud800"', b'"\\udc00x"',
    b"\xef\xbb\xbf[1]", b"\xff[1]", b'{"a": 1, "a": 2}', b"[1,]", b"-0.0", b"1" * 5000, b'"\\u0000"', b"[.5]",
])
def test_codec_loads_is_json_loads(body):
    try:
        want = json.loads(body.decode("utf-8"))
    except ValueError as exc:
        with pytest.raises(type(exc)) as got:
            codec.loads(body)
        assert str(got.value) == str(exc)
        return
    got = codec.loads(body)
    assert json.dumps(got) == json.dumps(want)  # (same types too: an int stays an int, NaN stays NaN)


def test_codec_dumps_round_trips_floats():
    values = np.random.default_rng(0).random(1000).astype(np.float32).tolist() + [1e-8, 0.5, 1.0]
    assert json.loads(codec.dumps({"p": values})) == {"p": values}


# --------------------------------------------------------------------------------------------
# columnar requests
# --------------------------------------------------------------------------------------------

def test_columns_score_like_rows(client, setup):
    _bundle, predictor, _lines, rows = setup
    rows = rows[:7]
    columns = {name: [row[name] for row in rows] for name in predictor.columns}
    by_rows = client.post("/v1/predict", json={"rows": rows})
    by_columns = client.post("/v1/predict", json={"columns": columns})
    assert by_rows.status_code == by_columns.status_code == 200
    assert by_columns.json()["probabilities"] == by_rows.json()["probabilities"]
    partial = client.post("/v1/predict", json={"columns": {"I1": ["3", ""], "C1": ["68fd1e64", "x"]}})
    assert partial.status_code == 200 and len(partial.json()["probabilities"]) == 2


@pytest.mark.parametrize("body, status, words", [
    ({"columns": {"I1": ["1", "x"], "C1": ["a", "b"]}}, 422, ["row 1", "I1"]),
    ({"columns": {"I1": ["1", "2"], "C1": ["a"]}}, 422, ["'C1'", "1 values"]),
    ({"columns": {"I1": "1"}}, 422, ["'I1'", "list"]),
    ({"columns": {"nope": [1]}}, 422, ["nope"]),
    ({"columns": {}}, 422, ["non-empty"]),
    ({"columns": []}, 422, ["non-empty"]),
    ({"columns": {"I1": []}}, 422, ["empty"]),
    ({"columns": {"I1": list(range(101))}}, 413, ["101", "limit"]),
    ({"columns": {"I1": [1]}, "rows": [{"I1": 1}]}, 422, ["columns"]),
])
def test_bad_columns_are_4xx_naming_the_field(client, body, status, words):
    r = client.post("/v1/predict", json=body)
    assert r.status_code == status, r.text
    assert all(w in r.json()["detail"] for w in words), r.json()


# --------------------------------------------------------------------------------------------
# micro-batching
# --------------------------------------------------------------------------------------------

def test_micro_batching_answers_each_request_alone(setup, monkeypatch):
    bundle, predictor, _lines, rows = setup
    app = create_app(bundle, threads=1, max_rows=100, batch_window_ms=50)
    served = app.state.serve.current.predictor
    calls = []
    real_predict = served.predict
    monkeypatch.setattr(served, "predict", lambda r: calls.append(len(r)) or real_predict(r))
    good = [{"rows": rows[i:i + 3]} for i in range(0, 30, 3)]
    good[7] = {"rows": [list(rows[5].values()), list(rows[6].values())]}  # rows as lists: their own group
    bad = {"rows": [rows[0], {**rows[1], "I2": "not a number"}]}  # row 1 is bad

    async def send_all(bodies):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            return await asyncio.gather(*(c.post("/v1/predict", json=b) for b in bodies))

    for bodies in (good, good[:4] + [bad] + good[4:]):
        calls.clear()
        answers = asyncio.run(send_all(bodies))
        if bodies is good:
            assert len(calls) <= 2, calls  # one call for the dict rows, one for the list rows
        for body, answer in zip(bodies, answers):
            if body is bad:  # its own error, its own row number; the others are answered
                assert answer.status_code == 422 and "row 1" in answer.json()["detail"], answer.text
                continue
            assert answer.status_code == 200, answer.text
            alone = real_predict(body["rows"]).scores
            # (the model's kernels round by batch size: a float32 ulp, inside the project's 1e-6)
            np.testing.assert_allclose(answer.json()["probabilities"], alone, rtol=0, atol=1e-6)


# --------------------------------------------------------------------------------------------
# /metrics memory, small uploads
# --------------------------------------------------------------------------------------------

def test_metrics_report_resident_memory(client):
    text = client.get("/metrics").text
    values = {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
              if line.startswith("process_")}
    assert values["process_resident_memory_bytes"] > 10e6
    assert 0 < values["process_shared_memory_bytes"] <= values["process_resident_memory_bytes"]


def test_small_upload_scores_like_predict(client, setup):
    _bundle, _predictor, lines, rows = setup
    data = ("\n".join(lines[:5]) + "\n").encode()
    up = client.post("/upload", files={"file": ("rows.txt", data, "text/plain")})
    assert up.status_code == 200, up.text
    by_rows = client.post("/v1/predict", json={"rows": rows[:5]}).json()["probabilities"]
    np.testing.assert_allclose([p for (p,) in up.json()["data"]], by_rows, rtol=0, atol=1e-6)


def test_small_files_read_in_thread_like_large(setup, tmp_path, monkeypatch):
    """A file of one block (a small upload) is read and encoded without helper threads: the same
    tables, hashes and scores as the threaded path that larger files take."""
    _bundle, predictor, lines, _rows = setup
    path = tmp_path / "rows.txt"
    path.write_text("\n".join(lines[:25]) + "\n")
    schema = input_schema(path, "auto", predictor.schema, predictor.pipeline.dense_inputs,
                          predictor.pipeline.sparse_inputs)[1]
    inline, threaded = RowReader([path], schema), RowReader([path], schema, block_bytes=256)
    inline_tables = [chunk.table for chunk in inline]
    assert pa.concat_tables(inline_tables).equals(pa.concat_tables([chunk.table for chunk in threaded]))
    assert inline.sources == threaded.sources and inline.sources[0].sha256
    small = np.concatenate([c.probabilities for c in score_files(predictor, path)])
    monkeypatch.setattr(offline, "BLOCK_BYTES", 0)  # every input "large": the prefetch thread
    large = np.concatenate([c.probabilities for c in score_files(predictor, path)])
    np.testing.assert_array_equal(small, large)
