"""The behaviour-sequence models (din, dien, bst) on a spec with a history of items sharing the
target item's table: shapes and gradients, learning whether the target is in the history,
padding and order, DIEN's auxiliary loss, and ONNX export parity with empty and full rows."""

from __future__ import annotations

import pytest
import torch

from ctrlab.export.onnx_export import export_onnx, onnx_parity
from ctrlab.fields import FeatureSpec, ListField
from ctrlab.metrics import roc_auc
from ctrlab.models import build_model, hyperparameter_defaults

SEQUENCE_MODELS = ["din", "dien", "bst"]
ITEMS, USERS, TAGS, L = 21, 10, 6, 6  # vocab sizes (id 0 = missing) and the history length

SPEC = FeatureSpec(
    ("I1", "I2"),
    ("item_id", "user_id"),
    (ITEMS, USERS),
    (ListField("history", L, ITEMS, shares="item_id"), ListField("tags", 3, TAGS, kind="multi")),
)
FLAT = FeatureSpec(("I1",), ("item_id", "user_id"), (ITEMS, USERS))
PARAMS = {
    "embedding_dim": 8,
    "hidden_units": (32, 16),
    "attention_units": (16,),
    "auxiliary_units": (8,),
}
HISTORY = slice(2, 2 + L)  # the history block's columns in the sparse matrix


def make(name: str, seed: int = 0, **extra) -> torch.nn.Module:
    torch.manual_seed(seed)
    valid = hyperparameter_defaults(name)
    return build_model(name, SPEC, {**{k: v for k, v in PARAMS.items() if k in valid}, **extra})


def batch(rows: int, seed: int, lengths: torch.Tensor | None = None):
    """Random rows; history lengths from 0 to L (or ``lengths``), ids >= 1 then padding 0."""
    g = torch.Generator().manual_seed(seed)
    dense = torch.randn(rows, 2, generator=g)
    target = torch.randint(1, ITEMS, (rows, 1), generator=g)
    user = torch.randint(0, USERS, (rows, 1), generator=g)
    if lengths is None:
        lengths = torch.randint(0, L + 1, (rows,), generator=g)
    history = torch.where(torch.arange(L) < lengths[:, None], torch.randint(1, ITEMS, (rows, L), generator=g), 0)
    n_tags = torch.randint(0, 4, (rows, 1), generator=g)
    tags = torch.where(torch.arange(3) < n_tags, torch.randint(1, TAGS, (rows, 3), generator=g), 0)
    return dense, torch.cat([target, user, history, tags], dim=1)


def planted(rows: int = 512, seed: int = 11):
    """Label 1 iff the target item appears in the valid history (balanced; nothing else tells)."""
    g = torch.Generator().manual_seed(seed)
    dense, sparse = batch(rows, seed)
    labels = (torch.rand(rows, generator=g) < 0.5).float()
    lengths = (sparse[:, HISTORY] != 0).sum(1)
    target = sparse[:, 0]
    for r in range(rows):
        n = int(lengths[r])
        if labels[r] == 1 and n == 0:  # a positive needs a history: give it one item
            n = 1
            sparse[r, HISTORY.start] = 1
        block = sparse[r, HISTORY.start:HISTORY.start + n]
        others = torch.tensor([i for i in range(1, ITEMS) if i != int(target[r])])
        block[:] = others[torch.randint(0, len(others), (n,), generator=g)]  # no target in it ...
        if labels[r] == 1:  # ... unless a positive: then at a random valid position
            block[int(torch.randint(0, n, (1,), generator=g))] = target[r]
    return dense, sparse, labels


def bce(model, dense, sparse, labels):
    return torch.nn.functional.binary_cross_entropy_with_logits(model(dense, sparse), labels)


# --------------------------------------------------------------------------- construction


@pytest.mark.parametrize("name", SEQUENCE_MODELS)
def test_needs_a_sequence_sharing_a_target(name):
    message = rf"{name} needs a sequence field that shares a target field's table \(vocab_of\); this spec has none"
    with pytest.raises(ValueError, match=message):
        build_model(name, FLAT)
    unshared = FeatureSpec((), ("item_id",), (ITEMS,), (ListField("history", 4, ITEMS),))
    multi = FeatureSpec((), ("item_id",), (ITEMS,), (ListField("bag", 4, ITEMS, shares="item_id", kind="multi"),))
    for spec in (unshared, multi):
        with pytest.raises(ValueError, match="needs a sequence field"):
            build_model(name, spec)


# --------------------------------------------------------------------------- shapes and gradients


@pytest.mark.parametrize("name", SEQUENCE_MODELS)
def test_shapes_and_gradients_reach_every_parameter(name):
    model = make(name)
    dense, sparse = batch(64, seed=1)
    logits = model(dense, sparse)
    assert logits.shape == (64,) and logits.dtype == torch.float32 and torch.isfinite(logits).all()
    labels = (torch.rand(64, generator=torch.Generator().manual_seed(2)) > 0.5).float()
    bce(model, dense, sparse, labels).backward()
    no_grad = {n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().gt(0).any()}
    # Only DIEN's auxiliary network is idle under the click loss: it learns from auxiliary_loss.
    auxiliary = {n for n, _ in model.named_parameters() if n.startswith("auxiliary.")}
    assert no_grad == (auxiliary if name == "dien" else set())
    if name == "dien":
        model.zero_grad()
        (bce(model, dense, sparse, labels) + model.auxiliary_loss(dense, sparse)).backward()
        assert all(p.grad is not None and p.grad.abs().gt(0).any() for p in model.parameters())
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    model.eval()
    assert model(dense[:1], sparse[:1]).shape == (1,)


def test_dien_auxiliary_loss():
    model = make("dien")
    dense, sparse = batch(64, seed=3)
    g = torch.Generator().manual_seed(0)
    loss = model.auxiliary_loss(dense, sparse, generator=g)
    assert loss.dim() == 0 and torch.isfinite(loss) and loss > 0
    again = model.auxiliary_loss(dense, sparse, generator=torch.Generator().manual_seed(0))
    assert torch.equal(loss, again)
    # No step has a next item when every history has at most one item: the loss is 0.
    dense, short = batch(16, seed=4, lengths=torch.randint(0, 2, (16,)))
    assert model.auxiliary_loss(dense, short).item() == 0.0


# --------------------------------------------------------------------------- learning


@pytest.mark.parametrize("name", SEQUENCE_MODELS)
def test_learns_whether_the_target_is_in_the_history(name):
    dense, sparse, labels = planted()
    model = make(name, seed=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    auc, step = 0.0, 0
    while auc <= 0.9 and step < 300:  # full-batch Adam, the train AUC checked every 20 steps
        model.train()
        for _ in range(20):
            optimizer.zero_grad()
            bce(model, dense, sparse, labels).backward()
            optimizer.step()
        step += 20
        with torch.no_grad():
            auc = roc_auc(labels.numpy(), model.eval()(dense, sparse).numpy())
    print(f"{name}: train AUC {auc:.4f} after {step} steps")
    assert auc > 0.9, f"{name}: train AUC {auc:.3f} after {step} steps"


# --------------------------------------------------------------------------- padding and order


def spread_embeddings(model):
    """Larger random embeddings, so small effects show above float rounding."""
    with torch.no_grad():
        model.inputs.embedding.sparse.weight.normal_(0.0, 0.5)
    return model.eval()


@pytest.mark.parametrize("name", SEQUENCE_MODELS)
def test_padding_embedding_is_never_read(name):
    """Row 0 of the shared item table (the padding id) does not change any logit; targets are >= 1."""
    model = spread_embeddings(make(name))
    dense, sparse = batch(32, seed=5)
    with torch.no_grad():
        before = model(dense, sparse)
        model.inputs.embedding.sparse.weight[0] = 1e3  # the item table's row for id 0
        after = model(dense, sparse)
    assert torch.equal(before, after)


@pytest.mark.parametrize("name", SEQUENCE_MODELS)
def test_logit_depends_on_valid_items_and_their_order(name):
    model = spread_embeddings(make(name))
    dense, sparse = batch(8, seed=6, lengths=torch.tensor([L, 4, 3, L, 2, 5, 3, L]))
    lengths = (sparse[:, HISTORY] != 0).sum(1)
    changed = sparse.clone()
    changed[:, HISTORY.start] = sparse[:, HISTORY.start] % (ITEMS - 1) + 1  # another valid id at position 0
    reversed_ = sparse.clone()
    for r, n in enumerate(lengths.tolist()):
        reversed_[r, HISTORY.start:HISTORY.start + n] = sparse[r, HISTORY.start:HISTORY.start + n].flip(0)
    assert not torch.equal(reversed_, sparse)
    with torch.no_grad():
        base, other, flipped = model(dense, sparse), model(dense, changed), model(dense, reversed_)
    assert (base - other).abs().min() > 1e-6  # every row sees its first valid item
    moved = (reversed_ != sparse).any(1)
    if name == "din":  # a weighted sum: the order does not matter
        torch.testing.assert_close(flipped, base, atol=1e-5, rtol=1e-5)
    else:  # a GRU / positions by distance to the target: it does
        assert (base - flipped)[moved].abs().min() > 1e-6


# --------------------------------------------------------------------------- ONNX


@pytest.mark.parametrize("name", SEQUENCE_MODELS)
def test_onnx_export_parity_with_empty_and_full_histories(name, tmp_path):
    model = make(name, dropout=0.1)
    dense, sparse = batch(64, seed=7)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(3):  # moves Dice's running statistics, so eval mode is really exported
        optimizer.zero_grad()
        bce(model, dense, sparse, (torch.rand(64) > 0.5).float()).backward()
        optimizer.step()
    spread_embeddings(model).train()
    path = export_onnx(model, SPEC, tmp_path / f"{name}.onnx")
    for length in (0, L):
        assert onnx_parity(model, path, *batch(1, seed=8, lengths=torch.tensor([length]))) < 1e-5
    dense, sparse = batch(1000, seed=9)
    lengths = (sparse[:, HISTORY] != 0).sum(1)
    assert (lengths == 0).any() and (lengths == L).any()
    assert onnx_parity(model, path, dense, sparse) < 1e-5
