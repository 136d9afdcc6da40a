"""List fields (multi-valued sets and sequences) as one more field of every model: their block of
columns in the sparse matrix reads one table (their own, or the one they share), padding (id 0)
is masked out, and the values are pooled; a weighted field's weights come in the dense matrix
after the numeric columns and multiply each value's embedding before pooling. Checked against
loop-written versions, through every registered model, and through ONNX."""

from __future__ import annotations

import numpy as np
import onnxruntime
import pytest
import torch

from ctrlab.export.onnx_export import export_onnx
from ctrlab.fields import FeatureSpec, ListField
from ctrlab.models.registry import build_model, single_task_models
from ctrlab.nn import FeatureEmbedding, FirstOrder
from ctrlab.nn.embedding import table_layout

SIZES = [7, 11, 5]
LISTS = [ListField("hist", 4, 9, kind="sequence", pooling="mean"),
         ListField("seen", 3, SIZES[1], shares="C2", kind="multi", pooling="sum"),
         ListField("peak", 2, 6, kind="multi", pooling="max")]


def _spec(n_dense: int = 2) -> FeatureSpec:
    return FeatureSpec(tuple(f"I{i}" for i in range(n_dense)), ("C1", "C2", "C3"), SIZES, lists=LISTS)


def _batch(spec: FeatureSpec, rows: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random rows: single ids in range, each list's first `length` columns valid (>= 1), then 0;
    a weighted list's weights in (0.1, 2) where its ids are, 0 after."""
    rng = np.random.default_rng(seed)
    sparse = np.zeros((rows, spec.sparse_width), dtype=np.int64)
    sparse[:, : spec.n_sparse] = rng.integers(0, SIZES, size=(rows, spec.n_sparse))
    dense = np.zeros((rows, spec.dense_width), dtype=np.float32)
    dense[:, : spec.n_dense] = rng.normal(size=(rows, spec.n_dense))
    start = spec.n_sparse
    for field in spec.lists:
        lengths = rng.integers(0, field.length + 1, size=rows)
        lengths[:2] = [0, field.length][:rows]  # the shortest and the longest in every batch
        for r, n in enumerate(lengths):
            sparse[r, start:start + n] = rng.integers(1, field.vocab_size, size=n)
            if field.weighted:
                first = spec.weight_columns[field.name][0]
                dense[r, first:first + n] = rng.uniform(0.1, 2.0, size=n)
        start += field.length
    return torch.from_numpy(dense), torch.from_numpy(sparse)


def test_table_layout_gives_lists_their_own_or_the_shared_table():
    sizes, columns, names = table_layout(_spec())
    assert sizes == SIZES + [9, 6]  # hist and peak own tables; seen shares C2's
    assert columns == [0, 1, 2] + [3] * 4 + [1] * 3 + [4] * 2
    assert names == ["C1", "C2", "C3"] + ["hist"] * 4 + ["seen"] * 3 + ["peak"] * 2


def _loop_fields(weight: torch.Tensor, spec: FeatureSpec, sparse: torch.Tensor,
                 dense: torch.Tensor | None = None) -> torch.Tensor:
    """Per row: each single field's row of its table; each list field's valid rows pooled (a
    weighted field's rows times their weights, read from ``dense``, first)."""
    sizes, columns, _ = table_layout(spec)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    out = []
    for r, row in enumerate(sparse.tolist()):
        fields = [weight[offsets[columns[j]] + row[j]] for j in range(spec.n_sparse)]
        start = spec.n_sparse
        for field in spec.lists:
            vectors = []
            for p in range(field.length):
                if row[start + p] != 0:
                    w = dense[r, spec.weight_columns[field.name][0] + p] if field.weighted else 1.0
                    vectors.append(weight[offsets[columns[start]] + row[start + p]] * w)
            if not vectors:
                pooled = torch.zeros(weight.shape[1], dtype=weight.dtype)
            elif field.pooling == "sum":
                pooled = torch.stack(vectors).sum(0)
            elif field.pooling == "mean":
                pooled = torch.stack(vectors).sum(0) / len(vectors)
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


@pytest.mark.parametrize("name", single_task_models())
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


# --------------------------------------------------------------------------------------------
# weighted list fields (tag:0.7)
# --------------------------------------------------------------------------------------------

WEIGHTED = (ListField("hist", 4, SIZES[1], shares="C2", kind="sequence", pooling="mean"),
            ListField("tags", 3, 9, kind="multi", pooling="sum", weighted=True),
            ListField("genres", 2, 6, kind="multi", pooling="max", weighted=True))


def _weighted_spec() -> FeatureSpec:
    return FeatureSpec(("I0", "I1"), ("C1", "C2", "C3"), SIZES, lists=WEIGHTED)


def test_spec_lays_out_the_weights_after_the_numeric_columns():
    spec = _weighted_spec()
    assert spec.dense_width == 2 + 3 + 2
    assert spec.weight_columns == {"tags": (2, 5), "genres": (5, 7)}
    assert spec.dense_column_names[2:] == ("tags.weight[0]", "tags.weight[1]", "tags.weight[2]",
                                           "genres.weight[0]", "genres.weight[1]")
    assert FeatureSpec.from_dict(spec.to_dict()) == spec
    assert "weighted" not in WEIGHTED[0].to_dict()  # (unweighted fields keep their bytes)


def test_feature_embedding_pools_weighted_values_like_a_loop():
    spec = _weighted_spec()
    torch.manual_seed(0)
    module = FeatureEmbedding(spec, 5, embed_dense=True).double()
    dense, sparse = _batch(spec, 40, seed=1)
    out = module(dense.double(), sparse)
    assert out.shape == (40, 3 + 3 + 2, 5)
    expected = _loop_fields(module.sparse.weight.detach(), spec, sparse, dense.double())
    torch.testing.assert_close(out[:, :6], expected, rtol=1e-12, atol=1e-12)
    # the numeric fields read the numeric columns only
    torch.testing.assert_close(out[:, 6:], dense[:, :2].double().unsqueeze(-1) * module.dense.weight)


def test_first_order_pools_weighted_values_like_a_loop():
    spec = _weighted_spec()
    module = FirstOrder(spec).double()
    with torch.no_grad():
        module.sparse_weight.weight.normal_()
    dense, sparse = _batch(spec, 30, seed=3)
    expected = _loop_fields(module.sparse_weight.weight.detach(), spec, sparse, dense.double()).sum(dim=(1, 2))
    expected = expected + module.bias + module.dense_weight(dense[:, :2].double()).squeeze(-1)
    torch.testing.assert_close(module(dense.double(), sparse), expected.detach(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", single_task_models())
def test_every_model_pools_the_weights(name):
    spec = _weighted_spec()
    torch.manual_seed(0)
    model = build_model(name, spec, {})
    dense, sparse = _batch(spec, 16, seed=4)
    logits = model(dense, sparse)
    assert logits.shape == (16,) and torch.isfinite(logits).all()
    logits.sum().backward()
    model.eval()
    with torch.no_grad():
        heavier = dense.clone()
        heavier[:, 2:5] *= 3.0  # the tags' weights
        assert not torch.equal(model(dense, sparse), model(heavier, sparse))


@pytest.mark.parametrize("name", ["deepfm", "dcn", "lr", "din"])
def test_onnx_parity_with_weighted_fields(name, tmp_path):
    spec = _weighted_spec()
    torch.manual_seed(1)
    model = build_model(name, spec, {}).eval()
    path = export_onnx(model, spec, tmp_path / "model.onnx")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[1] == spec.dense_width
    for rows in (1, 1000):
        dense, sparse = _batch(spec, rows, seed=rows)
        got = session.run(["logits"], {"dense": dense.numpy(), "sparse": sparse.numpy()})[0]
        with torch.no_grad():
            expected = model(dense, sparse).numpy()
        assert np.abs(got - expected).max() < 1e-5
