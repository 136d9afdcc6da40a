"""Weighted multi-valued fields (``tag:0.7|other``, issue 15) through prepare: each value's weight
lands in the store's dense matrix after the numeric features, where its id is in the sparse
block (0 at padding, 1.0 for a value written without a weight), exactly as the pipeline's
transform encodes the same rows; and every model trains and pools them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ctrlab.data.formats import file_schema
from ctrlab.data.prepare import PrepareOptions, prepare
from ctrlab.data.readers import RowReader
from ctrlab.data.store import Store
from ctrlab.data.synth_sequence import write_sequence_synthetic
from ctrlab.schema import GenericSchemaConfig

TAGS = {"tags": {"kind": "multi", "separator": "|", "weight_separator": ":", "max_length": 3, "pooling": "sum"}}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("prepare_weighted")
    files = {}
    for split, rows, seed in (("train", 2000, 1), ("valid", 300, 2), ("test", 300, 3)):
        files[split] = root / f"{split}.tsv"
        write_sequence_synthetic(files[split], rows, seed=seed, max_history=8)
    schema = GenericSchemaConfig(dense=["price"], sparse=["user_id", "item_id", "cate_id"], lists=TAGS)
    opts = PrepareOptions(train=[str(files["train"])], valid=[str(files["valid"])], test=[str(files["test"])],
                          format="tsv", schema=schema)
    prepare(opts, root / "store", progress=False, log=lambda _m: None)
    return root, files, schema


def _raw_tags(path) -> list[list[tuple[str, float]]]:
    """The tags of every row, read with plain Python: (value, weight), weight 1.0 when absent."""
    lines = path.read_text().splitlines()
    header = lines[0].split("\t")
    at = header.index("tags")
    out = []
    for line in lines[1:]:
        field = line.split("\t")[at]
        items = [t.rsplit(":", 1) if ":" in t else (t, "1") for t in field.split("|")] if field else []
        out.append([(v, float(w)) for v, w in items])
    return out


def test_store_holds_each_weight_where_its_id_is(prepared):
    root, files, schema = prepared
    store = Store(root / "store")
    spec = store.spec
    assert spec.lists[0].weighted and spec.dense_width == 1 + 3 and spec.weight_columns == {"tags": (1, 4)}
    train = store.split("train")
    dense, sparse = np.asarray(train.dense), np.asarray(train.sparse)
    assert dense.shape == (len(train.label), 4)
    ids, weights = sparse[:, 3:6], dense[:, 1:4]
    assert ((ids == 0) == (weights == 0)).all()  # padding has weight 0, every value a weight > 0
    # the store equals the pipeline's transform of the same rows (the lane requests take)
    reader_schema = file_schema(files["train"], "tsv", schema)[1]
    tables = [chunk.table for chunk in RowReader([files["train"]], reader_schema)]
    encoded = [store.pipeline.transform(t) for t in tables]
    expected_dense = np.concatenate([d for d, _ in encoded])
    expected_sparse = np.concatenate([s for _, s in encoded])
    meta = json.loads((root / "store" / "meta.json").read_text())
    assert meta["fields"]["tags"]["weighted"] is True
    assert meta["split"]["method"] == "files"  # (the train split is the whole training file)
    np.testing.assert_array_equal(sparse, expected_sparse)
    np.testing.assert_array_equal(dense, expected_dense)


def test_weights_are_the_files_weights(prepared):
    root, files, _ = prepared
    store = Store(root / "store")
    train = store.split("train")
    dense = np.asarray(train.dense)
    raw = _raw_tags(files["train"])
    assert len(raw) == len(train.label)
    seen_unweighted = seen_weighted = 0
    for row, tags in enumerate(raw):
        kept = tags[-3:]
        expected = np.zeros(3, dtype=np.float32)
        expected[: len(kept)] = [w for _, w in kept]
        np.testing.assert_array_equal(dense[row, 1:4], expected)
        seen_weighted += any(w != 1.0 for _, w in kept)
        seen_unweighted += any(w == 1.0 for _, w in kept)
    assert seen_weighted > 100 and seen_unweighted > 100


@pytest.mark.parametrize("name", ["deepfm", "dnn", "lr"])
def test_models_pool_the_weights(prepared, name):
    root, _, _ = prepared
    from ctrlab.models.registry import build_model
    store = Store(root / "store")
    spec = store.spec
    train = store.split("train")
    dense = torch.from_numpy(np.asarray(train.dense[:64]).copy())
    sparse = torch.from_numpy(np.asarray(train.sparse[:64]).astype(np.int64))
    torch.manual_seed(0)
    model = build_model(name, spec, {}).eval()
    with torch.no_grad():
        base = model(dense, sparse)
        doubled = dense.clone()
        doubled[:, 1:4] *= 2  # heavier tags change the score; the numeric feature is untouched
        assert not torch.allclose(model(doubled, sparse), base)
        unweighted = dense.clone()
        unweighted[:, 1:4] = (sparse[:, 3:6] != 0).float()
        assert torch.isfinite(model(unweighted, sparse)).all()
