"""End-to-end online/offline consistency (issue 13): the same raw rows, scored by every path that
scores rows, get the same probability, row by row, within 1e-6.

The rows are the test split of a store: a raw Criteo TSV file of ``TEST_ROWS`` lines given to
``prepare`` as its test data (so the split holds exactly those rows, in file order), with the next
``TRAIN_ROWS`` lines of the same source as the training data. A DeepFM trains one epoch and is
exported. The paths, each joined back to the raw rows by line number:

* ``store``: the training run's evaluation of the test split (prepare's encoding, the best
  checkpoint, the evaluation loop; its AUC is the one the run reported);
* ``torch`` / ``onnx``: ``Predictor(bundle, backend=...)`` on the raw rows (lists of raw strings);
* ``http``: ``POST /v1/predict`` with the raw rows, and ``http_upload``: ``POST /upload`` with the
  raw lines (the server's own format detection), through Starlette's TestClient;
* ``file``: offline ``predict_file`` on the raw file, with line-number ids.

Two sources: ~500 real Criteo rows from ../shared/data (skipped when absent) and a synthetic
Criteo file (``write_synthetic``, what ``ctrlab data synth`` writes), which never skips.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from ctrlab.config import load_config
from ctrlab.data.prepare import PrepareOptions, prepare
from ctrlab.data.store import Store
from ctrlab.data.synth import write_synthetic
from ctrlab.export.bundle import export_bundle
from ctrlab.inference import Predictor, predict_file
from ctrlab.metrics import evaluate_scores
from ctrlab.models import build_model
from ctrlab.serve.app import create_app
from ctrlab.train.evaluate import predict_split
from ctrlab.train.run import run_training
from ctrlab.train.rundir import RunDir
from ctrlab.train.trainer import load_weights

TEST_ROWS = 500
TRAIN_ROWS = 2500
TOLERANCE = 1e-6
EVAL_BATCH = 128  # not a divisor of TEST_ROWS: the evaluation's last batch is a partial one
PATHS = ["torch", "onnx", "http", "http_upload", "file"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def quiet(_msg: str) -> None:
    pass


def scores_of(result) -> np.ndarray:
    """float32[rows] from ``Predictor.predict``'s answer: the array itself, or a result object's
    ``.scores`` (the inference package is moving to ``Prediction(scores, timings)``)."""
    return np.asarray(getattr(result, "scores", result), dtype=np.float32)


def source_lines(kind: str, root: Path, request) -> list[str]:
    """The first TEST_ROWS + TRAIN_ROWS lines of a labelled Criteo TSV (label first, 40 columns)."""
    if kind == "criteo":
        path = request.getfixturevalue("shared_data")["criteo_train"]
    else:
        path = root / "synth.tsv"
        write_synthetic(path, TEST_ROWS + TRAIN_ROWS, seed=11, progress=False)
    with open(path, encoding="utf-8") as f:
        lines = [line.rstrip("\n") for _, line in zip(range(TEST_ROWS + TRAIN_ROWS), f)]
    assert len(lines) == TEST_ROWS + TRAIN_ROWS, f"{path}: fewer lines than the test needs"
    return lines


@pytest.fixture(scope="module", params=["criteo", "synthetic"])
def scored(request, tmp_path_factory):
    """Every path's probabilities for the test rows, keyed by path name: float32[TEST_ROWS] in
    raw-file line order, plus the raw labels and the store's test labels for the join check."""
    root = tmp_path_factory.mktemp(f"e2e_{request.param}")
    lines = source_lines(request.param, root, request)
    test_file, train_file = root / "test.tsv", root / "train.tsv"
    test_file.write_text("".join(line + "\n" for line in lines[:TEST_ROWS]))
    train_file.write_text("".join(line + "\n" for line in lines[TEST_ROWS:]))
    raw_rows = [line.split("\t")[1:] for line in lines[:TEST_ROWS]]  # 39 raw strings, I1..I13, C1..C26
    raw_labels = np.array([int(line.split("\t")[0]) for line in lines[:TEST_ROWS]], dtype=np.uint8)

    store_dir, run_dir, bundle = root / "store", root / "run", root / "bundle"
    prepare(PrepareOptions(train=[str(train_file)], test=[str(test_file)]), store_dir, progress=False, log=quiet)
    cfg = load_config(None, {"data.store": str(store_dir), "run_dir": str(run_dir), "model.name": "deepfm",
                             "model.params.embedding_dim": 4, "model.params.hidden_units": [16],
                             "train.threads": 1, "train.epochs": 1, "train.batch_size": 256, "train.lr": 0.01,
                             "train.eval_batch_size": EVAL_BATCH, "train.log_every": 1000})
    summary = run_training(cfg, progress=False, log=quiet)
    export_bundle(run_dir, bundle, log=quiet)

    store = Store(store_dir)
    test_split = store.split("test")
    model = build_model("deepfm", store.spec, cfg.model.params)
    model.load_state_dict(load_weights(RunDir(run_dir).checkpoint(summary["best_epoch"])))
    scores = {"store": predict_split(model, test_split, EVAL_BATCH, torch.device("cpu"))}
    store_metrics = evaluate_scores(np.asarray(test_split.label), scores["store"])

    scores["torch"] = scores_of(Predictor(bundle, backend="torch").predict(raw_rows))
    scores["onnx"] = scores_of(Predictor(bundle, backend="onnx", threads=1).predict(raw_rows))

    app = create_app(bundle, threads=1, max_rows=TEST_ROWS, max_body_bytes=10_000_000)
    with TestClient(app) as client:
        answer = client.post("/v1/predict", json={"rows": raw_rows})
        assert answer.status_code == 200, answer.text
        scores["http"] = np.float32(answer.json()["probabilities"])
        answer = client.post("/upload", files={"file": ("test.tsv", test_file.read_bytes(), "text/plain")})
        assert answer.status_code == 200, answer.text
        scores["http_upload"] = np.float32(answer.json()["data"])[:, 0]

    out = root / "scores.tsv"
    predict_file(bundle, [test_file], out, id_column=True, threads=1, log=quiet)
    by_line = {int(line.split("\t")[0]): float(line.split("\t")[1]) for line in out.read_text().splitlines()}
    scores["file"] = np.float32([by_line[k] for k in range(1, TEST_ROWS + 1)])  # ids are 1-based line numbers

    return SimpleNamespace(scores=scores, raw_labels=raw_labels, store_labels=np.asarray(test_split.label),
                           store_metrics=store_metrics, summary=summary)


def test_the_store_test_split_is_the_raw_rows_in_order(scored):
    """The join for the store path: prepare kept every test line, in file order (labels agree row
    by row), and the scores used below are the run's own evaluation (same AUC and logloss)."""
    np.testing.assert_array_equal(scored.store_labels, scored.raw_labels)
    assert scored.summary["test_rows"] == TEST_ROWS
    assert scored.store_metrics["auc"] == scored.summary["test_auc"]
    assert scored.store_metrics["logloss"] == scored.summary["test_logloss"]


@pytest.mark.parametrize("path", PATHS)
def test_every_path_agrees_with_store_evaluation(scored, path):
    expected = scored.scores["store"]
    got = scored.scores[path]
    assert got.shape == expected.shape == (TEST_ROWS,)
    assert np.all((got > 0) & (got < 1))
    worst = int(np.argmax(np.abs(got - expected)))
    assert abs(got[worst] - expected[worst]) <= TOLERANCE, (
        f"{path}: row {worst + 1} scored {got[worst]!r}, store evaluation {expected[worst]!r}")
