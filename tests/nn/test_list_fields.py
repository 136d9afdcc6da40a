"""List fields (multi-valued sets and sequences) as one more field of every model: their block of
columns in the sparse matrix reads one table (their own, or the one they share), padding (id 0)
is masked out, and the values are pooled; checked against loop-written versions, through every
registered model, and through ONNX."""

from __future__ import annotations

import numpy as np
import onnxruntime
import pytest
import torch

from ctrlab.export.onnx_export import export_onnx
from ctrlab.fields import FeatureSpec, ListField
from ctrlab.models.registry import build_model, list_models
from ctrlab.nn import FeatureEmbedding, FirstOrder
from ctrlab.nn.embedding import table_layout

SIZES = [7, 11, 5]
LISTS = [ListField("hist", 4, 9, kind="sequence", pooling="mean"),
         ListField("seen", 3, SIZES[1], shares="C2", kind="multi", pooling="sum"),
         ListField("peak", 2, 6, kind="multi", pooling="max")]


def _spec(n_dense: int = 2) -> FeatureSpec:
    return FeatureSpec(tuple(f"I{i}" for i in range(n_dense)), ("C1", "C2", "C3"), SIZES, lists=LISTS)


def _batch(spec: FeatureSpec, rows: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random rows: single ids in range, each list's first `length` columns valid (>= 1), then 0."""
    rng = np.random.default_rng(seed)
    sparse = np.zeros((rows, spec.sparse_width), dtype=np.int64)
    sparse[:, : spec.n_sparse] = rng.integers(0, SIZES, size=(rows, spec.n_sparse))
    start = spec.n_sparse
    for field in spec.lists:
        lengths = rng.integers(0, field.length + 1, size=rows)
        lengths[:2] = [0, field.length][:rows]  # the shortest and the longest in every batch
        for r, n in enumerate(lengths):
            sparse[r, start:start + n] = rng.integers(1, field.vocab_size, size=n)
        start += field.length
    dense = rng.normal(size=(rows, spec.n_dense)).astype(np.float32)
    return torch.from_numpy(dense), torch.from_numpy(sparse)


def test_table_layout_gives_lists_their_own_or_the_shared_table():
    sizes, columns, names = table_layout(_spec())
    assert sizes == SIZES + [9, 6]  # hist and peak own tables; seen shares C2's
    assert columns == [0, 1, 2] + [3] * 4 + [1] * 3 + [4] * 2
    assert names == ["C1", "C2", "C3"] + ["hist"] * 4 + ["seen"] * 3 + ["peak"] * 2


def _loop_fields(weight: torch.Tensor, spec: FeatureSpec, sparse: torch.Tensor) -> torch.Tensor:
    """Per row: each single field's row of its table; each list field's valid rows pooled."""
    sizes, columns, _ = table_layout(spec)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    out = []
    for row in sparse.tolist():
        fields = [weight[offsets[columns[j]] + row[j]] for j in range(spec.n_sparse)]
        start = spec.n_sparse
        for field in spec.lists:
            ids = [i for i in row[start:start + field.length] if i != 0]
            vectors = [weight[offsets[columns[start]] + i] for i in ids]
            if not vectors:
                pooled = torch.zeros(weight.shape[1], dtype=weight.dtype)
            elif field.pooling == "sum":
                pooled = torch.stack(vectors).sum(0)
            elif field.pooling == "mean":
                pooled = torch.stack(vectors).mean(0)
            else:
                pooled = torch.stack(vectors).max(0).values
            fields.append(pooled)
            start += field.length
        out.append(torch.stack(fields))
    return torch.stack(out)


def test_feature_embedding_pools_list_fields_like_a_loop():
    spec = _spec()
    torch.manual_seed(0)
    module = FeatureEmbedding(spec, 5, embed_dense=True).double()
    dense, sparse = _batch(spec, 40, seed=1)
    out = module(dense.double(), sparse)
    assert out.shape == (40, 3 + 3 + 2, 5) and module.num_fields == 8 and module.categorical_fields == 6
    expected = _loop_fields(module.sparse.weight.detach(), spec, sparse)
    torch.testing.assert_close(out[:, :6], expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out[:, 6:], dense.double().unsqueeze(-1) * module.dense.weight, rtol=1e-12, atol=1e-12)


def test_a_shared_list_reads_the_owners_rows():
    spec = _spec()
    module = FeatureEmbedding(spec, 4, embed_dense=False)
    dense, sparse = _batch(spec, 8, seed=2)
    sparse[:, 1] = 3  # C2 = id 3
    sparse[:, 3 + 4:3 + 7] = 0
    sparse[:, 3 + 4] = 3  # "seen" holds only id 3 of C2's table
    out = module(dense, sparse)
    torch.testing.assert_close(out[:, 4], out[:, 1])  # sum of one value = that value's (shared) row


def test_first_order_adds_pooled_list_weights_like_a_loop():
    spec = _spec()
    module = FirstOrder(spec).double()
    with torch.no_grad():
        module.sparse_weight.weight.normal_()
        module.bias.fill_(0.25)
    dense, sparse = _batch(spec, 30, seed=3)
    expected = _loop_fields(module.sparse_weight.weight.detach(), spec, sparse).sum(dim=(1, 2)) + 0.25
    expected = expected + module.dense_weight(dense.double()).squeeze(-1)
    torch.testing.assert_close(module(dense.double(), sparse), expected.detach(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", list_models())
def test_every_model_takes_list_fields(name):
    """(The history shares C2's table here, so that the sequence models, which attend over a
    history against its target field, take this spec too.)"""
    lists = (ListField("hist", 4, SIZES[1], shares="C2", kind="sequence", pooling="mean"), *LISTS[1:])
    spec = FeatureSpec(("I0", "I1"), ("C1", "C2", "C3"), SIZES, lists=lists)
    torch.manual_seed(0)
    model = build_model(name, spec, {})
    dense, sparse = _batch(spec, 16, seed=4)
    logits = model(dense, sparse)
    assert logits.shape == (16,) and torch.isfinite(logits).all()
    logits.sum().backward()
    # a list field is used: its ids change the output
    changed = sparse.clone()
    changed[:, 3:3 + 4] = torch.where(changed[:, 3:3 + 4] > 0, (changed[:, 3:3 + 4] % 8) + 1, 0)
    model.eval()
    with torch.no_grad():
        assert not torch.equal(model(dense, sparse), model(dense, changed))


def test_flat_specs_keep_their_layout():
    flat = FeatureSpec(("I1",), ("C1", "C2"), (4, 5))
    assert "lists" not in flat.to_dict() and flat.sparse_width == 2
    assert FeatureSpec.from_dict(_spec().to_dict()) == _spec()


@pytest.mark.parametrize("name", ["deepfm", "dcn", "lr"])
def test_onnx_parity_with_list_fields(name, tmp_path):
    spec = _spec()
    torch.manual_seed(1)
    model = build_model(name, spec, {}).eval()
    path = export_onnx(model, spec, tmp_path / "model.onnx")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    for rows in (1, 1000):
        dense, sparse = _batch(spec, rows, seed=rows)
        if rows == 1:
            sparse[0, 3:] = 0  # every list empty
        feed = {k: v for k, v in {"dense": dense.numpy(), "sparse": sparse.numpy()}.items() if k in names}
        got = session.run(["logits"], feed)[0]
        with torch.no_grad():
            expected = model(dense, sparse).numpy()
        assert np.abs(got - expected).max() < 1e-5
