"""End-to-end consistency with several labels (issue 16): multi-task models trained on generated
click + conversion rows score every test row the same way, one probability per task, whichever
path scores it: the training run's evaluation of the test split, the torch and ONNX predictors on
the raw rows, HTTP ``/v1/predict`` (one named list per task), ``/upload`` of the raw lines (one
column per task) and offline ``predict_file`` (one column per task), within 1e-6; and the run's
own test metrics are those of its scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from ctrlab.config import load_config
from ctrlab.data.prepare import PrepareOptions, prepare
from ctrlab.data.store import Store
from ctrlab.data.synth_multitask import write_multitask_synthetic
from ctrlab.export.bundle import export_bundle
from ctrlab.inference import Predictor, predict_file
from ctrlab.metrics import roc_auc
from ctrlab.models import build_model
from ctrlab.schema import GenericSchemaConfig
from ctrlab.serve.app import create_app
from ctrlab.train.evaluate import predict_split
from ctrlab.train.run import run_training
from ctrlab.train.rundir import RunDir
from ctrlab.train.trainer import load_weights

TEST_ROWS, TRAIN_ROWS, EVAL_BATCH, TOLERANCE = 300, 3000, 128, 1e-6
TASKS = ["click", "conversion"]
PATHS = ["torch", "onnx", "http", "http_upload", "file"]
SPARSE = ["user_id", "item_id", "cate_id", "shop_id", "device", "hour"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module", params=["mmoe", "esmm", "ple"])
def scored(request, tmp_path_factory):
    name = request.param
    root = tmp_path_factory.mktemp(f"e2e_multitask_{name}")
    test_file, train_file = root / "test.tsv", root / "train.tsv"
    write_multitask_synthetic(test_file, TEST_ROWS, seed=31)
    write_multitask_synthetic(train_file, TRAIN_ROWS, seed=32)
    lines = test_file.read_text().splitlines()
    header, body = lines[0].split("\t"), [line.split("\t") for line in lines[1:]]
    rows = [{c: (v or None) for c, v in zip(header, fields) if c not in TASKS} for fields in body]

    schema = GenericSchemaConfig(label=TASKS, dense=["price", "discount", "user_activity"], sparse=SPARSE)
    store_dir, run_dir, bundle = root / "store", root / "run", root / "bundle"
    prepare(PrepareOptions(train=[str(train_file)], test=[str(test_file)], format="tsv", schema=schema),
            store_dir, progress=False, log=lambda _m: None)
    cfg = load_config(None, {"data.store": str(store_dir), "run_dir": str(run_dir), "model.name": name,
                             "model.params.embedding_dim": 4, "train.threads": 1, "train.epochs": 1,
                             "train.batch_size": 256, "train.lr": 0.01, "train.eval_batch_size": EVAL_BATCH})
    summary = run_training(cfg, progress=False, log=lambda _m: None)
    export_bundle(run_dir, bundle, log=lambda _m: None)

    store = Store(store_dir)
    model = build_model(name, store.spec, {**cfg.model.params, "num_tasks": 2})
    model.load_state_dict(load_weights(RunDir(run_dir).checkpoint(summary["best_epoch"])))
    scores = {"store": predict_split(model.eval(), store.split("test"), EVAL_BATCH, torch.device("cpu"))}
    scores["torch"] = Predictor(bundle, backend="torch").predict(rows).scores
    scores["onnx"] = Predictor(bundle, backend="onnx", threads=1).predict(rows).scores
    with TestClient(create_app(bundle, threads=1, max_rows=TEST_ROWS, max_body_bytes=10_000_000)) as client:
        answer = client.post("/v1/predict", json={"rows": rows})
        assert answer.status_code == 200, answer.text
        body_json = answer.json()
        assert body_json["tasks"] == TASKS
        scores["http"] = np.float32([body_json["probabilities"][t] for t in TASKS]).T
        metadata = client.get("/metadata").json()
        answer = client.post("/upload", files={"file": ("test.tsv", test_file.read_bytes(), "text/plain")})
        assert answer.status_code == 200, answer.text
        scores["http_upload"] = np.float32(answer.json()["data"])
    out = root / "scores.tsv"
    predict_file(bundle, [test_file], out, id_column=True, threads=1, log=lambda _m: None)
    by_line = {int(line.split("\t")[0]): [float(v) for v in line.split("\t")[1:3]]
               for line in out.read_text().splitlines()}
    scores["file"] = np.float32([by_line[k] for k in range(2, TEST_ROWS + 2)])
    return scores, store, summary, metadata, name


def test_the_bundle_names_its_tasks(scored):
    _, store, summary, metadata, _ = scored
    assert store.tasks == TASKS and summary["tasks"] == TASKS
    assert metadata["tasks"] == TASKS and metadata["multi_task"] is True


@pytest.mark.parametrize("path", PATHS)
def test_every_path_agrees_with_store_evaluation(scored, path):
    scores, _, _, _, _ = scored
    expected, got = scores["store"], np.asarray(scores[path], dtype=np.float32)
    assert got.shape == expected.shape == (TEST_ROWS, 2)
    worst = np.unravel_index(int(np.argmax(np.abs(got - expected))), got.shape)
    assert abs(got[worst] - expected[worst]) <= TOLERANCE, (
        f"{path}: row {worst[0] + 1} task {TASKS[worst[1]]} scored {got[worst]!r}, store {expected[worst]!r}")


def test_the_runs_test_metrics_are_those_of_its_scores(scored):
    scores, store, summary, _, name = scored
    labels = np.asarray(store.split("test").label).astype(np.int64)
    if name == "esmm":  # (task 1 is click AND conversion over every impression)
        labels[labels[:, 0] == 0, 1] = 0
    for t, task in enumerate(TASKS):
        assert summary[f"test_auc/{task}"] == pytest.approx(roc_auc(labels[:, t], scores["store"][:, t]), abs=1e-9)
