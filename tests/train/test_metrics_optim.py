"""Tests for ctrlab.metrics (exact AUC / logloss against scikit-learn), the row-sparse
embedding optimizer (against torch's optimizers and hand-written lazy references) and
FieldEmbedding's sparse gradient."""

from __future__ import annotations

import copy
import io
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import log_loss as sk_log_loss
from sklearn.metrics import roc_auc_score

from ctrlab.nn.embedding import FieldEmbedding
from ctrlab.metrics import LOGLOSS_EPS, evaluate_scores, log_loss, roc_auc
from ctrlab.train.optim import OPTIMIZERS, RowSparseOptimizer, dense_optimizer


pytestmark = pytest.mark.usefixtures("one_torch_thread")

# --------------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("decimals", [1, 2, 3, None])
def test_roc_auc_matches_sklearn_with_ties(seed, decimals):
    rng = np.random.default_rng(seed)
    n = 5000
    labels = (rng.random(n) < 0.3).astype(np.uint8)
    scores = 1 / (1 + np.exp(-(rng.normal(size=n) + 0.8 * labels)))
    if decimals is not None:  # rounding creates many ties, also across the classes
        scores = np.round(scores, decimals)
        assert np.unique(scores).size < n / 4
    expected = roc_auc_score(labels, scores)
    assert roc_auc(labels, scores) == pytest.approx(expected, abs=1e-12)
    # float32 scores and float labels give the same value
    assert roc_auc(labels.astype(np.float32), scores.astype(np.float32)) == pytest.approx(
        roc_auc_score(labels, scores.astype(np.float32)), abs=1e-12)


def test_roc_auc_is_independent_of_row_order():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 2, 1000)
    scores = np.round(rng.random(1000), 1)
    perm = rng.permutation(1000)
    assert roc_auc(labels, scores) == pytest.approx(roc_auc(labels[perm], scores[perm]), abs=1e-12)


def test_roc_auc_all_equal_scores_is_half():
    labels = np.array([0, 1, 1, 0, 1, 0, 0])
    assert roc_auc(labels, np.full(7, 0.37)) == 0.5
    assert roc_auc_score(labels, np.full(7, 0.37)) == 0.5


def test_roc_auc_perfect_and_inverted_and_hand_value():
    labels = np.array([0, 0, 1, 0, 1, 1])
    scores = np.array([0.1, 0.2, 0.8, 0.3, 0.9, 0.7])
    assert roc_auc(labels, scores) == 1.0
    assert roc_auc(labels, -scores) == 0.0
    assert roc_auc(labels, 1 - scores) == 0.0
    # one tie between a positive and a negative counts one half: pairs (p, n) = 3 x 3 = 9,
    # 0.9 and 0.8 beat all three negatives; 0.5 beats 0.1, ties 0.5, loses to 0.6
    labels = np.array([1, 1, 1, 0, 0, 0])
    scores = np.array([0.9, 0.8, 0.5, 0.5, 0.6, 0.1])
    assert roc_auc(labels, scores) == pytest.approx((3 + 3 + 1 + 0.5) / 9)
    assert roc_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores))


@pytest.mark.parametrize("labels", [np.zeros(10), np.ones(10), np.array([], dtype=float)])
def test_roc_auc_single_class_is_nan(labels):
    assert math.isnan(roc_auc(labels, np.linspace(0, 1, labels.size)))


def test_roc_auc_length_mismatch_raises():
    with pytest.raises(ValueError, match="differ in length"):
        roc_auc(np.array([0, 1, 0]), np.array([0.1, 0.2]))


@pytest.mark.parametrize("seed", [0, 1])
def test_log_loss_matches_sklearn_with_the_same_clipping(seed):
    rng = np.random.default_rng(seed)
    n = 3000
    labels = rng.integers(0, 2, n)
    probs = rng.random(n)
    # exact 0 / 1 (a float32 sigmoid can round there) and values inside the clip band
    probs[:20] = 0.0
    probs[20:40] = 1.0
    probs[40:50] = 1e-9
    probs[50:60] = 1 - 1e-9
    clipped = np.clip(probs, LOGLOSS_EPS, 1 - LOGLOSS_EPS)
    expected = sk_log_loss(labels, clipped, labels=[0, 1])
    got = log_loss(labels, probs)
    assert math.isfinite(got)
    assert got == pytest.approx(expected, rel=1e-10)
    # unclipped values in the interior: identical to sklearn without any clipping concerns
    inner = np.clip(probs, 0.01, 0.99)
    assert log_loss(labels, inner) == pytest.approx(sk_log_loss(labels, inner, labels=[0, 1]), rel=1e-10)


def test_log_loss_hand_value_and_eps():
    assert log_loss([1, 0], [0.8, 0.4]) == pytest.approx(-(math.log(0.8) + math.log(0.6)) / 2)
    # a confident mistake costs -log(eps), not infinity
    assert log_loss([1], [0.0]) == pytest.approx(-math.log(LOGLOSS_EPS))
    assert log_loss([1], [0.0], eps=1e-3) == pytest.approx(-math.log(1e-3))


def test_log_loss_length_mismatch_raises_and_empty_is_nan():
    with pytest.raises(ValueError, match="differ in length"):
        log_loss(np.array([0, 1, 0]), np.array([0.1, 0.2]))
    assert math.isnan(log_loss(np.array([]), np.array([])))


def test_evaluate_scores():
    labels = np.array([0, 1, 1, 0], dtype=np.uint8)
    probs = np.array([0.2, 0.7, 0.4, 0.5], dtype=np.float32)
    res = evaluate_scores(labels, probs)
    assert res["rows"] == 4 and res["positive_rate"] == 0.5
    assert res["auc"] == pytest.approx(roc_auc_score(labels, probs))
    assert res["logloss"] == pytest.approx(sk_log_loss(labels, probs.astype(np.float64)))


# --------------------------------------------------------------------------------------------
# RowSparseOptimizer
# --------------------------------------------------------------------------------------------

ROWS, DIM = 24, 3
TOUCHABLE = 10  # gradients only ever touch rows 0..9; rows 10..23 must never change


def _sparse_grads(steps: int = 6, batch: int = 16, seed: int = 1, scale: float = 1.0) -> list[torch.Tensor]:
    """Uncoalesced COO gradients [ROWS, DIM], rows drawn from 0..TOUCHABLE-1 with repeats."""
    gen = torch.Generator().manual_seed(seed)
    grads = []
    for _ in range(steps):
        idx = torch.randint(0, TOUCHABLE, (batch,), generator=gen)
        assert idx.unique().numel() < batch  # repeated rows inside the batch
        vals = torch.randn(batch, DIM, generator=gen, dtype=torch.float64) * scale
        grads.append(torch.sparse_coo_tensor(idx.view(1, -1), vals, (ROWS, DIM), check_invariants=False))
    return grads


pytestmark = pytest.mark.filterwarnings("ignore:Sparse invariant checks are implicitly disabled")


def _initial_weights(seed: int = 0) -> torch.Tensor:
    return torch.randn(ROWS, DIM, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _run(make_opt, grads, w0):
    p = torch.nn.Parameter(w0.clone())
    opt = make_opt([p])
    for g in grads:
        p.grad = g.clone()
        opt.step()
    return p.detach().clone(), opt


def _dense_rows(g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(touched rows, the summed dense gradient) of a COO gradient."""
    dense = g.to_dense()
    rows = torch.unique(g._indices()[0])
    return rows, dense


def _lazy_adam_reference(grads, w0, lr, betas=(0.9, 0.999), eps=1e-8, reg=0.0):
    """torch.optim.Adam's formula (denominator sqrt(v)/sqrt(bc2) + eps) applied to touched rows
    only, the step count being the global step."""
    w = w0.clone()
    m = torch.zeros_like(w)
    v = torch.zeros_like(w)
    b1, b2 = betas
    for t, g in enumerate(grads, start=1):
        rows, dense = _dense_rows(g)
        gr = dense[rows] + reg * w[rows]
        m[rows] = b1 * m[rows] + (1 - b1) * gr
        v[rows] = b2 * v[rows] + (1 - b2) * gr * gr
        bc1, bc2 = 1 - b1 ** t, 1 - b2 ** t
        w[rows] = w[rows] - lr * (m[rows] / bc1) / ((v[rows] / bc2).sqrt() + eps)
    return w


def _lazy_adagrad_reference(grads, w0, lr, eps=1e-8, reg=0.0, init=0.0):
    w = w0.clone()
    acc = torch.full_like(w, init)
    for g in grads:
        rows, dense = _dense_rows(g)
        gr = dense[rows] + reg * w[rows]
        acc[rows] += gr * gr
        w[rows] = w[rows] - lr * gr / (acc[rows].sqrt() + eps)
    return w


def _lazy_momentum_reference(grads, w0, lr, momentum, reg=0.0):
    w = w0.clone()
    buf = torch.zeros_like(w)
    for g in grads:
        rows, dense = _dense_rows(g)
        gr = dense[rows] + reg * w[rows]
        buf[rows] = momentum * buf[rows] + gr
        w[rows] = w[rows] - lr * buf[rows]
    return w


def test_repeated_rows_are_summed():
    idx = torch.tensor([3, 1, 3, 3, 0])
    vals = torch.arange(10, dtype=torch.float64).view(5, 2)
    g = torch.sparse_coo_tensor(idx.view(1, -1), vals, (6, 2), check_invariants=False)
    w0 = torch.zeros(6, 2, dtype=torch.float64)
    ours, _ = _run(lambda ps: RowSparseOptimizer(ps, "sgd", lr=1.0), [g], w0)
    assert torch.equal(ours, -g.to_dense())
    assert torch.equal(ours[[2, 4, 5]], w0[[2, 4, 5]])
    # a dense gradient updates every row
    dense = torch.randn(6, 2, dtype=torch.float64)
    ours, _ = _run(lambda ps: RowSparseOptimizer(ps, "sgd", lr=0.5), [dense], w0)
    torch.testing.assert_close(ours, -0.5 * dense, rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["adam", "adagrad", "sgd"])
def test_several_tables_in_one_optimizer_equal_one_optimizer_each(kind):
    """Tables looked up with the same ids in a step (a k-dim embedding and its 1-dim first-order
    weights), one with other ids and one without a gradient: each is updated as if alone."""
    steps = 5
    gen = torch.Generator().manual_seed(4)
    shapes = [(ROWS, DIM), (ROWS, 1), (ROWS, DIM), (ROWS, 2)]
    w0 = [torch.randn(*shape, generator=gen, dtype=torch.float64) for shape in shapes]
    grads = []
    for _ in range(steps):
        shared = torch.randint(0, TOUCHABLE, (12,), generator=gen)
        other = torch.randint(0, ROWS, (12,), generator=gen)
        step = []
        for j, (rows_, dim) in enumerate(shapes[:3]):
            idx = other if j == 2 else shared
            vals = torch.randn(12, dim, generator=gen, dtype=torch.float64)
            step.append(torch.sparse_coo_tensor(idx.view(1, -1), vals, (rows_, dim), check_invariants=False))
        step.append(None)  # the last table gets no gradient
        grads.append(step)

    params = [torch.nn.Parameter(w.clone()) for w in w0]
    together = RowSparseOptimizer(params, kind, lr=0.05, reg=0.01, momentum=0.5 if kind == "sgd" else 0.0)
    for step in grads:
        for p, g in zip(params, step):
            p.grad = None if g is None else g.clone()
        together.step()
    for j, w in enumerate(w0):
        alone, _ = _run(lambda ps: RowSparseOptimizer(ps, kind, lr=0.05, reg=0.01,
                                                      momentum=0.5 if kind == "sgd" else 0.0),
                        [s[j] for s in grads if s[j] is not None], w)
        if j == 3:
            assert torch.equal(params[j].detach(), w)
        else:  # (tables 0-2 have a gradient in every step, so lazy Adam's global step count agrees)
            assert torch.equal(params[j].detach(), alone), j


def test_adam_matches_torch_sparse_adam():
    grads, w0 = _sparse_grads(), _initial_weights()
    ours, _ = _run(lambda ps: RowSparseOptimizer(ps, "adam", lr=0.05), grads, w0)
    ref, _ = _run(lambda ps: torch.optim.SparseAdam(ps, lr=0.05), grads, w0)
    # SparseAdam puts eps at sqrt(v) (not sqrt(v / bc2)): a difference of order lr * eps / |g|
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)
    assert not torch.equal(ours, w0)
    assert torch.equal(ours[TOUCHABLE:], w0[TOUCHABLE:])


def test_adam_matches_lazy_adam_reference_exactly():
    grads, w0 = _sparse_grads(steps=8), _initial_weights()
    ours, opt = _run(lambda ps: RowSparseOptimizer(ps, "adam", lr=0.05, betas=(0.8, 0.99)), grads, w0)
    ref = _lazy_adam_reference(grads, w0, lr=0.05, betas=(0.8, 0.99))
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    assert opt.step_count == 8


def test_adamw_is_lazy_adam_for_embeddings():
    grads, w0 = _sparse_grads(), _initial_weights()
    a, _ = _run(lambda ps: RowSparseOptimizer(ps, "adamw", lr=0.05), grads, w0)
    b, _ = _run(lambda ps: RowSparseOptimizer(ps, "adam", lr=0.05), grads, w0)
    assert torch.equal(a, b)


def test_adagrad_matches_torch_adagrad_on_sparse_grads():
    grads, w0 = _sparse_grads(), _initial_weights()
    ours, _ = _run(lambda ps: RowSparseOptimizer(ps, "adagrad", lr=0.1), grads, w0)
    # torch's sparse Adagrad: sum += g^2 on the (coalesced) rows, w -= lr * g / (sqrt(sum) + eps)
    ref, _ = _run(lambda ps: torch.optim.Adagrad(ps, lr=0.1, eps=1e-8), grads, w0)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours, _lazy_adagrad_reference(grads, w0, lr=0.1), rtol=1e-12, atol=1e-12)
    assert torch.equal(ours[TOUCHABLE:], w0[TOUCHABLE:])


def test_adagrad_initial_accumulator_value():
    grads, w0 = _sparse_grads(), _initial_weights()
    ours, _ = _run(lambda ps: RowSparseOptimizer(ps, "adagrad", lr=0.1, initial_accumulator_value=0.5), grads, w0)
    ref, _ = _run(lambda ps: torch.optim.Adagrad(ps, lr=0.1, eps=1e-8, initial_accumulator_value=0.5), grads, w0)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)


def test_sgd_matches_torch_sgd_on_sparse_grads():
    grads, w0 = _sparse_grads(), _initial_weights()
    ours, _ = _run(lambda ps: RowSparseOptimizer(ps, "sgd", lr=0.1), grads, w0)
    ref, _ = _run(lambda ps: torch.optim.SGD(ps, lr=0.1), grads, w0)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    assert torch.equal(ours[TOUCHABLE:], w0[TOUCHABLE:])


def test_momentum_sgd_matches_lazy_reference():
    grads, w0 = _sparse_grads(steps=8), _initial_weights()
    ours, _ = _run(lambda ps: RowSparseOptimizer(ps, "sgd", lr=0.1, momentum=0.9), grads, w0)
    ref = _lazy_momentum_reference(grads, w0, lr=0.1, momentum=0.9)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    assert torch.equal(ours[TOUCHABLE:], w0[TOUCHABLE:])
    # with every row touched in every step, lazy momentum is torch's (dense) momentum SGD
    gen = torch.Generator().manual_seed(3)
    full = []
    for _ in range(5):
        idx = torch.cat([torch.arange(ROWS), torch.randint(0, ROWS, (7,), generator=gen)])
        vals = torch.randn(idx.numel(), DIM, generator=gen, dtype=torch.float64)
        full.append(torch.sparse_coo_tensor(idx.view(1, -1), vals, (ROWS, DIM), check_invariants=False))
    ours, _ = _run(lambda ps: RowSparseOptimizer(ps, "sgd", lr=0.1, momentum=0.9), full, w0)
    dense_grads = [g.to_dense() for g in full]
    ref, _ = _run(lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9), dense_grads, w0)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind, reference", [
    ("adam", lambda g, w, reg: _lazy_adam_reference(g, w, lr=0.05, reg=reg)),
    ("adagrad", lambda g, w, reg: _lazy_adagrad_reference(g, w, lr=0.05, reg=reg)),
    ("sgd", lambda g, w, reg: _lazy_momentum_reference(g, w, lr=0.05, momentum=0.0, reg=reg)),
])
def test_reg_is_l2_on_touched_rows_only(kind, reference):
    grads, w0 = _sparse_grads(), _initial_weights()
    ours, _ = _run(lambda ps: RowSparseOptimizer(ps, kind, lr=0.05, reg=0.3), grads, w0)
    torch.testing.assert_close(ours, reference(grads, w0, 0.3), rtol=1e-12, atol=1e-12)
    without, _ = _run(lambda ps: RowSparseOptimizer(ps, kind, lr=0.05), grads, w0)
    assert not torch.allclose(ours[:TOUCHABLE], without[:TOUCHABLE])  # reg did something
    assert torch.equal(ours[TOUCHABLE:], w0[TOUCHABLE:])  # and never to untouched rows


def test_reg_alone_shrinks_touched_rows():
    w0 = _initial_weights()
    idx = torch.tensor([2, 5, 5])
    zero = torch.sparse_coo_tensor(idx.view(1, -1), torch.zeros(3, DIM, dtype=torch.float64), (ROWS, DIM))
    ours, _ = _run(lambda ps: RowSparseOptimizer(ps, "sgd", lr=0.1, reg=0.5), [zero], w0)
    expected = w0.clone()
    expected[[2, 5]] *= 1 - 0.1 * 0.5
    torch.testing.assert_close(ours, expected, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("kind, kwargs", [
    ("adam", {}), ("adagrad", {}), ("sgd", {"momentum": 0.9}), ("sgd", {}),
])
def test_state_dict_round_trip_continues_identically(kind, kwargs):
    grads, w0 = _sparse_grads(steps=7), _initial_weights()
    make = lambda ps: RowSparseOptimizer(ps, kind, lr=0.05, reg=0.01, **kwargs)  # noqa: E731
    straight, _ = _run(make, grads, w0)

    head, opt = _run(make, grads[:4], w0)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)

    p = torch.nn.Parameter(head.clone())
    fresh = make([p])
    fresh.load_state_dict(saved)
    assert fresh.step_count == 4
    for g in grads[4:]:
        p.grad = g.clone()
        fresh.step()
    assert torch.equal(p.detach(), straight)


def test_load_state_dict_restores_lr_and_rejects_other_kind():
    p = torch.nn.Parameter(_initial_weights())
    opt = RowSparseOptimizer([p], "adam", lr=0.05)
    opt.lr = 0.005  # as after a plateau reduction
    state = copy.deepcopy(opt.state_dict())
    other = RowSparseOptimizer([torch.nn.Parameter(_initial_weights())], "adam", lr=0.05)
    other.load_state_dict(state)
    assert other.lr == 0.005
    with pytest.raises(ValueError, match="adagrad"):
        RowSparseOptimizer([torch.nn.Parameter(_initial_weights())], "adagrad").load_state_dict(state)


def test_unknown_kind_and_no_grad():
    with pytest.raises(ValueError, match="valid: adam, adamw, sgd, adagrad"):
        RowSparseOptimizer([], "rmsprop")
    p = torch.nn.Parameter(_initial_weights())
    opt = RowSparseOptimizer([p], "adam", lr=0.1)
    opt.step()  # no gradient: nothing changes
    assert torch.equal(p.detach(), _initial_weights())
    p.grad = torch.ones_like(p)
    opt.zero_grad()
    assert p.grad is None


@pytest.mark.parametrize("kind", OPTIMIZERS)
def test_dense_optimizer_kinds(kind):
    lin = torch.nn.Linear(3, 1)
    opt = dense_optimizer(list(lin.parameters()), kind, lr=0.1, weight_decay=0.0, momentum=0.0)
    assert isinstance(opt, torch.optim.Optimizer)
    assert opt.param_groups[0]["lr"] == 0.1
    with pytest.raises(ValueError):
        dense_optimizer(list(lin.parameters()), "lbfgs", 0.1, 0.0, 0.0)


# --------------------------------------------------------------------------------------------
# FieldEmbedding.sparse_grad
# --------------------------------------------------------------------------------------------


def _embedding_grads(sparse_grad: bool):
    torch.manual_seed(0)
    emb = FieldEmbedding([7, 3, 11], 4)
    emb.sparse_grad = sparse_grad
    gen = torch.Generator().manual_seed(1)
    ids = torch.stack([torch.randint(0, v, (9,), generator=gen) for v in (7, 3, 11)], dim=1)
    ids[1] = ids[0]  # repeated rows within the batch
    weights = torch.randn(9, 3, 4, generator=gen)
    out = emb(ids)
    (out * weights).sum().backward()
    return emb.weight.grad, ids


def test_sparse_grad_equals_dense_grad():
    dense, ids = _embedding_grads(False)
    sparse, _ = _embedding_grads(True)
    assert not dense.is_sparse
    assert sparse.is_sparse
    assert sparse.shape == dense.shape == (21, 4)
    # one entry per looked-up id: B * F rows, not the table size, uncoalesced
    assert sparse._indices().shape == (1, 9 * 3)
    assert sparse._values().shape == (9 * 3, 4)
    torch.testing.assert_close(sparse.to_dense(), dense, rtol=1e-6, atol=1e-7)
    # the rows it names are exactly the looked-up (offset) ids
    offsets = torch.tensor([0, 7, 10])
    assert sorted(sparse._indices()[0].tolist()) == sorted((ids + offsets).reshape(-1).tolist())


def test_sparse_grad_feeds_row_sparse_optimizer():
    torch.manual_seed(0)
    emb = FieldEmbedding([5, 5], 2)
    emb.sparse_grad = True
    before = emb.weight.detach().clone()
    opt = RowSparseOptimizer([emb.weight], "sgd", lr=1.0)
    ids = torch.tensor([[0, 1], [0, 3]])
    emb(ids).sum().backward()
    opt.step()
    changed = (emb.weight.detach() != before).any(dim=1).nonzero().ravel().tolist()
    assert changed == [0, 6, 8]  # field 0 id 0; field 1 ids 1, 3 at offset 5
    # row 0 was looked up twice: its gradient (all ones) summed twice
    torch.testing.assert_close(emb.weight.detach()[0], before[0] - 2.0)
