"""ctrlab.train.grow (issue 17): a model's embedding tables grown to a grown vocabulary, checked
against a loop-written copy: old rows identical, new rows and reset rows the fresh model's, other
tables and dense weights untouched; the row-sparse optimizer state grown the same way."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ctrlab.fields import FeatureSpec, ListField
from ctrlab.models import build_model
from ctrlab.nn.embedding import FieldEmbedding, table_layout
from ctrlab.train.grow import GrowthError, grow_sparse_optimizer_state, grow_state_dict, growth_plan
from ctrlab.train.optim import RowSparseOptimizer
from ctrlab.train.trainer import embedding_parameters

OLD = FeatureSpec(("I1", "I2"), ("C1", "C2", "C3"), (5, 7, 4),
                  lists=(ListField("tags", 3, 6, kind="multi"), ListField("hist", 2, 5, shares="C1")))
NEW = FeatureSpec(("I1", "I2"), ("C1", "C2", "C3"), (9, 7, 6),
                  lists=(ListField("tags", 3, 8, kind="multi"), ListField("hist", 2, 9, shares="C1")))
RESET = {"C1": np.array([3], np.int32), "C3": np.array([2, 3], np.int32), "tags": np.array([1, 7], np.int32)}
VOCABS = ["C1", "C2", "C3", "tags", "tags", "tags", "C1", "C1"]  # per sparse matrix column


def reference(old_w: torch.Tensor, fresh_w: torch.Tensor, old_spec, new_spec, reset) -> torch.Tensor:
    """The grown table, row by row."""
    old_sizes, old_cols, _ = table_layout(old_spec)
    new_sizes, new_cols, _ = table_layout(new_spec)
    out = torch.empty_like(fresh_w)
    old_off = np.concatenate([[0], np.cumsum(old_sizes)])
    new_off = np.concatenate([[0], np.cumsum(new_sizes)])
    for t in range(len(new_sizes)):
        vocab = VOCABS[new_cols.index(t)]
        for i in range(new_sizes[t]):
            if i < old_sizes[t] and i not in set(reset.get(vocab, [])):
                out[new_off[t] + i] = old_w[old_off[t] + i]
            else:
                out[new_off[t] + i] = fresh_w[new_off[t] + i]
    return out


@pytest.mark.parametrize("name", ["deepfm", "ffm", "dnn"])
def test_grow_state_dict_matches_loop(name):
    params = {"embedding_dim": 3} if name != "dnn" else {"embedding_dim": 3, "hidden_units": [8]}
    torch.manual_seed(0)
    old_model = build_model(name, OLD, params)
    with torch.no_grad():
        for p in old_model.parameters():
            p.add_(torch.randn_like(p))  # unlike any fresh initialisation
    old_state = {k: v.clone() for k, v in old_model.state_dict().items()}
    torch.manual_seed(1)
    new_model = build_model(name, NEW, params)
    fresh = {k: v.clone() for k, v in new_model.state_dict().items()}
    grown = grow_state_dict(new_model, old_state, OLD, NEW, RESET, column_vocabularies=VOCABS)
    new_model.load_state_dict(grown)
    tables = {f"{p}.weight" for p, m in new_model.named_modules() if isinstance(m, FieldEmbedding)}
    assert tables
    for key, value in grown.items():
        if key in tables:
            expected = reference(old_state[key], fresh[key], OLD, NEW, RESET)
            assert torch.equal(value, expected), key
        else:
            assert torch.equal(value, old_state[key]), key
    # an untouched table (C2: not grown, nothing reset) is the old one exactly
    key = next(iter(sorted(tables)))
    new_sizes, _, _ = table_layout(NEW)
    assert torch.equal(grown[key][9:16], old_state[key][5:12])


def test_grow_sparse_optimizer_state_matches_loop():
    torch.manual_seed(0)
    old_model = build_model("fm", OLD, {"embedding_dim": 2})
    opt = RowSparseOptimizer(embedding_parameters(old_model), "adam", lr=0.1)
    dense = torch.randn(16, 2)
    sparse = torch.stack([torch.randint(0, s, (16,)) for s in OLD.column_vocab_sizes], dim=1)
    for _ in range(3):
        opt.zero_grad()
        old_model(dense, sparse).sum().backward()
        opt.step()
    old_opt = opt.state_dict()
    new_model = build_model("fm", NEW, {"embedding_dim": 2})
    new_opt = RowSparseOptimizer(embedding_parameters(new_model), "adam", lr=0.1)
    grown = grow_sparse_optimizer_state(new_model, old_opt, new_opt.state_dict(), OLD, NEW, RESET,
                                        column_vocabularies=VOCABS)
    assert grown["step_count"] == 3 and grown["kind"] == "adam"
    for old_st, new_st in zip(old_opt["state"], grown["state"]):
        old_m, new_m = old_st["moments"], new_st["moments"]
        expected = reference(old_m.flatten(1), torch.zeros_like(new_m).flatten(1), OLD, NEW, RESET)
        assert torch.equal(new_m.flatten(1), expected)
        assert old_m.abs().sum() > 0
    new_opt.load_state_dict(grown)


def test_grow_refuses_what_does_not_fit():
    model = build_model("fm", NEW, {"embedding_dim": 2})
    other = build_model("fm", NEW, {"embedding_dim": 2}).state_dict()  # already the new size: not OLD's
    with pytest.raises(GrowthError, match="does not fit the old spec"):
        grow_state_dict(model, other, OLD, NEW, {}, column_vocabularies=VOCABS)
    shrunk = FeatureSpec(("I1", "I2"), ("C1", "C2", "C3"), (4, 7, 4), lists=OLD.lists)
    with pytest.raises(GrowthError, match="shrank"):
        growth_plan(model, OLD, shrunk)
    fewer = FeatureSpec(("I1", "I2"), ("C1", "C2"), (5, 7))
    with pytest.raises(GrowthError, match="tables changed"):
        growth_plan(model, fewer, NEW)
