"""prepare with list columns (issue 15): one streaming pass encodes them into the store's sparse
matrix as the pipeline's transform does (shared vocabularies counted over the target column and
its histories), records their statistics and truncations, and the store trains."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ctrlab.data.formats import file_schema
from ctrlab.data.prepare import PrepareOptions, prepare
from ctrlab.data.readers import RowReader
from ctrlab.data.store import Store
from ctrlab.data.synth_sequence import write_sequence_synthetic
from ctrlab.schema import GenericSchemaConfig

LISTS = {"hist_item_id": {"kind": "sequence", "max_length": 12, "vocab_of": "item_id"},
         "hist_cate_id": {"kind": "sequence", "max_length": 12, "vocab_of": "cate_id"}}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("prepare_lists")
    files = {}
    for split, rows, seed in (("train", 3000, 1), ("valid", 500, 2), ("test", 500, 3)):
        files[split] = root / f"{split}.tsv"
        write_sequence_synthetic(files[split], rows, seed=seed, max_history=20)
    # (the weighted tags column is left out: weighted lists are read but not encoded yet)
    schema = GenericSchemaConfig(dense=["price"], sparse=["user_id", "item_id", "cate_id"], lists=LISTS)
    opts = PrepareOptions(train=[str(files["train"])], valid=[str(files["valid"])], test=[str(files["test"])],
                          format="tsv", schema=schema)
    prepare(opts, root / "store", progress=False, log=lambda _m: None)
    return root, files, schema


def test_store_sparse_equals_the_pipelines_transform(prepared):
    root, files, schema = prepared
    store = Store(root / "store")
    spec = store.spec
    assert [f.name for f in spec.lists] == ["hist_item_id", "hist_cate_id"]
    assert spec.sparse_width == 3 + 12 + 12
    pipeline = store.pipeline
    reader_schema = file_schema(files["train"], "tsv", schema)[1]
    tables = [chunk.table for chunk in RowReader([files["train"]], reader_schema)]
    expected = np.concatenate([pipeline.transform(t)[1] for t in tables])
    train = store.split("train")
    assert np.asarray(train.sparse).tolist() == expected.tolist()
    hist = np.asarray(train.sparse)[:, 3:15]
    assert (hist[:, 0] != 0).any() and (hist == 0).any()  # histories and padding
    assert not ((hist[:, 1:] != 0) & (hist[:, :-1] == 0)).any()  # values first, padding after


def test_meta_records_list_fields_and_truncations(prepared):
    root, _, _ = prepared
    meta = json.loads((root / "store" / "meta.json").read_text())
    field = meta["fields"]["hist_item_id"]
    assert field["output"] == "list" and field["shares"] == "item_id" and field["length"] == 12
    assert 0 < field["mean_length"]["train"] <= 12
    assert meta["sources"]["train"][0]["truncated"]["hist_item_id"] > 0
    assert meta["spec"]["lists"][0]["vocab_size"] == meta["vocab_sizes"]["item_id"]


def test_a_store_with_lists_trains(prepared, tmp_path, one_torch_thread):
    from ctrlab.config import load_config
    from ctrlab.train.run import run_training

    root, _, _ = prepared
    cfg = load_config(None, {"data.store": str(root / "store"), "run_dir": str(tmp_path / "run"),
                             "model.name": "deepfm", "model.params.embedding_dim": 4,
                             "model.params.hidden_units": [16], "train.epochs": 1, "train.batch_size": 256,
                             "train.threads": 1})
    result = run_training(cfg, progress=False, log=lambda _m: None)
    assert 0.0 < result["test_auc"] < 1.0 and result["test_rows"] == 500
