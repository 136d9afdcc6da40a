"""Hostile request bodies against the HTTP server (ctrlab.serve.app, ctrlab.serve.limits):

* every hostile or malformed body is a 4xx naming what is wrong (row/field where there is one),
  never a 500: lone surrogates, deep nesting (/v1/predict and /admin/reload), numbers that
  overflow, NaN/Infinity, values that are lists/objects, invalid UTF-8, wrong shapes;
* the raw-bytes pre-scan agrees with ``json.loads`` (value or refusal) on random and corrupted
  bodies, and refuses too many rows / values before any parse;
* a large body parsed in pieces gives the same scores as the rows scored directly;
* a real server under a flood of maximum-size bodies of empty rows answers /health throughout
  (while the big bodies are in flight), refuses them with 413 and stays within a memory bound.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from ctrlab.inference import Predictor
from ctrlab.serve import limits
from ctrlab.serve.app import create_app
from ctrlab.serve import process as serve_process
from ctrlab.serve.process import start_server, stop_server
from conftest import tiny_bundle

TOKEN_ENV = "CTRLAB_TEST_FAULTS_RELOAD_TOKEN"
MAX_ROWS = 100

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faults_serve")
    return tiny_bundle(root, 1000, seed=3)[1]


@pytest.fixture(scope="module")
def client(bundle):
    app = create_app(bundle, threads=1, max_rows=MAX_ROWS, max_body_bytes=4_000_000, reload_token_env=TOKEN_ENV)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def nested(depth: int, inner: bytes = b"1") -> bytes:
    return b"[" * depth + inner + b"]" * depth


PREDICT_CASES = [
    # (body, status, words the detail must hold)
    (b'{"rows":[{"C1":"\\ud800"}]}', 422, ["row 0", "'C1'", "surrogate"]),
    (b'{"rows":[{"C1":"ok"},{"C2":"a\\udfffb"}]}', 422, ["row 1", "'C2'", "surrogate"]),
    (b'{"rows":[["\\udc00"]]}', 422, ["row 0", "'I1'", "surrogate"]),
    (b'{"rows":[{"\\ud800":"x"}]}', 422, ["row 0", "surrogate"]),
    (b'{"\\ud800":1}', 422, ["unknown top-level field"]),
    (b'{"rows":[' + nested(8000) + b"]}", 400, ["nested deeper than"]),
    (b'{"rows":[{"C1":' + b'{"a":' * 8000 + b"1" + b"}" * 8000 + b"}]}", 400, ["nested deeper than"]),
    (b'{"rows":[{"C1":' + nested(40) + b"}]}", 400, ["nested deeper than"]),
    (nested(9000), 400, ["nested deeper than"]),
    (b'{"rows":[{"C1":' + nested(5) + b"}]}", 422, ["row 0", "'C1'", "expected a string"]),
    (b'{"rows":[{"I1":"1e400"}]}', 422, ["row 0", "'I1'"]),
    (b'{"rows":[{"I2":1e400}]}', 422, ["row 0", "'I2'", "finite"]),
    (b'{"rows":[{"I1":-1e400}]}', 422, ["row 0", "'I1'", "finite"]),
    (b'{"rows":[{"I3":' + b"9" * 401 + b"}]}", 422, ["row 0", "'I3'"]),
    (b'{"rows":[{"I1":' + b"9" * 5000 + b"}]}", 400, ["digits"]),
    (b'{"rows":[{"I1":NaN}]}', 422, ["row 0", "'I1'", "finite"]),
    (b'{"rows":[{"I1":Infinity}]}', 422, ["row 0", "'I1'", "finite"]),
    (b'{"rows":[{"I1":-Infinity}]}', 422, ["row 0", "'I1'", "finite"]),
    (b'{"rows":[{"C1":[1,2]}]}', 422, ["row 0", "'C1'"]),
    (b'{"rows":[{"I1":{"a":1}}]}', 422, ["row 0", "'I1'"]),
    (b'{"rows":[{"C1":"\xff"}]}', 400, ["not UTF-8"]),
    (b'\xef\xbb\xbf{"rows":[{}]}', 400, ["malformed JSON"]),
    (b"", 400, ["empty request body"]),
    (b"[1]", 422, ["expected a JSON object"]),
    (b'"rows"', 422, ["expected a JSON object"]),
    (b'{"rows":{"a":1}}', 422, ['"rows" must be a list']),
    (b'{"rows":["x"]}', 422, ["row 0"]),
    (b'{"rows":[{}]]', 400, ["malformed JSON"]),
    (b'{"rows":[' + b"{}," * 3000 + b"{}]}", 413, ["3,001 rows exceed the limit of 100 rows"]),
    (b'{"rows":[[' + b"0," * 60_000 + b"0]]}", 413, ["JSON values"]),
]


@pytest.mark.parametrize("body,status,words", PREDICT_CASES, ids=range(len(PREDICT_CASES)))
def test_hostile_predict_bodies_are_4xx(client, body, status, words):
    r = client.post("/v1/predict", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, (body[:80], r.status_code, r.text[:300])
    detail = r.json()["detail"]
    for word in words:
        assert word in detail, (body[:80], detail)


def test_wrong_content_types_are_4xx(client):
    r = client.post("/v1/predict", files={"file": ("rows.txt", b"1\t2\n")})
    assert r.status_code == 400 and "malformed JSON" in r.json()["detail"]
    r = client.post("/upload", content=b'{"rows":[{}]}', headers={"content-type": "application/json"})
    assert r.status_code == 400 and "no file" in r.json()["detail"]
    r = client.post("/upload", content=b"a=1&" * 100, headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 400


def test_hostile_reload_bodies_are_4xx(client, monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, "tok")
    auth = {"Authorization": "Bearer tok"}
    cases = [
        (nested(8000), 400, "nested deeper than"),
        (b'{"bundle":' + nested(8000, b'"x"') + b"}", 400, "nested deeper than"),
        (b'{"bundle":"\\ud800"}', 422, "reload failed"),
        (b'{"bundle":' + b"1" * 5000 + b"}", 400, "digits"),
        (b'{"bundle":[' + b"1," * 10_000 + b"1]}", 413, "JSON values"),  # (over SMALL_BODY_BYTES: scanned)
        (b'{"bundle":"\xff"}', 400, "not UTF-8"),
        (b"", 400, "empty request body"),
    ]
    for body, status, words in cases:
        r = client.post("/admin/reload", content=body, headers=auth)
        assert r.status_code == status, (body[:60], r.status_code, r.text[:300])
        assert words in r.json()["detail"], (body[:60], r.json())


def test_no_server_errors_counted(client):
    """After the hostile bodies above (same module client): the server answered no 5xx at all."""
    for body, _status, _words in PREDICT_CASES:
        client.post("/v1/predict", content=body)
    text = client.get("/metrics").text
    assert 'kind="client"' in text
    assert 'kind="server"' not in text and 'status="500"' not in text


# --------------------------------------------------------------------------------------------
# the pre-scan: agrees with json.loads, and counts before parsing
# --------------------------------------------------------------------------------------------

def _random_value(rng: random.Random, depth: int):
    r = rng.random()
    if depth > 4 or r < 0.5:
        return rng.choice(['a"b', "x\\", '\\\\"', "[{", "}]", ",", 1, None, 1.5, "é中", "\U0001F600", -0.0])
    if r < 0.75:
        return [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {rng.choice(["k", '"[', "\\", ","]) + str(i): _random_value(rng, depth + 1) for i in range(rng.randint(0, 3))}


def test_decode_json_agrees_with_json_loads(monkeypatch):
    """Random bodies, half of them corrupted by one byte, scanned in tiny chunks and parsed in
    tiny pieces: decode_json gives json.loads's value, or a 4xx where json.loads fails."""
    monkeypatch.setattr(limits, "SMALL_BODY_BYTES", 0)
    rng = random.Random(7)
    outcomes = set()
    for _ in range(1500):
        value = {"rows": [_random_value(rng, 2) for _ in range(rng.randint(0, 20))]}
        body = json.dumps(value, ensure_ascii=rng.random() < 0.5, indent=rng.choice([None, 1])).encode()
        if rng.random() < 0.5:
            i = rng.randrange(len(body))
            body = body[:i] + rng.choice([b",", b"", b"]", b"[", b"\\", b'"', b" ", b"\x0c"]) + body[i + 1:]
        monkeypatch.setattr(limits, "SCAN_CHUNK_BYTES", rng.choice([1, 3, 64, 1 << 20]))
        monkeypatch.setattr(limits, "PIECE_BYTES", rng.choice([1, 5, 40, 1 << 20]))
        try:
            want = json.loads(body.decode("utf-8"))
        except ValueError:
            with pytest.raises(limits.ClientError) as refused:
                limits.decode_json(body, expected="x", max_depth=99)
            assert 400 <= refused.value.status_code < 500
            outcomes.add("refused")
            continue
        assert limits.decode_json(body, expected="x", max_depth=99) == want, body
        outcomes.add("parsed")
    assert outcomes == {"parsed", "refused"}


def test_rows_and_depth_refused_before_parsing(monkeypatch):
    """A body over the row cap, or too deep, is refused without json.loads ever running."""
    def no_parse(*_args, **_kwargs):
        raise AssertionError("json.loads ran on a body the scan should have refused")

    monkeypatch.setattr(limits.json, "loads", no_parse)
    flood = b'{"rows":[' + b"{}," * 2_000_000 + b"{}]}"
    with pytest.raises(limits.ClientError) as refused:
        limits.decode_json(flood, expected="x", max_items=50_000)
    assert refused.value.status_code == 413 and "exceed the limit of 50,000 rows" in refused.value.detail
    # rows hidden behind a long string (escapes included) are still counted
    late = b'{"x":"' + b'\\"[{,' * 300_000 + b'","rows":[' + b"[]," * 60_000 + b"[]]}"
    with pytest.raises(limits.ClientError) as refused:
        limits.decode_json(late, expected="x", max_items=50_000)
    assert refused.value.status_code == 413 and "60,001 rows" in refused.value.detail
    with pytest.raises(limits.ClientError) as refused:
        limits.decode_json(b'{"rows":[' + nested(100) + b"]}", expected="x")
    assert refused.value.status_code == 400 and "nested deeper than 32 levels" in refused.value.detail


def test_large_body_in_pieces_scores_like_direct(bundle, monkeypatch):
    """A body over PIECE_BYTES is parsed in pieces: same probabilities as scoring the rows directly."""
    monkeypatch.setattr(limits, "PIECE_BYTES", 4096)
    predictor = Predictor(bundle, threads=1)
    rng = np.random.default_rng(0)
    rows = [{c: (float(rng.integers(0, 50)) if c in predictor.dense_columns else f"v{rng.integers(0, 30)}, \"]")
             for c in predictor.columns} for _ in range(300)]
    body = json.dumps({"rows": rows}).encode()
    assert len(body) > 20 * limits.PIECE_BYTES
    app = create_app(bundle, threads=1, max_rows=1000, max_body_bytes=4_000_000)
    with TestClient(app) as c:
        r = c.post("/v1/predict", content=body)
    assert r.status_code == 200, r.text[:300]
    np.testing.assert_array_equal(np.float32(r.json()["probabilities"]), predictor.predict(rows).scores)


# --------------------------------------------------------------------------------------------
# a real server under a flood of maximum-size bodies
# --------------------------------------------------------------------------------------------

@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads server memory from /proc")
def test_health_answers_during_flood(bundle):
    """Concurrent maximum-size bodies of millions of empty rows: every one is refused (413), /health
    answers every poll, also while the big bodies are in flight, and the server's peak memory grows
    by a bounded multiple of the body cap (parsing them would take ~25x each)."""
    max_body = 8 << 20
    proc, base = start_server(bundle, args=["--threads", "1", "--log-level", "warning",
                                            "--max-body-bytes", str(max_body)], timeout=60)
    host, port = base.rsplit("//", 1)[1].split(":")
    flood = b'{"rows":[' + b"{}," * ((max_body - 20) // 3) + b"{}]}"
    assert len(flood) <= max_body
    statuses: list[int] = []
    health: list[int] = []
    in_flight = [0]
    answered_during = [0]
    lock = threading.Lock()
    stop = threading.Event()

    def big() -> None:
        for _ in range(2):
            with lock:
                in_flight[0] += 1
            conn = http.client.HTTPConnection(host, int(port), timeout=120)
            try:
                conn.request("POST", "/v1/predict", body=flood, headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                resp.read()
                statuses.append(resp.status)
            finally:
                conn.close()
                with lock:
                    in_flight[0] -= 1

    def poll() -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        try:
            while not stop.is_set():
                conn.request("GET", "/health")
                resp = conn.getresponse()
                resp.read()
                with lock:
                    health.append(resp.status)
                    answered_during[0] += in_flight[0] > 0
                time.sleep(0.005)
        finally:
            conn.close()

    try:
        before = serve_process.memory_mb(proc.pid)
        poller = threading.Thread(target=poll)
        poller.start()
        senders = [threading.Thread(target=big) for _ in range(3)]
        for t in senders:
            t.start()
        for t in senders:
            t.join()
        stop.set()
        poller.join()
        after = serve_process.memory_mb(proc.pid)
        assert statuses == [413] * 6
        assert health and set(health) == {200}
        assert answered_during[0] >= 1  # /health was answered while big bodies were being handled
        grown_mb = after["VmHWM"] - max(before["VmRSS"], before["VmHWM"])
        assert grown_mb < 3 * 6 * max_body / 2**20, (before, after)  # 3 at once, each < 6x the cap
    finally:
        stop.set()
        stop_server(proc)
