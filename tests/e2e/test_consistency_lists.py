"""End-to-end consistency with list fields (issue 15): behaviour-sequence rows (histories sharing
the target item's and category's vocabularies) scored by every path agree with the store's
evaluation, row by row, within 1e-6: the training run's evaluation of the test split, the torch
and ONNX predictors on the raw rows (histories as delimited text), HTTP ``/v1/predict`` (histories
as JSON lists, weighted tags as ``[value, weight]`` pairs), ``/upload`` of the raw lines, and
offline ``predict_file``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from ctrlab.config import load_config
from ctrlab.data.prepare import PrepareOptions, prepare
from ctrlab.data.store import Store
from ctrlab.data.synth_sequence import write_sequence_synthetic
from ctrlab.export.bundle import export_bundle
from ctrlab.inference import Predictor, predict_file
from ctrlab.models import build_model
from ctrlab.schema import GenericSchemaConfig
from ctrlab.serve.app import create_app
from ctrlab.train.evaluate import predict_split
from ctrlab.train.run import run_training
from ctrlab.train.rundir import RunDir
from ctrlab.train.trainer import load_weights

TEST_ROWS, TRAIN_ROWS, EVAL_BATCH, TOLERANCE = 300, 1500, 128, 1e-6
LISTS = {"hist_item_id": {"kind": "sequence", "max_length": 10, "vocab_of": "item_id"},
         "hist_cate_id": {"kind": "sequence", "max_length": 10, "vocab_of": "cate_id"},
         "tags": {"kind": "multi", "weight_separator": ":", "max_length": 3, "pooling": "sum"}}  # t3:0.7|t9
PATHS = ["torch", "onnx", "http", "http_upload", "file"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _json_value(column: str, text: str):
    """A row's raw text as JSON: histories as lists, weighted tags as [value, weight] pairs."""
    if column == "tags":
        return [[t.rsplit(":", 1)[0], float(t.rsplit(":", 1)[1])] if ":" in t else t for t in text.split("|")] if text else []
    return (text.split("|") if text else []) if column in LISTS else (text or None)


@pytest.fixture(scope="module", params=["deepfm", "din", "dien", "bst", "dmr"])
def scored(request, tmp_path_factory):
    """Every path's scores of the test rows with ``request.param`` (a flat model taking the
    histories as pooled fields, or a sequence model attending over them)."""
    name = request.param
    root = tmp_path_factory.mktemp(f"e2e_lists_{name}")
    test_file, train_file = root / "test.tsv", root / "train.tsv"
    write_sequence_synthetic(test_file, TEST_ROWS, seed=21, max_history=15)
    write_sequence_synthetic(train_file, TRAIN_ROWS, seed=22, max_history=15)
    lines = test_file.read_text().splitlines()
    header, body = lines[0].split("\t"), [line.split("\t") for line in lines[1:]]
    text_rows = [{c: v for c, v in zip(header, fields) if c != "label"} for fields in body]
    json_rows = [{c: _json_value(c, v) for c, v in row.items()} for row in text_rows]

    schema = GenericSchemaConfig(dense=["price"], lists=LISTS)
    store_dir, run_dir, bundle = root / "store", root / "run", root / "bundle"
    prepare(PrepareOptions(train=[str(train_file)], test=[str(test_file)], format="tsv", schema=schema),
            store_dir, progress=False, log=lambda _m: None)
    cfg = load_config(None, {"data.store": str(store_dir), "run_dir": str(run_dir), "model.name": name,
                             "model.params.embedding_dim": 4, "model.params.hidden_units": [16],
                             "train.threads": 1, "train.epochs": 1, "train.batch_size": 128, "train.lr": 0.01,
                             "train.eval_batch_size": EVAL_BATCH})
    summary = run_training(cfg, progress=False, log=lambda _m: None)
    export_bundle(run_dir, bundle, log=lambda _m: None)

    store = Store(store_dir)
    model = build_model(name, store.spec, cfg.model.params)
    model.load_state_dict(load_weights(RunDir(run_dir).checkpoint(summary["best_epoch"])))
    scores = {"store": predict_split(model, store.split("test"), EVAL_BATCH, torch.device("cpu"))}
    scores["torch"] = Predictor(bundle, backend="torch").predict(text_rows).scores
    scores["onnx"] = Predictor(bundle, backend="onnx", threads=1).predict(text_rows).scores
    with TestClient(create_app(bundle, threads=1, max_rows=TEST_ROWS, max_body_bytes=10_000_000)) as client:
        answer = client.post("/v1/predict", json={"rows": json_rows})
        assert answer.status_code == 200, answer.text
        scores["http"] = np.float32(answer.json()["probabilities"])
        metadata = client.get("/metadata").json()
        answer = client.post("/upload", files={"file": ("test.tsv", test_file.read_bytes(), "text/plain")})
        assert answer.status_code == 200, answer.text
        scores["http_upload"] = np.float32(answer.json()["data"])[:, 0]
    out = root / "scores.tsv"
    predict_file(bundle, [test_file], out, id_column=True, threads=1, log=lambda _m: None)
    by_line = {int(line.split("\t")[0]): float(line.split("\t")[1]) for line in out.read_text().splitlines()}
    scores["file"] = np.float32([by_line[k] for k in range(2, TEST_ROWS + 2)])  # ids: line numbers after the header
    return scores, store, metadata


def test_the_store_holds_the_histories_and_weighted_tags(scored):
    _, store, metadata = scored
    assert [f.name for f in store.spec.lists] == ["hist_item_id", "hist_cate_id", "tags"]
    assert metadata["columns"][-3:] == ["hist_item_id", "hist_cate_id", "tags"]
    lists = metadata["manifest"]["inputs"]["sparse"]["lists"]
    assert [f["shares"] for f in lists] == ["item_id", "cate_id", None]
    assert [f.get("weighted", False) for f in lists] == [False, False, True]
    dense = metadata["manifest"]["inputs"]["dense"]
    assert dense["shape"][1] == 1 + 3 and dense["names"][1:] == ["tags.weight[0]", "tags.weight[1]", "tags.weight[2]"]
    weights = np.asarray(store.split("test").dense)[:, 1:]
    assert ((weights != 0) & (weights != 1)).any()  # weights other than the default 1 reach the store


@pytest.mark.parametrize("path", PATHS)
def test_every_path_agrees_with_store_evaluation(scored, path):
    scores, _, _ = scored
    expected, got = scores["store"], np.asarray(scores[path], dtype=np.float32)
    assert got.shape == expected.shape == (TEST_ROWS,)
    worst = int(np.argmax(np.abs(got - expected)))
    assert abs(got[worst] - expected[worst]) <= TOLERANCE, (
        f"{path}: row {worst + 1} scored {got[worst]!r}, store evaluation {expected[worst]!r}")
