"""DMR (ctrlab.models.dmr) and its blocks (ctrlab.nn.match): the blocks against per-row loops,
padding invariance, the auxiliary match loss, learning a planted signal, streams of several
sequences (PaddleRec's cate + brand histories), ONNX parity and a run through the trainer."""

from __future__ import annotations

import math

import pytest
import torch

from ctrlab.export.onnx_export import export_onnx, onnx_parity
from ctrlab.fields import FeatureSpec, ListField
from ctrlab.metrics import roc_auc
from ctrlab.models import build_model
from ctrlab.nn.match import ItemToItem, UserToItem, recency, u2i_auxiliary_loss

ITEMS, CATES, USERS, L = 21, 7, 10, 6
SPEC = FeatureSpec(("I1", "I2"), ("item_id", "user_id"), (ITEMS, USERS),
                   (ListField("history", L, ITEMS, shares="item_id"), ListField("tags", 3, 6, kind="multi")))
#: PaddleRec's layout: category and brand histories of one length (one stream), plus a shorter one
PADDLE = FeatureSpec(("price",), ("cate_id", "brand", "user_id"), (CATES, ITEMS, USERS),
                     (ListField("cate_his", L, CATES, shares="cate_id"),
                      ListField("brand_his", L, ITEMS, shares="brand"), ListField("recent", 3, ITEMS, shares="brand")))
PARAMS = {"embedding_dim": 8, "hidden_units": (32, 16), "attention_units": (16,), "position_dim": 4}
HISTORY = slice(2, 2 + L)


def make(spec=SPEC, seed=0, **extra):
    torch.manual_seed(seed)
    return build_model("dmr", spec, {**PARAMS, **extra})


def batch(rows, seed, lengths=None, spec=SPEC):
    """Random rows: per list field a prefix of valid ids (lengths from 0 to its max, or ``lengths``), then 0."""
    g = torch.Generator().manual_seed(seed)
    dense = torch.randn(rows, spec.n_dense, generator=g)
    columns = [torch.randint(1, size, (rows, 1), generator=g) for size in spec.vocab_sizes]
    for field in spec.lists:
        vocab = spec.vocab_sizes[spec.sparse_names.index(field.shares)] if field.shares else field.vocab_size
        n = torch.randint(0, field.length + 1, (rows,), generator=g) if lengths is None else lengths.clamp(
            max=field.length)
        ids = torch.randint(1, vocab, (rows, field.length), generator=g)
        columns.append(torch.where(torch.arange(field.length) < n[:, None], ids, 0))
    return dense, torch.cat(columns, dim=1)


# --------------------------------------------------------------------------- blocks against loops


def garbage_padded(rows=7, dim=6, steps=L, seed=0):
    g = torch.Generator().manual_seed(seed)
    seq = torch.randn(rows, steps, dim, generator=g, dtype=torch.float64)
    lengths = torch.tensor([0, 1, steps, 3, steps, 2, 5][:rows])
    mask = torch.arange(steps) < lengths[:, None]
    seq[~mask] = torch.tensor([math.nan, math.inf, 1e6])[torch.arange(int((~mask).sum())) % 3].double()[:, None]
    return seq, lengths


def double_block(cls, dim=6, **kwargs):
    torch.manual_seed(1)
    block = cls(dim, 10, position_dim=3, attention_units=(5,), **kwargs).double()
    with torch.no_grad():
        block.position.weight.normal_()
    return block.eval()


def loop_scores(block, seq, context):
    """Raw attention scores of one row's valid steps (``seq [n, E]``), step by step."""
    n = seq.shape[0]
    out = []
    for t in range(n):
        p = block.position.weight[n - t]  # newest 1, oldest n
        q = block.query(p if context is None else torch.cat([context, p]))
        e = seq[t]
        out.append(block.score(torch.cat([q, e, q - e, q * e])).squeeze())
    return torch.stack(out) if out else seq.new_zeros(0)


def test_recency():
    assert recency(torch.tensor([0, 1, 3]), 4).tolist() == [[0, 0, 0, 0], [1, 0, 0, 0], [3, 2, 1, 0]]


def test_user_to_item_matches_a_loop():
    block = double_block(UserToItem)
    seq, lengths = garbage_padded()
    states, user = block(seq, lengths)
    assert torch.isfinite(states).all() and torch.isfinite(user).all()
    for r, n in enumerate(lengths.tolist()):
        scores = loop_scores(block, seq[r, :n], None)
        expected = torch.zeros(L, 6, dtype=torch.float64)
        for t in range(n):
            weights = torch.softmax(scores[: t + 1], dim=0)
            expected[t] = block.output((weights[:, None] * seq[r, : t + 1]).sum(0))
        torch.testing.assert_close(states[r], expected)
        torch.testing.assert_close(user[r], expected[n - 1] if n else torch.zeros(6, dtype=torch.float64))


def test_item_to_item_matches_a_loop():
    block = double_block(ItemToItem)
    seq, lengths = garbage_padded()
    target = torch.randn(7, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    weighted, relevance = block(seq, lengths, target)
    for r, n in enumerate(lengths.tolist()):
        scores = loop_scores(block, seq[r, :n], target[r])
        expected = (torch.softmax(scores, 0)[:, None] * seq[r, :n]).sum(0) if n else torch.zeros(6).double()
        torch.testing.assert_close(weighted[r], expected)
        torch.testing.assert_close(relevance[r], scores.sum())


@pytest.mark.parametrize("cls", [UserToItem, ItemToItem])
def test_blocks_ignore_padding_and_its_amount(cls):
    """More padding (garbage) after the same rows changes nothing; gradients stay finite."""
    block = double_block(cls)
    seq, lengths = garbage_padded()
    longer = torch.cat([seq, torch.full((7, 4, 6), math.nan, dtype=torch.float64)], dim=1).requires_grad_()
    target = torch.randn(7, 6, dtype=torch.float64)
    args = () if cls is UserToItem else (target,)
    short, long = block(seq, lengths, *args), block(longer, lengths, *args)
    torch.testing.assert_close(short[1], long[1])
    torch.testing.assert_close(short[0], long[0][:, :L] if cls is UserToItem else long[0])
    sum(o.sum() for o in long).backward()
    assert torch.isfinite(longer.grad).all() and (longer.grad[:, L:] == 0).all()
    with pytest.raises(ValueError, match="exceeds max_length 10"):
        block(torch.zeros(1, 11, 6, dtype=torch.float64), torch.tensor([2]), *[a[:1] for a in args])


def test_u2i_auxiliary_loss_matches_a_loop():
    g = torch.Generator().manual_seed(4)
    states, items = torch.randn(5, L, 3, generator=g), torch.randn(5, L, 3, generator=g)
    lengths = torch.tensor([0, 1, 2, L, 4])
    loss = u2i_auxiliary_loss(states, items, lengths, num_negatives=3, generator=torch.Generator().manual_seed(9))
    users, positives = [], []  # row by row, step by step: (u_t, v'_{t+1}) for t < length - 1
    for r, n in enumerate(lengths.tolist()):
        for t in range(n - 1):
            users.append(states[r, t])
            positives.append(items[r, t + 1])
    draws = torch.randint(len(positives), (len(positives), 3), generator=torch.Generator().manual_seed(9))
    terms = []
    for i, (u, v) in enumerate(zip(users, positives)):
        logits = torch.stack([u @ v] + [u @ positives[j] for j in draws[i].tolist()])
        terms.append(-torch.log_softmax(logits, 0)[0])
    torch.testing.assert_close(loss, torch.stack(terms).mean())
    assert u2i_auxiliary_loss(states, items, torch.tensor([0, 1, 1, 0, 1]), num_negatives=3).item() == 0.0


# --------------------------------------------------------------------------- the model


def spread(model):
    with torch.no_grad():
        model.inputs.embedding.sparse.weight.normal_(0.0, 0.5)
        model.output.weight.normal_(0.0, 0.5)
    return model.eval()


@pytest.mark.parametrize("spec", [SPEC, PADDLE], ids=["one", "paddle"])
def test_rows_do_not_depend_on_their_batch(spec):
    """Each row of a batch with every history length gives its batch-of-1 logit."""
    model = spread(make(spec))
    dense, sparse = batch(16, seed=5, lengths=torch.arange(16) % (L + 1), spec=spec)
    with torch.no_grad():
        together = model(dense, sparse)
        alone = torch.cat([model(dense[r:r + 1], sparse[r:r + 1]) for r in range(16)])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-6)


def test_padding_rows_are_never_read_and_order_matters():
    model = spread(make())
    dense, sparse = batch(32, seed=6)
    with torch.no_grad():
        before = model(dense, sparse)
        model.inputs.embedding.sparse.weight[0] = 1e3  # the shared item table's row for id 0
        model.output.weight[0] = 1e3  # the output table's
        assert torch.equal(before, model(dense, sparse))
    dense, sparse = batch(8, seed=7, lengths=torch.tensor([L, 4, 3, L, 2, 5, 3, L]))
    flipped = sparse.clone()
    for r, n in enumerate((sparse[:, HISTORY] != 0).sum(1).tolist()):
        flipped[r, HISTORY.start:HISTORY.start + n] = sparse[r, HISTORY.start:HISTORY.start + n].flip(0)
    moved = (flipped != sparse).any(1)
    with torch.no_grad():
        assert (model(dense, sparse) - model(dense, flipped))[moved].abs().min() > 1e-6  # positions by recency


def test_streams_concatenate_sequences_of_one_length():
    model = make(PADDLE)
    assert model.streams == [[0, 1], [2]]
    assert [m.position.num_embeddings for m in model.user_to_item] == [L + 1, 4]
    assert model.item_to_item[0].query[0].in_features == 2 * 8 + 4  # [target cate + brand, position]
    dense, sparse = batch(9, seed=8, spec=PADDLE)
    assert model(dense, sparse).shape == (9,)


def test_needs_a_shared_sequence():
    with pytest.raises(ValueError, match="dmr needs a sequence field"):
        build_model("dmr", FeatureSpec(("I1",), ("item_id",), (ITEMS,)))


@pytest.mark.parametrize("spec", [SPEC, PADDLE], ids=["one", "paddle"])
def test_auxiliary_loss(spec):
    model = make(spec)
    dense, sparse = batch(64, seed=3, spec=spec)
    loss = model.auxiliary_loss(dense, sparse, generator=torch.Generator().manual_seed(0))
    assert loss.dim() == 0 and torch.isfinite(loss) and loss > 0
    assert torch.equal(loss, model.auxiliary_loss(dense, sparse, generator=torch.Generator().manual_seed(0)))
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    for name in ["output.weight", "user_to_item.0.position.weight", "user_to_item.0.score.layers.0.weight",
                 "user_to_item.0.output.0.weight", "user_to_item.0.output.1.weight", "inputs.embedding.sparse.weight"]:
        assert grads[name] is not None and torch.isfinite(grads[name]).all() and grads[name].abs().gt(0).any(), name
    assert all(grads[n] is None for n in grads if n.startswith(("item_to_item.", "mlp.")))
    _, short = batch(16, seed=4, lengths=torch.randint(0, 2, (16,)), spec=spec)
    assert model.auxiliary_loss(dense[:16], short).item() == 0.0  # no step has a next behaviour


def planted(rows=512, seed=11):
    """Label 1 iff the target item is in the valid history (as tests/models/test_sequence_models.py)."""
    g = torch.Generator().manual_seed(seed)
    dense, sparse = batch(rows, seed, lengths=torch.randint(1, L + 1, (rows,), generator=g))
    labels = (torch.rand(rows, generator=g) < 0.5).float()
    for r in range(rows):
        n, target = int((sparse[r, HISTORY] != 0).sum()), int(sparse[r, 0])
        others = torch.tensor([i for i in range(1, ITEMS) if i != target])
        sparse[r, HISTORY.start:HISTORY.start + n] = others[torch.randint(0, len(others), (n,), generator=g)]
        if labels[r] == 1:
            sparse[r, HISTORY.start + int(torch.randint(0, n, (1,), generator=g))] = target
    return dense, sparse, labels


def test_learns_whether_the_target_is_in_the_history():
    dense, sparse, labels = planted()
    model = make()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    losses, g = [], torch.Generator().manual_seed(0)
    for _ in range(150):
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(dense, sparse), labels)
        (loss + 0.1 * model.auxiliary_loss(dense, sparse, generator=g)).backward()
        optimizer.step()
        losses.append(loss.item())
    with torch.no_grad():
        auc = roc_auc(labels.numpy(), model.eval()(dense, sparse).numpy())
    assert losses[-1] < 0.5 * losses[0] and auc > 0.9, (losses[0], losses[-1], auc)


# --------------------------------------------------------------------------- export and training


@pytest.mark.parametrize("spec", [SPEC, PADDLE], ids=["one", "paddle"])
def test_onnx_export_parity_with_empty_and_full_histories(spec, tmp_path):
    model = make(spec, dropout=0.1, batch_norm=True)
    dense, sparse = batch(64, seed=7, spec=spec)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(3):  # moves the BatchNorm statistics, so eval mode is really exported
        optimizer.zero_grad()
        model(dense, sparse).sum().backward()
        optimizer.step()
    path = export_onnx(spread(model).train(), spec, tmp_path / "dmr.onnx")
    for length in (0, 1, L):
        assert onnx_parity(model, path, *batch(1, seed=8, lengths=torch.tensor([length]), spec=spec)) < 1e-5
    assert onnx_parity(model, path, *batch(1000, seed=9, spec=spec)) < 1e-5


def test_trains_through_the_trainer_with_its_auxiliary_loss(tmp_path, one_torch_thread):
    from ctrlab.config import load_config
    from ctrlab.data.prepare import PrepareOptions, prepare
    from ctrlab.data.synth_sequence import write_sequence_synthetic
    from ctrlab.schema import GenericSchemaConfig
    from ctrlab.train.run import run_training

    write_sequence_synthetic(tmp_path / "seq.tsv", 1000, seed=8, max_history=12)
    lists = {"hist_item_id": {"kind": "sequence", "max_length": 8, "vocab_of": "item_id"}}
    schema = GenericSchemaConfig(dense=["price"], sparse=["user_id", "item_id", "cate_id"], lists=lists)
    prepare(PrepareOptions(train=[str(tmp_path / "seq.tsv")], format="tsv", schema=schema), tmp_path / "store",
            progress=False, log=lambda _m: None)
    cfg = load_config(None, {"data.store": str(tmp_path / "store"), "run_dir": str(tmp_path / "run"),
                             "model.name": "dmr", "model.params.embedding_dim": 4, "model.params.hidden_units": [8],
                             "train.epochs": 1, "train.batch_size": 128, "train.threads": 1,
                             "train.auxiliary_loss_weight": 0.1})
    summary = run_training(cfg, progress=False, log=lambda _m: None)
    assert 0.0 < summary["train_loss"] < 1.0
