"""Training adds a model's auxiliary loss (DIEN's next-behaviour loss), weighted by
train.auxiliary_loss_weight: the auxiliary network learns only when the weight is positive, and
the reported train loss stays the click loss."""

from __future__ import annotations

import pytest
import torch

from ctrlab.config import load_config
from ctrlab.data.prepare import PrepareOptions, prepare
from ctrlab.data.store import Store
from ctrlab.data.synth_sequence import write_sequence_synthetic
from ctrlab.models import build_model
from ctrlab.schema import GenericSchemaConfig
from ctrlab.train.run import run_training
from ctrlab.train.rundir import RunDir
from ctrlab.train.trainer import load_weights, set_seed

LISTS = {"hist_item_id": {"kind": "sequence", "max_length": 8, "vocab_of": "item_id"}}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("aux")
    write_sequence_synthetic(root / "seq.tsv", 1500, seed=8, max_history=12)
    schema = GenericSchemaConfig(dense=["price"], sparse=["user_id", "item_id", "cate_id"], lists=LISTS)
    prepare(PrepareOptions(train=[str(root / "seq.tsv")], format="tsv", schema=schema), root / "store",
            progress=False, log=lambda _m: None)
    return root / "store"


def _train(store, run_dir, weight: float):
    cfg = load_config(None, {"data.store": str(store), "run_dir": str(run_dir), "model.name": "dien",
                             "model.params.embedding_dim": 4, "model.params.hidden_units": [8],
                             "model.params.auxiliary_units": [4], "train.epochs": 1, "train.batch_size": 128,
                             "train.threads": 1, "train.auxiliary_loss_weight": weight})
    summary = run_training(cfg, progress=False, log=lambda _m: None)
    weights = load_weights(RunDir(run_dir).checkpoint(summary["best_epoch"]))
    set_seed(cfg.train.seed)
    initial = build_model("dien", Store(store).spec, cfg.model.params).state_dict()
    return summary, weights, initial


def test_the_auxiliary_network_learns_only_with_a_positive_weight(store, tmp_path, one_torch_thread):
    _, off, initial = _train(store, tmp_path / "off", 0.0)
    summary, on, _ = _train(store, tmp_path / "on", 1.0)
    auxiliary = [k for k in initial if k.startswith("auxiliary.")]
    assert auxiliary
    assert all(torch.equal(off[k], initial[k]) for k in auxiliary)  # no gradient: untouched
    assert not all(torch.equal(on[k], initial[k]) for k in auxiliary)
    assert 0.0 < summary["train_loss"] < 1.0  # the click loss (BCE), not the sum


def test_the_weight_is_checked():
    with pytest.raises(Exception, match="auxiliary_loss_weight"):
        load_config(None, {"train.auxiliary_loss_weight": -1.0})
