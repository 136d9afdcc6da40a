"""Tests for the HTTP server (ctrlab.serve.app) and ``ctrlab serve`` (ctrlab.cli.deploy):

* every endpoint through FastAPI's TestClient: /v1/predict (dicts and lists), /upload, /health,
  /ready, /metadata, /metrics, /openapi.json, /docs, /admin/reload;
* every bad input is a 4xx whose message names the row/line and field, never a 500; the body cap
  is enforced from Content-Length and, for streamed bodies, while reading;
* consistency: the same raw lines through /v1/predict, /upload and ``ctrlab predict`` agree (1e-6);
* reload under concurrent requests: no failure, every answer is exactly one bundle's, never a mix;
* the reload token: disabled when the env var is unset, refused without or with a wrong token;
* one real server on a free 127.0.0.1 port in a subprocess.
"""

from __future__ import annotations

import gc
import json
import threading
import time
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

import ctrlab.cli as cli
from ctrlab.config import ConfigError, ServeConfig, load_config, to_dict
from ctrlab.export.bundle import export_bundle
from ctrlab.inference import Predictor
from ctrlab.serve.app import CONFIG_ENV, app_from_env, create_app
from ctrlab.serve.process import start_server, stop_server
from ctrlab.train.run import run_training
from conftest import synthetic_store

ROWS = 2000
TOKEN_ENV = "CTRLAB_TEST_RELOAD_TOKEN"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def quiet(_msg: str) -> None:
    pass


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """Two bundles of one tiny DeepFM run (epochs 1 and 2: same columns, different weights)."""
    root = tmp_path_factory.mktemp("serve")
    raw, _store = synthetic_store(root, ROWS, seed=5)
    run_dir = root / "run"
    cfg = load_config(None, [f"data.store={json.dumps(str(root / 'store'))}", f"run_dir={json.dumps(str(run_dir))}",
                             "model.name=deepfm", "model.params.embedding_dim=4", "model.params.hidden_units=[8]",
                             "train.threads=1", "train.epochs=2", "train.batch_size=256", "train.lr=0.01",
                             "train.log_every=1000", "train.eval_batch_size=500"])
    run_training(cfg, progress=False, log=quiet)
    first = root / "bundle_e1"
    second = root / "bundle_e2"
    export_bundle(run_dir, first, epoch=1, log=quiet)
    export_bundle(run_dir, second, epoch=2, log=quiet)
    lines = raw.read_text().splitlines()[:40]
    return SimpleNamespace(root=root, raw=raw, first=first, second=second, lines=lines)


@pytest.fixture(scope="module")
def app(bundles):
    return create_app(bundles.first, threads=1, max_rows=100, max_body_bytes=200_000, reload_token_env=TOKEN_ENV)


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="module")
def predictor(bundles):
    return Predictor(bundles.first, threads=1)


def list_rows(lines: list[str]) -> list[list[str]]:
    """Criteo TSV lines (label first) -> rows as lists of raw strings in schema order (I1..I13, C1..C26)."""
    return [line.split("\t")[1:] for line in lines]


def dict_rows(predictor: Predictor, lines: list[str]) -> list[dict[str, str]]:
    return [dict(zip(predictor.columns, row)) for row in list_rows(lines)]


def upload(client, text: str | bytes, **params):
    data = text.encode() if isinstance(text, str) else text
    return client.post("/upload", params=params, files={"file": ("rows.txt", data, "text/plain")})


# --------------------------------------------------------------------------------------------
# endpoints
# --------------------------------------------------------------------------------------------

def test_predict_dicts_and_lists(client, bundles, predictor):
    expected = predictor.predict(list_rows(bundles.lines[:5])).scores
    for rows in (list_rows(bundles.lines[:5]), dict_rows(predictor, bundles.lines[:5])):
        r = client.post("/v1/predict", json={"rows": rows})
        assert r.status_code == 200, r.text
        body = r.json()
        np.testing.assert_array_equal(np.float32(body["probabilities"]), expected)
        assert body["model_version"].startswith("deepfm@")
        assert {"parse", "transform", "inference", "total"} <= set(body["timing_ms"])
    # a dict may leave columns out (missing) and carry label/id
    r = client.post("/v1/predict", json={"rows": [{"I1": 3, "C1": "abc", "label": 1}, {}]})
    assert r.status_code == 200 and len(r.json()["probabilities"]) == 2


def test_upload(client, bundles, predictor):
    expected = predictor.predict(list_rows(bundles.lines)).scores
    r = upload(client, "\n".join(bundles.lines) + "\n", user_id="u-7", debug="true")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["code"] == 200 and body["dtype"] == "float32" and body["user_id"] == "u-7"
    assert len(body["data"]) == len(bundles.lines) and all(len(p) == 1 for p in body["data"])
    np.testing.assert_allclose(np.float32(body["data"])[:, 0], expected, atol=1e-6)
    assert body["debug"]["format"] == "criteo" and body["debug"]["rows"] == len(bundles.lines)
    # label-less lines (Kaggle test layout) are detected too; no debug block by default
    r = upload(client, "\n".join(line.split("\t", 1)[1] for line in bundles.lines[:3]))
    assert r.status_code == 200 and "debug" not in r.json() and r.json()["user_id"] == ""
    np.testing.assert_allclose(np.float32(r.json()["data"])[:, 0], expected[:3], atol=1e-6)


def test_health_ready_metadata_openapi(client, predictor):
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    meta = client.get("/metadata").json()
    assert meta["columns"] == predictor.columns and meta["backend"] == "onnx"
    assert meta["manifest"]["model"]["name"] == "deepfm" and "source" not in meta["manifest"]
    assert meta["limits"] == {"max_rows": 100, "max_body_bytes": 200_000}
    schema = client.get("/openapi.json").json()
    assert {"/v1/predict", "/upload", "/health", "/ready", "/metadata", "/metrics", "/admin/reload"} <= set(schema["paths"])
    assert "rows" in json.dumps(schema["paths"]["/v1/predict"]["post"]["requestBody"])
    assert client.get("/docs").status_code == 200


def metric(text: str, name: str, **labels) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{{want}}} "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_change(client, bundles):
    before = client.get("/metrics").text
    client.post("/v1/predict", json={"rows": list_rows(bundles.lines[:3])})
    client.post("/v1/predict", content=b"{nope")
    after = client.get("/metrics")
    assert after.headers["content-type"].startswith("text/plain")
    text = after.text
    ok = dict(endpoint="/v1/predict", method="POST", status="200")
    bad = dict(endpoint="/v1/predict", method="POST", status="400")
    assert metric(text, "ctrlab_requests_total", **ok) == metric(before, "ctrlab_requests_total", **ok) + 1
    assert metric(text, "ctrlab_requests_total", **bad) == metric(before, "ctrlab_requests_total", **bad) + 1
    rows = dict(endpoint="/v1/predict")
    assert metric(text, "ctrlab_rows_scored_total", **rows) == metric(before, "ctrlab_rows_scored_total", **rows) + 3
    err = dict(endpoint="/v1/predict", kind="client")
    assert metric(text, "ctrlab_errors_total", **err) == metric(before, "ctrlab_errors_total", **err) + 1
    count = dict(endpoint="/v1/predict")
    assert (metric(text, "ctrlab_request_duration_seconds_count", **count)
            == metric(before, "ctrlab_request_duration_seconds_count", **count) + 2)
    assert 'ctrlab_request_duration_seconds_bucket{endpoint="/v1/predict",le="+Inf"}' in text
    assert "ctrlab_model_info{version=" in text


# --------------------------------------------------------------------------------------------
# bad input: 4xx with a message naming the row/line and field, never 500
# --------------------------------------------------------------------------------------------

def test_bad_predict_bodies(client, bundles, predictor):
    good = list_rows(bundles.lines[:2])
    short = [good[0], good[1][:-1]]
    wrong_dense = [good[0], ["abc"] + good[1][1:]]
    wrong_sparse = [good[0], good[1][:13] + [{"x": 1}] + good[1][14:]]
    cases = [
        (b"", 400, "empty request body"),
        (b"   ", 400, "empty request body"),
        (b"{nope", 400, "malformed JSON at line 1"),
        (b"\xff\xfe{}", 400, "not UTF-8"),
        (b"[1, 2]", 422, "expected a JSON object"),
        (b"{}", 422, 'missing field "rows"'),
        (json.dumps({"rows": good, "extra": 1}).encode(), 422, "unknown top-level field(s) ['extra']"),
        (b'{"rows": "x"}', 422, '"rows" must be a list'),
        (b'{"rows": []}', 422, '"rows" is empty'),
        (b'{"rows": [5]}', 422, "row 0 is a int"),
        (json.dumps({"rows": short}).encode(), 422, "row 1: expected 39 values"),
        (json.dumps({"rows": wrong_dense}).encode(), 422, "row 1, field 'I1': expected a number, got 'abc'"),
        (json.dumps({"rows": wrong_sparse}).encode(), 422, "row 1, field 'C1': expected a string"),
        (json.dumps({"rows": [{"I1": 1}, {"bogus": 2}]}).encode(), 422, "row 1: unknown column(s) ['bogus']"),
        (json.dumps({"rows": [{"I1": 1}, [1]]}).encode(), 422, "row 1: expected a dict like row 0"),
        (b'{"rows": [{"I1": NaN}]}', 422, "row 0, field 'I1': expected a finite number"),
        (json.dumps({"rows": [{"I1": True}]}).encode(), 422, "row 0, field 'I1'"),
        (json.dumps({"rows": good * 51}).encode(), 413, "102 rows exceed the limit of 100 rows"),
    ]
    for body, status, message in cases:
        r = client.post("/v1/predict", content=body, headers={"content-type": "application/json"})
        assert r.status_code == status, (body[:60], r.status_code, r.text)
        assert message in r.json()["detail"], (body[:60], r.json())


def test_oversized_bodies(client):
    big = b'{"rows": [' + b"[1]," * 60_000 + b"[1]]"
    r = client.post("/v1/predict", content=big)  # Content-Length says it: refused before reading
    assert r.status_code == 413 and "exceeds the limit of 200,000 bytes" in r.json()["detail"]

    def stream():  # chunked, no Content-Length: refused while reading, at the cap
        for _ in range(100):
            yield b" " * 10_000

    r = client.post("/v1/predict", content=stream())
    assert r.status_code == 413 and "exceeds the limit of 200,000 bytes" in r.json()["detail"]
    r = client.post("/upload", files={"file": ("big.txt", b"x" * 300_000, "text/plain")})
    assert r.status_code == 413


def test_bad_uploads(client, bundles):
    line = bundles.lines[0]
    fields = line.split("\t")
    bad_number = "\t".join(fields[:3] + ["xyz"] + fields[4:])
    cases = [
        (b"", 400, "the uploaded file is empty"),
        (b"\n\n", 400, "the uploaded file is empty"),
        ((line + "\n").encode() + b"1\t\xff\xfe\n", 400, "upload line 2, byte 3: not UTF-8"),
        (b"\x1f\x8b\x08\x00rest", 400, "gzip-compressed uploads are not accepted"),
        (b"hello world\n", 422, "cannot tell the input format"),
        ((line + "\n" + bad_number + "\n").encode(), 422, "upload:2: field 'I3'"),
        (("\n".join([line] * 102)).encode(), 413, "the limit is 100 rows"),
    ]
    for data, status, message in cases:
        r = upload(client, data)
        assert r.status_code == status, (data[:60], r.status_code, r.text)
        assert message in r.json()["detail"], (data[:60], r.json())
        assert "/tmp" not in r.json()["detail"]  # the server's temporary path is not shown
    r = client.post("/upload", data={"user_id": "1"})
    assert r.status_code == 400 and "no file" in r.json()["detail"]
    r = client.post("/upload", content=b"--x\r\nbroken", headers={"content-type": "multipart/form-data; boundary=x"})
    assert 400 <= r.status_code < 500


# --------------------------------------------------------------------------------------------
# consistency: /v1/predict, /upload and `ctrlab predict` on the same raw lines
# --------------------------------------------------------------------------------------------

def test_predict_upload_cli_agree(client, bundles, tmp_path):
    lines = bundles.lines
    via_json = np.array(client.post("/v1/predict", json={"rows": list_rows(lines)}).json()["probabilities"])
    via_upload = np.array(upload(client, "\n".join(lines) + "\n").json()["data"])[:, 0]
    data = tmp_path / "rows.tsv"
    data.write_text("\n".join(lines) + "\n")
    out = tmp_path / "scores.tsv"
    assert cli.main(["predict", str(bundles.first), str(data), "--out", str(out), "--threads", "1"]) == 0
    via_cli = np.array([float(x) for x in out.read_text().split()])
    assert len(via_json) == len(via_upload) == len(via_cli) == len(lines)
    np.testing.assert_allclose(via_json, via_upload, atol=1e-6, rtol=0)
    np.testing.assert_allclose(via_json, via_cli, atol=1e-6, rtol=0)


# --------------------------------------------------------------------------------------------
# reload
# --------------------------------------------------------------------------------------------

def test_reload_token(client, bundles, monkeypatch):
    body = {"bundle": str(bundles.first)}
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    r = client.post("/admin/reload", json=body, headers={"Authorization": "Bearer x"})
    assert r.status_code == 404 and "disabled" in r.json()["detail"]
    monkeypatch.setenv(TOKEN_ENV, "s3cret")
    r = client.post("/admin/reload", json=body)
    assert r.status_code == 401
    r = client.post("/admin/reload", json=body, headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 403
    auth = {"Authorization": "Bearer s3cret"}
    r = client.post("/admin/reload", json={"bundle": str(bundles.root / "nope")}, headers=auth)
    assert r.status_code == 422 and "reload failed, still serving" in r.json()["detail"]
    r = client.post("/admin/reload", json={}, headers=auth)
    assert r.status_code == 422
    r = client.post("/admin/reload", content=b"{", headers=auth)
    assert r.status_code == 400
    r = client.post("/admin/reload", json=body, headers=auth)
    assert r.status_code == 200 and r.json()["status"] == "reloaded"


def test_reload_under_load(bundles, monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, "tok")
    app = create_app(bundles.first, threads=1, reload_token_env=TOKEN_ENV)
    rows = list_rows(bundles.lines[:8])
    answers = {str(b): Predictor(b, threads=1).predict(rows).scores for b in (bundles.first, bundles.second)}
    assert not np.array_equal(*answers.values())  # the two bundles really differ
    seen_versions: set[str] = set()
    failures: list[str] = []
    counts = {"first": 0, "second": 0}
    stop = threading.Event()

    with TestClient(app) as client:
        def hammer():
            while not stop.is_set():
                r = client.post("/v1/predict", json={"rows": rows})
                if r.status_code != 200:
                    failures.append(r.text)
                    continue
                got = np.float32(r.json()["probabilities"])
                seen_versions.add(r.json()["model_version"])
                if np.array_equal(got, answers[str(bundles.first)]):
                    counts["first"] += 1
                elif np.array_equal(got, answers[str(bundles.second)]):
                    counts["second"] += 1
                else:
                    failures.append(f"mixed or unknown answer {got}")

        workers = [threading.Thread(target=hammer) for _ in range(4)]
        for w in workers:
            w.start()
        try:
            for i in range(6):
                target = bundles.second if i % 2 == 0 else bundles.first
                r = client.post("/admin/reload", json={"bundle": str(target)}, headers={"Authorization": "Bearer tok"})
                assert r.status_code == 200, r.text
                time.sleep(0.05)
        finally:
            stop.set()
            for w in workers:
                w.join(timeout=30)
    assert failures == []
    assert counts["first"] > 0 and counts["second"] > 0
    assert len(seen_versions) == 2


# --------------------------------------------------------------------------------------------
# a real server: `ctrlab serve` on a free loopback port
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("workers", [1, 2])
def test_serve_subprocess(bundles, workers):
    """One worker: the app object in the process; two: uvicorn's worker processes import the factory
    (with micro-batching on: a request alone in its window is scored exactly as without)."""
    batching = ["--batch-window-ms", "1"] if workers == 2 else []
    proc, base = start_server(bundles.first, args=["--threads", "1", "--workers", str(workers),
                                                   "--log-level", "warning", *batching], timeout=30)
    try:
        expected = Predictor(bundles.first, threads=1).predict(list_rows(bundles.lines[:3])).scores
        with httpx.Client(base_url=base, timeout=10) as http:
            for _ in range(3):
                r = http.post("/v1/predict", json={"rows": list_rows(bundles.lines[:3])})
                assert r.status_code == 200, r.text
                np.testing.assert_array_equal(np.float32(r.json()["probabilities"]), expected)
            r = http.post("/v1/predict", content=b"{")
            assert r.status_code == 400
            r = http.post("/upload", files={"file": ("x.txt", ("\n".join(bundles.lines[:3]) + "\n").encode())})
            assert r.status_code == 200 and len(r.json()["data"]) == 3
            assert "ctrlab_requests_total" in http.get("/metrics").text
    finally:
        stop_server(proc)


def test_worker_factory_takes_one_checked_config(bundles, monkeypatch):
    """uvicorn's worker processes get the whole ServeConfig as one JSON value, checked like a config."""
    cfg = ServeConfig(bundle=str(bundles.first), threads=1, max_rows=7, max_body_bytes=1000)
    monkeypatch.setenv(CONFIG_ENV, json.dumps(to_dict(cfg)))
    try:
        with TestClient(app_from_env()) as client:
            assert client.get("/metadata").json()["limits"] == {"max_rows": 7, "max_body_bytes": 1000}
    finally:
        gc.unfreeze()  # (a server process freezes its startup objects; this test process must not keep them)
    monkeypatch.setenv(CONFIG_ENV, json.dumps(dict(to_dict(cfg), max_rowz=3)))
    with pytest.raises(ConfigError, match="max_rowz.*did you mean 'max_rows'"):
        app_from_env()
    monkeypatch.setenv(CONFIG_ENV, json.dumps(dict(to_dict(cfg), workers=0)))
    with pytest.raises(ConfigError, match=r"serve\.workers: 0 is out of range"):
        app_from_env()
    monkeypatch.setenv(CONFIG_ENV, json.dumps(dict(to_dict(cfg), batch_window_ms=-1)))
    with pytest.raises(ConfigError, match=r"serve\.batch_window_ms: -1"):
        app_from_env()
