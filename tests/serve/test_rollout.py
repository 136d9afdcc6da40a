"""Roll-out of daily bundles into a running server (issue 17).

Three days of synthetic Criteo-layout logs (``write_daily_synthetic``); each day gets its own tiny
DeepFM (prepare the day -> 1 epoch -> ``export_bundle``). A real ``ctrlab serve`` process (uvicorn,
one worker, micro-batching on so that the batcher sees requests of two models around a swap) starts
on day 1's bundle; client threads send a steady stream of ``/v1/predict`` (several fixed row sets)
and ``/upload`` requests while the test reloads day 2, tries a corrupt bundle, then reloads day 3
(``POST /admin/reload``). Checked:

* every request answered 200 (no failed ones);
* every answer's ``model_version`` is one of the three bundles' and all its probabilities equal
  that bundle's own ``Predictor`` scores of those rows (1e-6; the days' scores differ by far
  more on every row, so an answer mixing two models cannot pass);
* per client, versions only move forward in time; a request sent after a reload returned is
  answered by that day's model or a later one; after the last reload every answer is day 3's;
* a refused reload (corrupt bundle) is a 422 and the current model keeps serving;
* a bundle with another input schema (a multi-task bundle) is accepted cleanly
  (``columns_changed``), answers in its own schema, old-schema rows get a 4xx (never a 500), and
  reloading day 3 afterwards restores it.
"""

from __future__ import annotations

import importlib.util
import shutil
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pytest

from ctrlab.config import ServeConfig, load_config
from ctrlab.data.prepare import PrepareOptions, prepare
from ctrlab.data.synth_days import write_daily_synthetic
from ctrlab.export.bundle import export_bundle
from ctrlab.serve.model import load_model
from ctrlab.serve.process import start_server, stop_server
from ctrlab.train.run import run_training

DAYS = 3
ROWS_PER_DAY = 1500
TOKEN = "rollout-secret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# fixed row sets, one per /v1/predict client (different sizes: the batcher joins and splits them)
SUBSETS = [(0, 8), (8, 13), (13, 25), (25, 26)]
UPLOAD_LINES = 6
TOL = 1e-6

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def quiet(_msg: str) -> None:
    pass


def _multitask_helpers():
    spec = importlib.util.spec_from_file_location(
        "rollout_multitask_helpers", Path(__file__).resolve().parents[1] / "export" / "test_multitask_bundle.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def day_bundle(root: Path, day_file: Path, k: int) -> Path:
    """Day k's model: its own store, a 1-epoch tiny DeepFM, its bundle."""
    store, run_dir, bundle = root / f"store{k}", root / f"run{k}", root / f"bundle_day{k}"
    prepare(PrepareOptions(train=[str(day_file)]), store, progress=False, log=quiet)
    cfg = load_config(None, {"data.store": str(store), "run_dir": str(run_dir), "model.name": "deepfm",
                             "model.params.embedding_dim": 4, "model.params.hidden_units": [8],
                             "train.threads": 1, "train.epochs": 1, "train.batch_size": 256, "train.lr": 0.01,
                             "train.log_every": 1000, "train.eval_batch_size": 500, "train.seed": k})
    run_training(cfg, progress=False, log=quiet)
    export_bundle(run_dir, bundle, epoch=1, log=quiet)
    return bundle


@pytest.fixture(scope="module")
def days(tmp_path_factory):
    root = tmp_path_factory.mktemp("rollout")
    info = write_daily_synthetic(root / "logs", DAYS, ROWS_PER_DAY, seed=17)
    files = sorted((root / "logs").glob("day*.tsv"))
    assert len(files) == DAYS, info
    bundles = [day_bundle(root, f, k + 1) for k, f in enumerate(files)]
    # the traffic: rows of the newest day (values each model has and has not seen)
    lines = files[-1].read_text().splitlines()[:max(b for _, b in SUBSETS)]
    rows = [line.split("\t")[1:] for line in lines]
    # what each day's model answers, scored by its own Predictor as the server loads it
    versions, scores, uploads = [], [], []
    for bundle in bundles:
        loaded = load_model(bundle, ServeConfig.backend, 1)
        versions.append(loaded.version)
        scores.append(loaded.predictor.predict(rows).scores)
        uploads.append(loaded.predictor.predict(rows[:UPLOAD_LINES]).scores)
        del loaded
    assert len(set(versions)) == DAYS, versions
    for i in range(DAYS):  # every row tells the days apart: a mixed answer cannot match one day
        for j in range(i):
            assert np.abs(scores[i] - scores[j]).min() > 100 * TOL
    # a corrupt copy of day 3 (its model file altered: the bundle's hashes refuse it)
    corrupt = root / "bundle_corrupt"
    shutil.copytree(bundles[-1], corrupt)
    model_file = corrupt / "model.onnx"
    data = bytearray(model_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model_file.write_bytes(bytes(data))
    return SimpleNamespace(root=root, bundles=bundles, versions=versions, rows=rows, scores=scores,
                           uploads=uploads, upload_text="\n".join(lines[:UPLOAD_LINES]) + "\n", corrupt=corrupt)


@pytest.fixture(scope="module")
def multitask_bundle(tmp_path_factory):
    """A bundle of another input schema (user, item, price; two tasks) and rows for it."""
    helpers = _multitask_helpers()
    root = tmp_path_factory.mktemp("rollout_mt")
    store = helpers.multitask_store(root, rows=300)
    helpers.fake_multitask_run(store, root / "run", "mmoe")
    bundle = root / "bundle"
    export_bundle(root / "run", bundle, golden_rows=50, log=quiet)
    lines = (root / "mt.tsv").read_text().splitlines()[1:6]
    rows = [{"user": f[2], "item": f[3], "price": float(f[4])} for f in (line.split("\t") for line in lines)]
    return bundle, rows


@pytest.fixture(scope="module")
def server(days, multitask_bundle):
    mp = pytest.MonkeyPatch()
    mp.setenv("CTRLAB_RELOAD_TOKEN", TOKEN)  # the server's default reload_token_env
    proc, base = start_server(days.bundles[0], args=["--threads", "1", "--workers", "1", "--log-level", "warning",
                                                     "--batch-window-ms", "2"], timeout=60)
    mp.undo()
    try:
        yield base
    finally:
        stop_server(proc)


def reload(http: httpx.Client, bundle: Path) -> httpx.Response:
    return http.post("/admin/reload", json={"bundle": str(bundle)}, headers=AUTH, timeout=60)


def test_rollout_three_days_under_load(days, server):
    day_of = {v: k for k, v in enumerate(days.versions)}  # version -> 0-based day
    log: list[list[tuple[float, float, int]]] = []  # per client: (sent, answered, day)
    failures: list[str] = []
    stop = threading.Event()

    def check(got: np.ndarray, version: str, expected: list[np.ndarray], what: str) -> int | None:
        if version not in day_of:
            failures.append(f"{what}: unknown model_version {version!r}")
            return None
        day = day_of[version]
        want = expected[day]
        if got.shape != want.shape or not np.allclose(got, want, atol=TOL, rtol=0):
            failures.append(f"{what}: answer of {version} is not day {day + 1}'s scores: {got} vs {want}")
        return day

    def predict_client(lo: int, hi: int, entries: list) -> None:
        body = {"rows": days.rows[lo:hi]}
        expected = [s[lo:hi] for s in days.scores]
        with httpx.Client(base_url=server, timeout=30) as http:
            while not stop.is_set():
                sent = time.monotonic()
                try:
                    r = http.post("/v1/predict", json=body)
                except httpx.HTTPError as exc:
                    failures.append(f"/v1/predict rows {lo}:{hi}: {exc!r}")
                    continue
                if r.status_code != 200:
                    failures.append(f"/v1/predict rows {lo}:{hi}: {r.status_code} {r.text}")
                    continue
                answer = r.json()
                day = check(np.float32(answer["probabilities"]), answer["model_version"], expected, f"rows {lo}:{hi}")
                if day is not None:
                    entries.append((sent, time.monotonic(), day))

    def upload_client(entries: list) -> None:
        files = {"file": ("rows.txt", days.upload_text.encode(), "text/plain")}
        with httpx.Client(base_url=server, timeout=30) as http:
            while not stop.is_set():
                sent = time.monotonic()
                try:
                    r = http.post("/upload", params={"debug": "true"}, files=files)
                except httpx.HTTPError as exc:
                    failures.append(f"/upload: {exc!r}")
                    continue
                if r.status_code != 200:
                    failures.append(f"/upload: {r.status_code} {r.text}")
                    continue
                answer = r.json()
                got = np.float32(answer["data"])[:, 0]
                day = check(got, answer["debug"]["model_version"], days.uploads, "/upload")
                if day is not None:
                    entries.append((sent, time.monotonic(), day))

    threads = []
    for lo, hi in SUBSETS:
        log.append([])
        threads.append(threading.Thread(target=predict_client, args=(lo, hi, log[-1])))
    log.append([])
    threads.append(threading.Thread(target=upload_client, args=(log[-1],)))

    def answers_of(day: int, after: float) -> int:
        return sum(1 for entries in log for sent, _, d in list(entries) if d == day and sent > after)

    def wait_for(day: int, after: float, n: int = 60, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while answers_of(day, after) < n and not failures:
            assert time.monotonic() < deadline, f"no steady traffic on day {day + 1}: {answers_of(day, after)}"
            time.sleep(0.02)

    reloaded_at = [0.0]  # when the reload of day k (0-based) had returned
    with httpx.Client(base_url=server, timeout=30) as admin:
        assert admin.get("/ready").json()["model_version"] == days.versions[0]
        for t in threads:
            t.start()
        try:
            wait_for(0, 0.0)
            for k in (1, 2):
                if k == 2:  # a refused reload in the middle of the roll-out: 422, the current model stays
                    r = reload(admin, days.corrupt)
                    assert r.status_code == 422, r.text
                    assert f"still serving {days.versions[1]}" in r.json()["detail"]
                    wait_for(1, time.monotonic(), n=10)
                r = reload(admin, days.bundles[k])
                reloaded_at.append(time.monotonic())
                assert r.status_code == 200, r.text
                answer = r.json()
                assert answer["previous_version"] == days.versions[k - 1]
                assert answer["model_version"] == days.versions[k]
                assert answer["columns_changed"] is False
                wait_for(k, reloaded_at[-1])
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=30)
        assert admin.get("/ready").json()["model_version"] == days.versions[2]
        metrics = admin.get("/metrics").text

    assert failures == [], failures[:5]
    assert not any(t.is_alive() for t in threads)
    for i, entries in enumerate(log):
        seen = [d for _, _, d in entries]
        assert set(seen) == {0, 1, 2}, f"client {i} saw days {sorted(set(seen))}"
        assert seen == sorted(seen), f"client {i} went back to an older model"
        for sent, _, day in entries:  # nothing older than the last reload that returned before it was sent
            newest = max(k for k, t in enumerate(reloaded_at) if t <= sent)
            assert day >= newest, f"client {i}: day {day + 1} answered a request sent after day {newest + 1}'s reload"
    assert answers_of(2, reloaded_at[2]) >= 60
    # (diagnostics: answers per day, and those sent before a reload returned but answered by the new day)
    per_day = [sum(1 for e in log for _, _, d in e if d == k) for k in range(DAYS)]
    across = sum(1 for e in log for sent, _, d in e for k in (1, 2) if d == k and sent < reloaded_at[k])
    print(f"answers per day {per_day}, answered by a newer model than when sent: {across}")
    assert 'ctrlab_model_reloads_total{result="ok"} 2' in metrics
    assert 'ctrlab_model_reloads_total{result="failed"} 1' in metrics


def test_reload_of_another_schema(days, server, multitask_bundle):
    """The app accepts a bundle of other columns cleanly (it says so: columns_changed); requests
    are answered in the new schema, old rows get a 4xx; a roll-back to day 3 restores it all."""
    mt_bundle, mt_rows = multitask_bundle
    mt = load_model(mt_bundle, ServeConfig.backend, 1)
    with httpx.Client(base_url=server, timeout=30) as http:
        current = http.get("/ready").json()["model_version"]
        assert current in days.versions
        r = reload(http, mt_bundle)
        assert r.status_code == 200, r.text
        assert r.json()["columns_changed"] is True and r.json()["model_version"] == mt.version
        meta = http.get("/metadata").json()
        assert meta["multi_task"] is True and meta["columns"] == mt.predictor.columns
        answer = http.post("/v1/predict", json={"rows": mt_rows}).json()
        got = np.array([answer["probabilities"][t] for t in answer["tasks"]]).T
        np.testing.assert_allclose(got, mt.predictor.predict(mt_rows).scores, atol=TOL, rtol=0)
        r = http.post("/v1/predict", json={"rows": days.rows[:3]})  # the old schema's rows: a 4xx, never a 500
        assert 400 <= r.status_code < 500, r.text
        r = reload(http, days.bundles[2])  # roll back
        assert r.status_code == 200 and r.json()["columns_changed"] is True
        answer = http.post("/v1/predict", json={"rows": days.rows[:8]}).json()
        assert answer["model_version"] == days.versions[2]
        np.testing.assert_allclose(np.float32(answer["probabilities"]), days.scores[2][:8], atol=TOL, rtol=0)
