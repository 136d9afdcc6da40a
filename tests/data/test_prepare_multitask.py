"""Several labels (issue 16) through the readers and prepare: ``label: [click, conversion]`` reads
each label column (0/1; empty only where declared in ``optional_labels``), and the store keeps one
label column per task (``label.npy uint8[N, T]``, MISSING_LABEL where a row's label is missing)
with per-task statistics."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from ctrlab.data.prepare import PrepareOptions, prepare
from ctrlab.data.readers import DataError, RowReader
from ctrlab.data.store import MISSING_LABEL, Store
from ctrlab.data.formats import file_schema
from ctrlab.schema import GenericSchemaConfig, Schema, task_column

HEADER = ["click", "conversion", "user", "item", "price"]


def _write(path, rows):
    path.write_text("\t".join(HEADER) + "\n" + "".join("\t".join(r) + "\n" for r in rows))
    return path


def _rows(n: int, seed: int = 0) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        click = int(rng.random() < 0.3)
        conversion = "" if (not click and rng.random() < 0.5) else str(int(click and rng.random() < 0.4))
        out.append([str(click), conversion, f"u{rng.integers(20)}", f"i{rng.integers(50)}", f"{rng.random():.3f}"])
    return out


SCHEMA = GenericSchemaConfig(label=["click", "conversion"], optional_labels=["conversion"], dense=["price"])


def test_the_schema_names_every_label_column(tmp_path):
    path = _write(tmp_path / "mt.tsv", _rows(5))
    _, schema = file_schema(path, "tsv", SCHEMA)
    assert schema.labels == ("click", "conversion") and schema.more_labels == ("conversion",)
    assert schema.sparse == ("user", "item")  # (label columns are not features)
    assert Schema.from_dict(schema.to_dict()) == schema
    assert schema.without_label().labels == () and "click" not in schema.without_label().columns
    assert [task_column(i) for i in range(3)] == ["label", "label.1", "label.2"]


def test_schema_errors_are_clear():
    with pytest.raises(ValueError, match="optional_labels.*are not label columns"):
        Schema("x", "delimited", ("a", "b"), "a", (), ("b",), optional_labels=("b",))
    with pytest.raises(ValueError, match="several labels need a first label"):
        Schema("x", "slot", (), "a", (), ("c",), more_labels=("b",))
    with pytest.raises(ValueError, match="also used as a feature"):
        Schema("x", "delimited", ("a", "b"), "a", (), ("b",), more_labels=("b",))


def test_readers_give_one_canonical_column_per_label(tmp_path):
    rows = _rows(300, seed=1)
    path = _write(tmp_path / "mt.tsv", rows)
    _, schema = file_schema(path, "tsv", SCHEMA)
    table = next(iter(RowReader([path], schema))).table
    assert table.column_names[:2] == ["label", "label.1"]
    assert table.column("label").to_pylist() == [float(r[0]) for r in rows]
    assert table.column("label.1").to_pylist() == [float(r[1]) if r[1] else None for r in rows]


@pytest.mark.parametrize("bad,field", [(["", "0"], "click"), (["1", "2"], "conversion"), (["x", "0"], "click")])
def test_a_bad_or_missing_required_label_names_file_line_and_field(tmp_path, bad, field):
    rows = _rows(20, seed=2)
    rows[6][:2] = bad
    path = _write(tmp_path / "mt.tsv", rows)
    cfg = GenericSchemaConfig(label=["click", "conversion"], dense=["price"])  # (none optional)
    _, schema = file_schema(path, "tsv", cfg if bad[0] else SCHEMA)
    with pytest.raises(DataError, match=rf"mt.tsv:8: field '{field}': expected a 0/1 label"):
        for _chunk in RowReader([path], schema):
            pass


def test_store_keeps_a_label_column_per_task(tmp_path):
    rows = _rows(2000, seed=3)
    path = _write(tmp_path / "mt.tsv", rows)
    prepare(PrepareOptions(train=[str(path)], format="tsv", schema=SCHEMA, split=[1.0, 0.0, 0.0]),
            tmp_path / "store", progress=False, log=lambda _m: None)
    store = Store(tmp_path / "store")
    assert store.tasks == ["click", "conversion"] and store.multi_task
    label = np.asarray(store.split("train").label)
    assert label.shape == (2000, 2) and label.dtype == np.uint8
    with open(path) as fh:
        raw = list(csv.reader(fh, delimiter="\t"))[1:]
    expected = np.array([[int(r[0]), int(r[1]) if r[1] else MISSING_LABEL] for r in raw], dtype=np.uint8)
    np.testing.assert_array_equal(label, expected)
    meta = json.loads((tmp_path / "store" / "meta.json").read_text())
    stats = meta["splits"]["train"]["tasks"]
    labelled = [r for r in raw if r[1]]
    assert stats["conversion"]["labelled"] == len(labelled)
    assert stats["conversion"]["positives"] == sum(r[1] == "1" for r in labelled)
    assert stats["click"]["positive_rate"] == round(sum(r[0] == "1" for r in raw) / len(raw), 6)


def test_single_label_stores_keep_their_layout(tmp_path):
    path = _write(tmp_path / "one.tsv", _rows(200, seed=4))
    cfg = GenericSchemaConfig(label="click", dense=["price"], sparse=["user", "item"])
    prepare(PrepareOptions(train=[str(path)], format="tsv", schema=cfg, split=[1.0, 0.0, 0.0]),
            tmp_path / "store", progress=False, log=lambda _m: None)
    store = Store(tmp_path / "store")
    assert store.tasks == ["click"] and not store.multi_task
    assert np.asarray(store.split("train").label).shape == (200,)
    assert "tasks" not in json.loads((tmp_path / "store" / "meta.json").read_text())
