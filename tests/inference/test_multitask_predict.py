"""Predictor and offline predict with a multi-task bundle (issue 16).

* ``Prediction.scores`` is float32[N, T] (column t = ``Predictor.tasks[t]``); torch == onnx within
  1e-6; dicts, lists and Arrow tables give the same scores; the int8 variant gives [N, T] too;
* ``ctrlab predict``: one probability column per task, in task order (``probability.<task>`` in
  the header, which is only written with --header: line k stays data line k of the input);
  a labelled file (all label columns, an optional one empty on some lines) is read with its labels
  dropped from the features and evaluated per task, a file with only some label columns or none
  is scored as well; the numbers agree with the Predictor;
* ESMM: task 1's AUC is over click AND conversion (0 wherever click is 0), as training scores it.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest
from sklearn.metrics import roc_auc_score

from ctrlab.cli.main import main as cli_main
from ctrlab.data.formats import input_schema
from ctrlab.data.readers import RowReader
from ctrlab.export.bundle import export_bundle
from ctrlab.inference import Predictor, predict_file, score_files

pytestmark = pytest.mark.usefixtures("one_torch_thread")

_spec = importlib.util.spec_from_file_location(
    "multitask_bundle_helpers", Path(__file__).resolve().parents[1] / "export" / "test_multitask_bundle.py")
helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helpers)  # type: ignore[union-attr]


def quiet(_msg: str) -> None:
    pass


@pytest.fixture(scope="module")
def mt(tmp_path_factory):
    root = tmp_path_factory.mktemp("mt_predict")
    store = helpers.multitask_store(root, rows=1200)
    bundles = {}
    for model in ("mmoe", "esmm"):
        helpers.fake_multitask_run(store, root / f"run_{model}", model)
        bundles[model] = root / f"bundle_{model}"
        export_bundle(root / f"run_{model}", bundles[model], golden_rows=100, quantize=model == "mmoe", log=quiet)
    raw = root / "mt.tsv"
    lines = raw.read_text().splitlines()
    small = root / "small.tsv"  # header + 300 labelled lines (conversion empty on some)
    small.write_text("\n".join(lines[:301]) + "\n")
    unlabelled = root / "unlabelled.tsv"
    unlabelled.write_text("\n".join("\t".join(line.split("\t")[2:]) for line in lines[:301]) + "\n")
    click_only = root / "click_only.tsv"
    fields = [line.split("\t") for line in lines[:301]]
    click_only.write_text("\n".join("\t".join([f[0]] + f[2:]) for f in fields) + "\n")
    rows = [{"user": f[2], "item": f[3], "price": float(f[4])} for f in fields[1:]]
    labels = np.array([[float(f[0]), float(f[1]) if f[1] else np.nan] for f in fields[1:]])
    return SimpleNamespace(root=root, store=store, bundles=bundles, small=small, unlabelled=unlabelled,
                           click_only=click_only, rows=rows, labels=labels)


@pytest.mark.parametrize("model", ["mmoe", "esmm"])
def test_predictor_scores_one_column_per_task_torch_equals_onnx(model, mt):
    onnx_p = Predictor(mt.bundles[model], backend="onnx", threads=1)
    torch_p = Predictor(mt.bundles[model], backend="torch")
    for p in (onnx_p, torch_p):
        assert p.multi_task and p.tasks == ["click", "conversion"]
    a, b = onnx_p.predict(mt.rows).scores, torch_p.predict(mt.rows).scores
    assert a.shape == (300, 2) and a.dtype == np.float32 and b.shape == (300, 2) and b.dtype == np.float32
    np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)
    # row forms: lists in column order and an Arrow table give the same scores
    lists = [[r[c] for c in onnx_p.columns] for r in mt.rows]
    np.testing.assert_array_equal(onnx_p.predict(lists).scores, a)
    table = pa.table({c: [r[c] for r in mt.rows] for c in onnx_p.columns})
    np.testing.assert_allclose(onnx_p.predict(table).scores, a, atol=1e-6, rtol=0)
    # one row at a time: the same scores (within the 1e-6 of a batch size change)
    one = np.concatenate([onnx_p.predict([r]).scores for r in mt.rows[:5]])
    assert one.shape == (5, 2)
    np.testing.assert_allclose(one, a[:5], atol=1e-6, rtol=0)
    assert onnx_p.predict_encoded(*onnx_p.encode(mt.rows[:3])).shape == (3, 2)


def test_int8_predictor_gives_task_columns(mt):
    p = Predictor(mt.bundles["mmoe"], backend="onnx", variant="int8", threads=1)
    scores = p.predict(mt.rows[:7]).scores
    assert scores.shape == (7, 2) and scores.dtype == np.float32


def test_labelled_input_schema_reads_every_label(mt):
    p = Predictor(mt.bundles["mmoe"], threads=1)
    fmt, schema = input_schema(mt.small, "auto", p.schema, p.pipeline.dense_inputs, p.pipeline.sparse_inputs)
    assert fmt == "tsv" and list(schema.labels) == ["click", "conversion"]
    assert list(schema.optional_labels) == ["conversion"]
    table = next(iter(RowReader([mt.small], schema))).table
    assert {"label", "label.1"} <= set(table.column_names) and "conversion" not in table.column_names
    _, unlabelled = input_schema(mt.unlabelled, "auto", p.schema, p.pipeline.dense_inputs, p.pipeline.sparse_inputs)
    assert unlabelled.label is None
    _, click_only = input_schema(mt.click_only, "auto", p.schema, p.pipeline.dense_inputs, p.pipeline.sparse_inputs)
    assert list(click_only.labels) == ["click"]


def test_predict_file_writes_one_column_per_task(mt, tmp_path):
    predictor = Predictor(mt.bundles["mmoe"], threads=1)
    expected = predictor.predict(mt.rows).scores
    out = tmp_path / "scores.tsv"
    result = predict_file(mt.bundles["mmoe"], mt.small, out, log=quiet)
    lines = out.read_text().splitlines()
    assert len(lines) == 300  # no header by default: line k is data line k of the input
    got = np.array([[float(v) for v in line.split("\t")] for line in lines], dtype=np.float32)
    assert got.shape == (300, 2)
    np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)
    # per-task metrics over each task's labelled rows
    m = result.metrics
    for t, task in enumerate(["click", "conversion"]):
        keep = ~np.isnan(mt.labels[:, t])
        assert m[f"rows/{task}"] == keep.sum()
        assert m[f"auc/{task}"] == pytest.approx(roc_auc_score(mt.labels[keep, t], got[keep, t]), abs=1e-6)
    assert m["auc"] == pytest.approx((m["auc/click"] + m["auc/conversion"]) / 2)
    # the header names the columns (with ids and the skipped column)
    out2 = tmp_path / "scores2.tsv"
    predict_file(mt.bundles["mmoe"], mt.small, out2, id_column=True, header=True, bad_lines="skip", log=quiet)
    lines2 = out2.read_text().splitlines()
    assert lines2[0].split("\t") == ["id", "probability.click", "probability.conversion", "skipped"]
    first = lines2[1].split("\t")
    assert first[0] == "2" and np.allclose([float(first[1]), float(first[2])], expected[0], atol=1e-6)
    assert len(lines2) == 301


def test_predict_file_unlabelled_and_partly_labelled(mt, tmp_path):
    out = tmp_path / "u.tsv"
    result = predict_file(mt.bundles["mmoe"], mt.unlabelled, out, log=quiet)
    assert result.metrics is None and result.rows == 300
    assert all(len(line.split("\t")) == 2 for line in out.read_text().splitlines())
    result = predict_file(mt.bundles["mmoe"], mt.click_only, tmp_path / "c.tsv", log=quiet)
    assert "auc/click" in result.metrics and "auc/conversion" not in result.metrics


def test_esmm_task_1_is_scored_as_click_and_conversion(mt, tmp_path):
    result = predict_file(mt.bundles["esmm"], mt.small, tmp_path / "e.tsv", log=quiet)
    probs = Predictor(mt.bundles["esmm"], threads=1).predict(mt.rows).scores
    y = mt.labels.copy()
    y[y[:, 0] == 0, 1] = 0  # unclicked: a known non-conversion
    keep = ~np.isnan(y[:, 1])
    assert result.metrics["rows/conversion"] == keep.sum()
    assert result.metrics["auc/conversion"] == pytest.approx(roc_auc_score(y[keep, 1], probs[keep, 1]), abs=1e-6)


def test_score_files_chunks_are_task_shaped(mt):
    p = Predictor(mt.bundles["mmoe"], threads=1)
    chunks = list(score_files(p, mt.small, batch_size=64))
    probs = np.concatenate([c.probabilities for c in chunks])
    labels = np.concatenate([c.labels for c in chunks])
    assert probs.shape == (300, 2) and labels.shape == (300, 2)
    np.testing.assert_array_equal(np.isnan(labels), np.isnan(mt.labels))


def test_predict_command_json(mt, tmp_path, capsys):
    out = tmp_path / "cli.tsv"
    assert cli_main(["predict", str(mt.bundles["mmoe"]), str(mt.small), "--out", str(out), "--json",
                     "--header"]) == 0
    printed = capsys.readouterr().out
    summary = json.loads(printed.strip().splitlines()[-1])
    assert summary["rows"] == 300 and "auc/conversion" in summary["metrics"]
    assert "click: AUC" in printed and "conversion: AUC" in printed
    assert out.read_text().splitlines()[0] == "probability.click\tprobability.conversion"


def test_single_task_bundle_of_one_task_names_it_and_scores_its_labels(mt, tmp_path):
    """A single-task model trained on one task of the multi-task store (train.task: conversion):
    a single-task bundle ([batch] outputs) whose manifest and Predictor name that task, and whose
    predict metrics are over that task's labelled rows."""
    import torch

    from ctrlab.config import dump_config, load_config
    from ctrlab.data.store import Store
    from ctrlab.models import build_model

    run_dir = tmp_path / "run"
    cfg = load_config(None, [f"data.store={json.dumps(str(mt.store))}", f"run_dir={json.dumps(str(run_dir))}",
                             "model.name=deepfm", "train.task=conversion"])
    cfg.model.params = {"embedding_dim": 4, "hidden_units": [8]}
    (run_dir / "checkpoints").mkdir(parents=True)
    dump_config(cfg, run_dir / "config.yaml")
    torch.manual_seed(0)
    net = build_model("deepfm", Store(mt.store).spec, cfg.model.params)
    torch.save({"model": net.state_dict(), "epoch": 1}, run_dir / "checkpoints" / "epoch_1.pt")
    manifest = export_bundle(run_dir, tmp_path / "bundle", golden_rows=50, log=quiet)
    assert "tasks" not in manifest and manifest["task"] == "conversion"
    assert manifest["outputs"]["probabilities"]["shape"] == ["batch"]
    p = Predictor(tmp_path / "bundle", threads=1)
    assert not p.multi_task and p.tasks == ["conversion"]
    scores = p.predict(mt.rows).scores
    assert scores.shape == (300,)
    result = predict_file(tmp_path / "bundle", mt.small, tmp_path / "s.tsv", log=quiet)
    keep = ~np.isnan(mt.labels[:, 1])
    assert result.metrics["rows"] == keep.sum()
    assert result.metrics["auc"] == pytest.approx(roc_auc_score(mt.labels[keep, 1], scores[keep]), abs=1e-6)
