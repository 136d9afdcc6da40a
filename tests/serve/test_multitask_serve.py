"""Serving a multi-task bundle (issue 16).

* ``/v1/predict`` answers ``{"tasks": [...], "probabilities": {task: [p, ...]}, "model_version",
  "timing_ms"}``, equal to the Predictor's scores within 1e-6 (rows, lists and the columnar form);
* ``/upload`` keeps the PaddleRec shape, one column per task: ``{"data": [[p_click, p_conv], ...]}``
  (small uploads through the small-request lane and larger ones through the file path);
* the fast lane gives the same bytes (apart from the timings) as the routes;
* ``/metadata`` names the tasks; the micro-batcher splits [N, T] scores back per request.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from ctrlab.export.bundle import export_bundle
from ctrlab.features.online import SMALL_INPUT_ROWS
from ctrlab.inference import Predictor
from ctrlab.serve import fastlane
from ctrlab.serve.app import INLINE_BODY_BYTES, create_app
from ctrlab.serve.batching import MicroBatcher
from ctrlab.serve.model import load_model
from ctrlab.serve.scoring import score_rows

_spec = importlib.util.spec_from_file_location(
    "multitask_bundle_helpers", Path(__file__).resolve().parents[1] / "export" / "test_multitask_bundle.py")
helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helpers)  # type: ignore[union-attr]

TASKS = ["click", "conversion"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("mt_serve")
    store = helpers.multitask_store(root, rows=800)
    helpers.fake_multitask_run(store, root / "run", "mmoe")
    bundle = root / "bundle"
    export_bundle(root / "run", bundle, golden_rows=100, log=lambda _m: None)
    lines = (root / "mt.tsv").read_text().splitlines()
    rows = [{"user": f[2], "item": f[3], "price": float(f[4])} for f in (line.split("\t") for line in lines[1:])]
    app = create_app(bundle, threads=1, max_rows=2000, max_body_bytes=2_000_000)
    with TestClient(app) as client:
        yield client, bundle, rows, lines


def _strip(payload: dict) -> dict:
    payload = dict(payload)
    payload.pop("timing_ms", None)
    payload.get("debug", {}).pop("timing_ms", None)
    return payload


def test_predict_answer_has_one_list_per_task(setup):
    client, bundle, rows, _ = setup
    expected = Predictor(bundle, threads=1).predict(rows[:20]).scores
    answer = client.post("/v1/predict", json={"rows": rows[:20]}).json()
    assert list(answer) == ["tasks", "probabilities", "model_version", "timing_ms"]
    assert answer["tasks"] == TASKS and list(answer["probabilities"]) == TASKS
    got = np.array([answer["probabilities"][t] for t in TASKS]).T
    assert got.shape == (20, 2)
    np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)
    assert set(answer["timing_ms"]) >= {"read", "json", "parse", "transform", "inference", "total"}
    # the columnar form and lists in column order: the same answer
    columns = {c: [r[c] for r in rows[:20]] for c in rows[0]}
    assert _strip(client.post("/v1/predict", json={"columns": columns}).json()) == _strip(answer)
    names = client.get("/metadata").json()["columns"]
    lists = [[r[c] for c in names] for r in rows[:20]]
    assert _strip(client.post("/v1/predict", json={"rows": lists}).json()) == _strip(answer)


def test_large_request_takes_the_worker_path_and_agrees(setup):
    client, bundle, rows, _ = setup
    body = json.dumps({"rows": rows[:700]}).encode()
    assert len(body) > INLINE_BODY_BYTES
    answer = client.post("/v1/predict", content=body, headers={"Content-Type": "application/json"}).json()
    expected = Predictor(bundle, threads=1).predict(rows[:700]).scores
    got = np.array([answer["probabilities"][t] for t in TASKS]).T
    np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)


def test_upload_answers_one_column_per_task(setup):
    client, bundle, rows, lines = setup
    predictor = Predictor(bundle, threads=1)
    small = "\n".join(lines[:11]) + "\n"  # header + 10 labelled lines: the small-request lane
    answer = client.post("/upload", files={"file": ("rows.tsv", small)}, params={"debug": "1"}).json()
    assert answer["code"] == 200 and answer["dtype"] == "float32" and answer["debug"]["rows"] == 10
    data = np.array(answer["data"])
    assert data.shape == (10, 2)
    np.testing.assert_allclose(data, predictor.predict(rows[:10]).scores, atol=1e-6, rtol=0)
    large = "\n".join(lines[:701]) + "\n"  # more lines than the small-request lane takes: scored as a file
    assert 700 > SMALL_INPUT_ROWS
    data = np.array(client.post("/upload", files={"file": ("rows.tsv", large)}).json()["data"])
    assert data.shape == (700, 2)
    np.testing.assert_allclose(data, predictor.predict(rows[:700]).scores, atol=1e-6, rtol=0)
    unlabelled = "\n".join("\t".join(line.split("\t")[2:]) for line in lines[:6]) + "\n"
    data = np.array(client.post("/upload", files={"file": ("rows.tsv", unlabelled)}).json()["data"])
    np.testing.assert_allclose(data, predictor.predict(rows[:5]).scores, atol=1e-6, rtol=0)


def test_fast_lane_gives_the_route_bytes(setup, monkeypatch):
    client, _, rows, lines = setup
    bodies = {"5 rows": json.dumps({"rows": rows[:5]}).encode(),
              "columnar": json.dumps({"columns": {c: [r[c] for r in rows[:3]] for c in rows[0]}}).encode(),
              "bad value": json.dumps({"rows": [dict(rows[0], price="abc")]}).encode()}
    upload = "\n".join(lines[:6]) + "\n"

    def answers() -> dict:
        out = {}
        for name, body in bodies.items():
            r = client.post("/v1/predict", content=body, headers={"Content-Type": "application/json"})
            payload = r.json()
            timing = payload.pop("timing_ms", None)
            # the bytes apart from the timings: the same JSON text once the timings are taken out
            out[name] = (r.status_code, r.content.replace(json.dumps(timing, separators=(",", ":")).encode(), b"")
                         if timing else r.content)
        r = client.post("/upload", files={"file": ("rows.tsv", upload)}, params={"user_id": "u1"})
        out["upload"] = (r.status_code, r.content)
        return out

    calls = []
    original = fastlane.FastLane._small
    monkeypatch.setattr(fastlane.FastLane, "_small", lambda self, h: calls.append(original(self, h)) or calls[-1])
    by_lane = answers()
    assert calls and all(calls)  # every request took the lane
    monkeypatch.setattr(fastlane.FastLane, "_small", lambda self, h: False)
    by_route = answers()
    assert by_lane == by_route
    assert by_lane["5 rows"][0] == 200 and by_lane["bad value"][0] == 422
    assert json.loads(by_lane["upload"][1])["data"][0].__len__() == 2


def test_metadata_names_the_tasks(setup):
    client, _, _, _ = setup
    meta = client.get("/metadata").json()
    assert meta["tasks"] == TASKS and meta["multi_task"] is True
    assert meta["manifest"]["tasks"] == TASKS
    assert meta["manifest"]["outputs"]["probabilities"]["shape"] == ["batch", 2]


def test_micro_batcher_splits_task_columns_per_request(setup):
    _, bundle, rows, _ = setup
    loaded = load_model(bundle, "onnx", 1)
    requests = [rows[0:3], rows[3:4], rows[4:9]]

    async def batched():
        batcher = MicroBatcher(0.05)
        return await asyncio.gather(*(batcher.score(loaded, r) for r in requests))

    results = asyncio.run(batched())
    for rs, (probs, _timing) in zip(requests, results):
        alone, _ = score_rows(loaded, rs)
        assert probs.shape == (len(rs), 2)
        np.testing.assert_allclose(probs, alone, atol=1e-6, rtol=0)


def test_batched_app_answers_like_the_unbatched_one(setup):
    _, bundle, rows, _ = setup
    app = create_app(bundle, threads=1, batch_window_ms=2)
    with TestClient(app) as batched:
        answer = batched.post("/v1/predict", json={"rows": rows[:4]}).json()
    expected = Predictor(bundle, threads=1).predict(rows[:4]).scores
    assert answer["tasks"] == TASKS
    np.testing.assert_allclose(np.array([answer["probabilities"][t] for t in TASKS]).T, expected, atol=1e-6, rtol=0)
