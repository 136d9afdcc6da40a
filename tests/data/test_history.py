"""Behaviour histories from an interaction log: no later (or same-time) interaction in a
history, oldest first, cut to max_length, negatives the user never touched; the real
torch-rechub Amazon sample goes through prepare and a DIN."""

from __future__ import annotations

import csv

import pytest

from ctrlab.cli import main
from ctrlab.data.history import build_histories

LOG = """user_id,item_id,time,cate_id
u1,a,30,x
u1,b,10,y
u2,c,5,x
u1,c,20,x
u1,d,30,y
u1,e,40,y
u2,a,6,x
"""


def _rows(path):
    with open(path, encoding="utf-8") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def test_histories_hold_strictly_earlier_items_oldest_first(tmp_path):
    (tmp_path / "log.csv").write_text(LOG)
    counts = build_histories(tmp_path / "log.csv", tmp_path / "h.tsv", max_length=2, negatives=1, seed=3)
    rows = _rows(tmp_path / "h.tsv")
    positives = [r for r in rows if r["label"] == "1"]
    # u1 at times 10(b) 20(c) 30(a, d) 40(e); u2 at 5(c) 6(a)
    assert [(r["user_id"], r["item_id"], r["hist_item_id"]) for r in positives] == [
        ("u1", "c", "b"), ("u1", "a", "b|c"), ("u1", "d", "b|c"),  # a and d share a time: neither sees the other
        ("u1", "e", "a|d"),  # the most recent 2 of b, c, a, d
        ("u2", "a", "c")]
    assert positives[3]["hist_item_id"] == "a|d" and positives[3]["hist_cate_id"] == "x|y"
    negatives = [r for r in rows if r["label"] == "0"]
    touched = {"u1": {"a", "b", "c", "d", "e"}, "u2": {"a", "c"}}
    assert all(r["item_id"] not in touched[r["user_id"]] for r in negatives)
    assert counts == {"users": 2, "interactions": 7, "positives": 5, "negatives": len(negatives),
                      "rows": 5 + len(negatives)}
    assert all(r["cate_id"] == {"a": "x", "b": "y", "c": "x", "d": "y", "e": "y"}[r["item_id"]] for r in positives)


def test_bad_logs_are_named(tmp_path):
    (tmp_path / "log.csv").write_text("user,item,time\nu1,a,1\n")
    with pytest.raises(ValueError, match=r"no column\(s\) \['user_id', 'item_id', 'cate_id'\]"):
        build_histories(tmp_path / "log.csv", tmp_path / "h.tsv")
    (tmp_path / "log.csv").write_text("user_id,item_id,time,cate_id\nu1,a,1,x\nu1,,2,y\n")
    with pytest.raises(ValueError, match=r"column 'item_id' has empty values \(row 3 of the file\)"):
        build_histories(tmp_path / "log.csv", tmp_path / "h.tsv")
    assert not (tmp_path / "h.tsv").exists()


def test_the_amazon_sample_trains_a_din(tmp_path, monkeypatch, one_torch_thread):
    from ctrlab.config import load_config
    from ctrlab.data.prepare import PrepareOptions, prepare
    from ctrlab.schema import GenericSchemaConfig
    from ctrlab.train.run import run_training
    from conftest import SHARED_DATA

    log = SHARED_DATA / "datawhalechina__torch-rechub/examples/ranking/data/amazon-electronics/amazon_electronics_sample.csv"
    if not log.is_file():
        pytest.skip(f"{log} is not available")
    assert main(["data", "history", str(log), "--out", str(tmp_path / "h.tsv"), "--max-length", "10"]) == 0
    lists = {"hist_item_id": {"kind": "sequence", "max_length": 10, "vocab_of": "item_id"},
             "hist_cate_id": {"kind": "sequence", "max_length": 10, "vocab_of": "cate_id"}}
    schema = GenericSchemaConfig(sparse=["user_id", "item_id", "cate_id"], lists=lists)
    prepare(PrepareOptions(train=[str(tmp_path / "h.tsv")], format="tsv", schema=schema, split=[0.6, 0.2, 0.2]),
            tmp_path / "store", progress=False, log=lambda _m: None)
    cfg = load_config(None, {"data.store": str(tmp_path / "store"), "run_dir": str(tmp_path / "run"),
                             "model.name": "din", "model.params.embedding_dim": 4, "model.params.hidden_units": [8],
                             "train.epochs": 1, "train.batch_size": 16, "train.threads": 1})
    summary = run_training(cfg, progress=False, log=lambda _m: None)
    assert summary["test_rows"] > 0 and 0.0 <= summary["test_auc"] <= 1.0
