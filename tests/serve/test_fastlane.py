"""The fast lane answers /v1/predict and /upload exactly as the FastAPI routes it bypasses: same
status, same error bodies, same answers (apart from the timings); large or chunked bodies, and
uploads it does not take as they are, still go to the routes."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from conftest import tiny_bundle

from ctrlab.serve import fastlane
from ctrlab.serve.app import INLINE_BODY_BYTES, create_app


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    raw, bundle = tiny_bundle(tmp_path_factory.mktemp("fastlane"), 2000, seed=9)
    app = create_app(bundle, threads=1, max_rows=50, max_body_bytes=100_000)
    lines = raw.read_text().splitlines()[:60]
    with TestClient(app) as client:
        columns = client.get("/metadata").json()["columns"]
        rows = [dict(zip(columns, [float(v) if v and i < 13 else (v or None) for i, v in
                                   enumerate(line.split("\t")[1:])])) for line in lines]
        yield client, rows


def _bodies(rows: list[dict]) -> dict[str, bytes]:
    bad_value = [dict(rows[0]), dict(rows[1], I3="abc")]
    return {
        "5 rows": json.dumps({"rows": rows[:5]}).encode(),
        "columnar": json.dumps({"columns": {k: [r[k] for r in rows[:3]] for k in rows[0]}}).encode(),
        "lists": json.dumps({"rows": [list(r.values()) for r in rows[:2]]}).encode(),
        "bad value": json.dumps({"rows": bad_value}).encode(),
        "unknown column": json.dumps({"rows": [dict(rows[0], nope=1)]}).encode(),
        "malformed": b'{"rows": [',
        "empty": b"",
        "not an object": b"[1, 2]",
        "too many rows": json.dumps({"rows": rows[:51]}).encode(),
        "nested": b'{"rows":[' + b"[" * 40 + b"]" * 40 + b"]}",
        "not utf-8": b'{"rows": ["\xff"]}',
        "large (route)": json.dumps({"rows": rows[:50]}).encode(),
    }


def _answer(client, body: bytes, chunked: bool = False) -> tuple[int, dict]:
    content = iter([body]) if chunked else body  # an iterator: sent chunked, without Content-Length
    response = client.post("/v1/predict", content=content, headers={"Content-Type": "application/json"})
    payload = response.json()
    payload.pop("timing_ms", None)
    return response.status_code, payload


def test_lane_answers_as_the_route(setup, monkeypatch):
    client, rows = setup
    bodies = _bodies(rows)
    assert len(bodies["large (route)"]) > INLINE_BODY_BYTES >= len(bodies["5 rows"])
    calls = []
    original = fastlane.FastLane._small
    monkeypatch.setattr(fastlane.FastLane, "_small", lambda self, h: calls.append(original(self, h)) or calls[-1])
    by_lane = {name: _answer(client, body) for name, body in bodies.items()}
    small = sum(len(body) <= INLINE_BODY_BYTES for body in bodies.values())
    assert small >= 10 and calls.count(True) == small  # every small body took the lane, no large one
    monkeypatch.setattr(fastlane.FastLane, "_small", lambda self, h: False)
    by_route = {name: _answer(client, body) for name, body in bodies.items()}
    assert by_lane == by_route
    assert by_lane["5 rows"][0] == 200 and len(by_lane["5 rows"][1]["probabilities"]) == 5
    assert {name: status for name, (status, _) in by_lane.items()} == {
        "5 rows": 200, "columnar": 200, "lists": 200, "bad value": 422, "unknown column": 422, "malformed": 400,
        "empty": 400, "not an object": 422, "too many rows": 413, "nested": 400, "not utf-8": 400,
        "large (route)": 200}
    assert "row 1, field 'I3'" in by_lane["bad value"][1]["detail"]


def test_chunked_bodies_take_the_route(setup):
    client, rows = setup
    body = _bodies(rows)["5 rows"]
    assert _answer(client, body, chunked=True) == _answer(client, body)


def _upload(client, files=None, data=None, params=None, content=None, headers=None) -> tuple[int, dict]:
    response = client.post("/upload", files=files, data=data, params=params, content=content, headers=headers)
    payload = response.json()
    payload.get("debug", {}).pop("timing_ms", None)
    return response.status_code, payload


def test_upload_lane_answers_as_the_route(setup, monkeypatch):
    client, rows = setup
    lines = ["\t".join(["1"] + ["" if r[c] is None else (str(int(r[c])) if i < 13 else r[c])
                                 for i, c in enumerate(r)]) for r in rows[:5]]
    text = "\n".join(lines) + "\n"
    cases = {
        "5 lines": dict(files={"file": ("rows.txt", text)}),
        "debug and user": dict(files={"file": ("rows.txt", text)}, params={"debug": "true", "user_id": "u7"}),
        "debug 0": dict(files={"file": ("rows.txt", text)}, params={"debug": "0"}),
        "bad line": dict(files={"file": ("rows.txt", text.replace("\t", "\tx", 1))}),
        "empty file": dict(files={"file": ("rows.txt", "")}),
        "not utf-8": dict(files={"file": ("rows.txt", b"\xff\xfe1\t2\n")}),
        "a field and a file (route)": dict(files={"file": ("rows.txt", text)}, data={"note": "x"}),
        "no file (route)": dict(data={"note": "x"}),
        "odd query (route)": dict(files={"file": ("rows.txt", text)}, params={"debug": "maybe"}),
        "not multipart (route)": dict(content=text.encode(), headers={"Content-Type": "text/plain"}),
    }
    taken = []
    original = fastlane.single_file_part
    monkeypatch.setattr(fastlane, "single_file_part", original)  # (restored after the test)
    import ctrlab.serve.app as app_module

    def spy(body, headers):
        found = original(body, headers)
        taken.append(found is not None)
        return found

    monkeypatch.setattr(app_module, "single_file_part", spy)
    by_lane = {name: _upload(client, **kw) for name, kw in cases.items()}
    assert taken.count(True) == 7  # one file part: the six plain uploads and the odd query (which the route reads)
    monkeypatch.setattr(fastlane.FastLane, "_small", lambda self, h: False)
    by_route = {name: _upload(client, **kw) for name, kw in cases.items()}
    assert by_lane == by_route
    statuses = {name: status for name, (status, _) in by_lane.items()}
    assert statuses["5 lines"] == 200 and len(by_lane["5 lines"][1]["data"]) == 5
    assert by_lane["debug and user"][1]["user_id"] == "u7" and by_lane["debug and user"][1]["debug"]["rows"] == 5
    assert statuses["bad line"] == 422 and "upload:1" in by_lane["bad line"][1]["detail"]
    assert statuses["empty file"] == 400 and statuses["not utf-8"] == 400 and statuses["no file (route)"] == 400
    assert statuses["odd query (route)"] == 422


def test_single_file_part_edge_cases():
    headers = [(b"content-type", b'multipart/form-data; boundary="b0"')]
    body = b'--b0\r\nContent-Disposition: form-data; name="file"; filename="a.txt"\r\n\r\nx\ty\r\n--b0--\r\n'
    assert fastlane.single_file_part(body, headers) == b"x\ty"
    two = body.replace(b"--b0--", b'--b0\r\nContent-Disposition: form-data; name="f2"; filename="b"\r\n\r\nz\r\n--b0--')
    assert fastlane.single_file_part(two, headers) is None
    inside = body.replace(b"x\ty", b"x--b0y")  # the boundary inside the content: the route's parser
    assert fastlane.single_file_part(inside, headers) is None
    field = body.replace(b'; filename="a.txt"', b"")
    assert fastlane.single_file_part(field, headers) is None
    assert fastlane.single_file_part(body, [(b"content-type", b"text/plain")]) is None
