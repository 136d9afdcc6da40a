"""Reference tests for the blocks in ctrlab.nn: each block against a direct, loop-based
implementation of its paper formula."""

from __future__ import annotations

import itertools

import pytest
import torch

from ctrlab.fields import FeatureSpec
from ctrlab.nn import (
    CIN,
    MLP,
    BilinearInteraction,
    CrossNet,
    CrossNetV2,
    DenseFieldEmbedding,
    DotInteraction,
    EmbeddingGate,
    FeatureEmbedding,
    FeatureSelection,
    FEFMInteraction,
    FFMInteraction,
    FieldEmbedding,
    FirstOrder,
    FMInteraction,
    GatedMLP,
    InteractionAggregation,
    MultiHeadSelfAttention,
    SENet,
    num_pairs,
    pair_indices,
)

ATOL = 1e-5


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)


def random_ids(batch: int, vocab_sizes) -> torch.Tensor:
    return torch.stack([torch.randint(0, v, (batch,)) for v in vocab_sizes], dim=1)


# --------------------------------------------------------------------------- pairs


def test_pair_indices_order():
    rows, cols = pair_indices(4)
    assert list(zip(rows.tolist(), cols.tolist())) == list(itertools.combinations(range(4), 2))
    assert num_pairs(4) == 6 and num_pairs(1) == 0
    assert rows.dtype == torch.int64


# --------------------------------------------------------------------------- embeddings


def test_field_embedding_is_one_table_with_offsets():
    vocab = [3, 5, 2, 7]
    emb = FieldEmbedding(vocab, 4)
    assert emb.weight.shape == (sum(vocab), 4)
    assert emb.offsets.tolist() == [0, 3, 8, 10]
    ids = random_ids(6, vocab)
    out = emb(ids)
    assert out.shape == (6, 4, 4)
    for b, j in itertools.product(range(6), range(4)):
        start = sum(vocab[:j])
        torch.testing.assert_close(out[b, j], emb.weight[start + ids[b, j]])
    # Offsets are derived from the spec, not saved state.
    assert set(emb.state_dict()) == {"weight"}


def test_field_embedding_training_gradient_matches_reference():
    """The CPU training path (own backward: index_add_ into a zeroed table) gives the same
    values and gradient as nn.functional.embedding, with repeated ids."""
    vocab = [3, 5, 2]
    emb = FieldEmbedding(vocab, 4)
    ids = torch.tensor([[0, 4, 1], [0, 4, 1], [2, 0, 0], [1, 3, 1]])
    upstream = torch.randn(4, 3, 4)
    out = emb(ids)
    assert out.grad_fn is not None and "FlatGather" in type(out.grad_fn).__name__
    (out * upstream).sum().backward()
    weight = emb.weight.detach().clone().requires_grad_(True)
    reference = torch.nn.functional.embedding(ids + emb.offsets, weight)
    (reference * upstream).sum().backward()
    torch.testing.assert_close(out, reference)
    torch.testing.assert_close(emb.weight.grad, weight.grad)
    with torch.no_grad():
        torch.testing.assert_close(emb(ids), reference)


def test_field_embedding_sparse_gradient_matches_dense():
    """``sparse_grad = True`` (set by the trainer for row-sparse optimizers) yields a sparse
    COO gradient equal to the dense one once coalesced."""
    vocab = [3, 5, 2]
    emb = FieldEmbedding(vocab, 4)
    ids = torch.tensor([[0, 4, 1], [0, 4, 1], [2, 0, 0]])
    upstream = torch.randn(3, 3, 4)
    (emb(ids) * upstream).sum().backward()
    dense_grad = emb.weight.grad.clone()
    emb.weight.grad = None
    emb.sparse_grad = True
    (emb(ids) * upstream).sum().backward()
    assert emb.weight.grad.is_sparse
    torch.testing.assert_close(emb.weight.grad.to_dense(), dense_grad)


def test_zeros_for_gradient_large_block_is_zero():
    from ctrlab.nn.embedding import _zeros_for_gradient

    large = _zeros_for_gradient(600_000, 16, torch.float32)  # ~38 MB: the huge-page-advised path
    assert large.shape == (600_000, 16) and not large.any()
    assert not _zeros_for_gradient(3, 2, torch.float32).any()


@pytest.mark.parametrize("bad", [-1, 5])
def test_field_embedding_rejects_out_of_range_ids(bad):
    emb = FieldEmbedding([3, 5], 2, field_names=["site", "app"])
    ids = torch.tensor([[0, 1], [2, bad]])
    with pytest.raises(ValueError, match=r"field 1 \('app'\).*0\.\.4"):
        emb(ids)
    with pytest.raises(ValueError, match="int64"):
        emb(ids.to(torch.int32))
    emb.validate_ids = False  # opt-out for pre-validated data: no check, no error
    emb(torch.tensor([[0, 1]]))


def test_dense_and_feature_embedding():
    spec = FeatureSpec(("a", "b"), ("x", "y", "z"), (4, 3, 6))
    dense = torch.randn(5, 2)
    sparse = random_ids(5, spec.vocab_sizes)
    dense_emb = DenseFieldEmbedding(2, 3)
    torch.testing.assert_close(dense_emb(dense)[:, 1], dense[:, 1:2] * dense_emb.weight[1])

    full = FeatureEmbedding(spec, 3, embed_dense=True)
    assert full.num_fields == 5 and full.output_dim == 15
    assert full.field_names == ("x", "y", "z", "a", "b")
    out = full(dense, sparse)
    torch.testing.assert_close(out[:, :3], full.sparse(sparse))
    torch.testing.assert_close(out[:, 3:], dense.unsqueeze(-1) * full.dense.weight)

    sparse_only = FeatureEmbedding(spec, 3, embed_dense=False)
    assert sparse_only.num_fields == 3 and sparse_only(dense, sparse).shape == (5, 3, 3)

    no_dense = FeatureSpec((), ("x",), (4,))
    assert FeatureEmbedding(no_dense, 3)(torch.zeros(5, 0), sparse[:, :1]).shape == (5, 1, 3)


def test_first_order():
    spec = FeatureSpec(("a", "b"), ("x", "y"), (4, 3))
    linear = FirstOrder(spec)
    with torch.no_grad():
        linear.bias.fill_(0.5)
    dense, sparse = torch.randn(7, 2), random_ids(7, spec.vocab_sizes)
    table = linear.sparse_weight.weight.squeeze(-1)
    expected = (
        0.5 + table[sparse[:, 0]] + table[4 + sparse[:, 1]] + dense @ linear.dense_weight.weight.squeeze(0)
    )
    torch.testing.assert_close(linear(dense, sparse), expected)
    assert FirstOrder(FeatureSpec((), ("x",), (4,)))(torch.zeros(7, 0), sparse[:, :1]).shape == (7,)


# --------------------------------------------------------------------------- FM family


def test_fm_matches_pairwise_sum():
    emb = torch.randn(6, 5, 4)
    expected = torch.stack(
        [sum(emb[b, i] @ emb[b, j] for i, j in itertools.combinations(range(5), 2)) for b in range(6)]
    )
    torch.testing.assert_close(FMInteraction()(emb), expected, atol=ATOL, rtol=1e-5)


def test_ffm_matches_field_aware_double_loop():
    batch, fields, k = 4, 5, 3
    emb = torch.randn(batch, fields, fields, k)  # emb[b, i, j] = v_{i, f_j}
    expected = torch.zeros(batch)
    for b in range(batch):
        for i in range(fields):
            for j in range(i + 1, fields):
                expected[b] += emb[b, i, j] @ emb[b, j, i]
    torch.testing.assert_close(FFMInteraction(fields)(emb), expected, atol=ATOL, rtol=1e-5)


def test_fefm_matches_loop_with_symmetric_matrices():
    batch, fields, k = 3, 4, 3
    block = FEFMInteraction(fields, k, init_std=0.5)
    emb = torch.randn(batch, fields, k)
    weights = block.symmetric_weights()
    torch.testing.assert_close(weights, weights.transpose(1, 2))
    out = block(emb)
    assert out.shape == (batch, num_pairs(fields))
    for b in range(batch):
        for p, (i, j) in enumerate(itertools.combinations(range(fields), 2)):
            torch.testing.assert_close(out[b, p], emb[b, i] @ weights[p] @ emb[b, j], atol=ATOL, rtol=1e-5)


# --------------------------------------------------------------------------- cross networks


def test_crossnet_v1_matches_formula_per_layer():
    net = CrossNet(6, 3)
    with torch.no_grad():
        net.bias.normal_()
    x0 = torch.randn(5, 6)
    x = x0
    for layer in range(3):
        # x_{l+1} = x0 x_l^T w_l + b_l + x_l, written with the outer product of the paper.
        outer = x0.unsqueeze(2) @ x.unsqueeze(1)  # [B, D, D]
        x = (outer @ net.weight[layer]) + net.bias[layer] + x
    torch.testing.assert_close(net(x0), x, atol=ATOL, rtol=1e-5)


def test_crossnet_v2_full_rank_matches_formula():
    net = CrossNetV2(5, 2)
    with torch.no_grad():
        net.bias.normal_()
    x0 = torch.randn(4, 5)
    x = x0
    for layer in range(2):
        x = x0 * (torch.stack([net.weight[layer] @ row for row in x]) + net.bias[layer]) + x
    torch.testing.assert_close(net(x0), x, atol=ATOL, rtol=1e-5)


def test_crossnet_v2_mixture_matches_per_expert_loop():
    dim, rank, experts = 6, 2, 3
    net = CrossNetV2(dim, 2, low_rank=rank, num_experts=experts)
    with torch.no_grad():
        net.bias.normal_()
    x0 = torch.randn(4, dim)
    x = x0
    for layer in range(2):
        new_rows = []
        for b in range(4):
            xb = x[b]
            scores = torch.stack([net.gate[layer][:, e] @ xb for e in range(experts)])
            weights = torch.softmax(scores, dim=0)
            mixed = torch.zeros(dim)
            for e in range(experts):
                u, v, c = net.u[layer, e], net.v[layer, e], net.c[layer, e]
                expert = x0[b] * (u @ torch.tanh(c @ torch.tanh(v.T @ xb)) + net.bias[layer])
                mixed = mixed + weights[e] * expert
            new_rows.append(mixed + xb)
        x = torch.stack(new_rows)
    torch.testing.assert_close(net(x0), x, atol=ATOL, rtol=1e-5)


# --------------------------------------------------------------------------- CIN


@pytest.mark.parametrize("split_half", [False, True])
def test_cin_matches_explicit_loops(split_half):
    batch, m, dim, units = 2, 3, 4, [4, 2]
    cin = CIN(m, units, split_half=split_half)
    with torch.no_grad():
        for bias in cin.biases:
            bias.normal_()
    x0 = torch.randn(batch, m, dim)
    expected_batches = []
    for b in range(batch):
        hidden = x0[b]
        pooled = []
        for layer, h_out in enumerate(units):
            weight = cin.weights[layer].view(h_out, hidden.shape[0], m)  # W^{k,h}_{i,j}
            maps = torch.zeros(h_out, dim)
            for h in range(h_out):
                for i in range(hidden.shape[0]):
                    for j in range(m):
                        maps[h] += weight[h, i, j] * hidden[i] * x0[b, j]
                maps[h] += cin.biases[layer][h, 0]
            last = layer == len(units) - 1
            if split_half and not last:
                hidden, direct = maps[: h_out // 2], maps[h_out // 2 :]
            else:
                hidden, direct = maps, maps
            pooled.append(direct.sum(dim=-1))
        expected_batches.append(torch.cat(pooled))
    out = cin(x0)
    assert out.shape == (batch, cin.output_dim)
    assert cin.output_dim == (2 + 2 if split_half else 6)
    torch.testing.assert_close(out, torch.stack(expected_batches), atol=ATOL, rtol=1e-5)


# --------------------------------------------------------------------------- dot / attention


def test_dot_interaction_matches_pairwise_dots():
    vectors = torch.randn(3, 5, 4)
    out = DotInteraction(5)(vectors)
    expected = torch.stack(
        [torch.stack([vectors[b, i] @ vectors[b, j] for i, j in itertools.combinations(range(5), 2)]) for b in range(3)]
    )
    torch.testing.assert_close(out, expected, atol=ATOL, rtol=1e-5)


@pytest.mark.parametrize("use_residual,use_scale", [(True, False), (False, True)])
def test_self_attention_matches_per_head_loop(use_residual, use_scale):
    batch, fields, dim_in, d, heads = 2, 4, 5, 3, 2
    layer = MultiHeadSelfAttention(dim_in, d, heads, use_residual=use_residual, use_scale=use_scale)
    x = torch.randn(batch, fields, dim_in)
    q_all, k_all, v_all = layer.query.weight, layer.key.weight, layer.value.weight
    expected = torch.zeros(batch, fields, d * heads)
    for b in range(batch):
        for h in range(heads):
            rows = slice(h * d, (h + 1) * d)
            q, k, v = x[b] @ q_all[rows].T, x[b] @ k_all[rows].T, x[b] @ v_all[rows].T
            for mi in range(fields):
                scores = torch.stack([q[mi] @ k[ki] for ki in range(fields)])
                if use_scale:
                    scores = scores / d**0.5
                alpha = torch.softmax(scores, dim=0)
                expected[b, mi, rows] = sum(alpha[ki] * v[ki] for ki in range(fields))
    if use_residual:
        expected = torch.relu(expected + x @ layer.residual.weight.T)
    torch.testing.assert_close(layer(x), expected, atol=ATOL, rtol=1e-5)


# --------------------------------------------------------------------------- FiBiNET


def test_senet_matches_formula():
    senet = SENet(6, reduction_ratio=3)
    emb = torch.randn(4, 6, 5)
    w1, w2 = senet.excitation[0].weight, senet.excitation[2].weight
    assert w1.shape == (2, 6)
    z = emb.mean(dim=-1)
    a = torch.relu(torch.relu(z @ w1.T) @ w2.T)
    torch.testing.assert_close(senet(emb), emb * a.unsqueeze(-1), atol=ATOL, rtol=1e-5)


@pytest.mark.parametrize("bilinear_type", ["field_all", "field_each", "field_interaction"])
def test_bilinear_matches_loops(bilinear_type):
    fields, k = 4, 3
    block = BilinearInteraction(fields, k, bilinear_type)
    emb = torch.randn(2, fields, k)
    out = block(emb)
    assert out.shape == (2, num_pairs(fields), k)
    for b in range(2):
        for p, (i, j) in enumerate(itertools.combinations(range(fields), 2)):
            w_index = {"field_all": 0, "field_each": i, "field_interaction": p}[bilinear_type]
            w = block.weight[w_index]
            torch.testing.assert_close(out[b, p], (emb[b, i] @ w) * emb[b, j], atol=ATOL, rtol=1e-5)
    with pytest.raises(ValueError, match="bilinear_type"):
        BilinearInteraction(fields, k, "pairwise")


# --------------------------------------------------------------------------- gates


@pytest.mark.parametrize("gate_type", ["vector", "bit"])
def test_embedding_gate_matches_loop(gate_type):
    gate = EmbeddingGate(3, 4, gate_type)
    emb = torch.randn(2, 3, 4)
    out = gate(emb)
    for b, i in itertools.product(range(2), range(3)):
        g = torch.sigmoid(gate.weight[i] @ emb[b, i])  # scalar (vector-wise) or [k] (bit-wise)
        torch.testing.assert_close(out[b, i], g * emb[b, i], atol=ATOL, rtol=1e-5)


def test_gated_mlp_matches_manual():
    mlp = GatedMLP(5, [4, 3], gate_activation="sigmoid")
    x = torch.randn(6, 5)
    h = x
    for index, units in enumerate([4, 3]):
        linear = mlp.layers[index][0]
        h = torch.relu(h @ linear.weight.T + linear.bias)
        h = h * torch.sigmoid(h @ mlp.gates[index])
    torch.testing.assert_close(mlp(x), h, atol=ATOL, rtol=1e-5)
    assert mlp.out_features == 3
    assert GatedMLP(5, [4], use_hidden_gate=False).gates is None


# --------------------------------------------------------------------------- MLP


def test_mlp_structure_and_options():
    mlp = MLP(8, [6, 4], activation="tanh", dropout=0.2, batch_norm=True, output_dim=1)
    kinds = [type(layer).__name__ for layer in mlp.layers]
    assert kinds == ["Linear", "BatchNorm1d", "Tanh", "Dropout", "Linear", "BatchNorm1d", "Tanh", "Dropout", "Linear"]
    assert mlp.layers[0].bias is None  # BatchNorm supplies the shift
    assert mlp.out_features == 1 and mlp(torch.randn(5, 8)).shape == (5, 1)
    assert MLP(8, []).out_features == 8
    plain = MLP(3, [2])
    x = torch.randn(4, 3)
    torch.testing.assert_close(plain(x), torch.relu(plain.layers[0](x)))
    with pytest.raises(ValueError, match="unknown activation"):
        MLP(3, [2], activation="swishy")
    with pytest.raises(ValueError, match="dropout"):
        MLP(3, [2], dropout=1.5)


# --------------------------------------------------------------------------- FinalMLP blocks


def test_feature_selection_gates():
    emb = torch.randn(3, 4, 2)
    learned = FeatureSelection(4, 2, [], [5])
    gate = 2 * torch.sigmoid(learned.gate(learned.context_bias))  # same gate for every row
    torch.testing.assert_close(learned(emb), emb.flatten(1) * gate)
    contextual = FeatureSelection(4, 2, [1, 3], [5])
    context = torch.cat([emb[:, 1], emb[:, 3]], dim=1)
    torch.testing.assert_close(contextual(emb), emb.flatten(1) * 2 * torch.sigmoid(contextual.gate(context)))


def test_interaction_aggregation_matches_formula():
    fusion = InteractionAggregation(6, 4, num_heads=2)
    x, y = torch.randn(5, 6), torch.randn(5, 4)
    expected = fusion.x_linear(x).squeeze(-1) + fusion.y_linear(y).squeeze(-1)
    for h in range(2):
        xh, yh = x[:, h * 3 : (h + 1) * 3], y[:, h * 2 : (h + 1) * 2]
        expected = expected + ((xh @ fusion.bilinear[h]) * yh).sum(dim=1)
    torch.testing.assert_close(fusion(x, y), expected, atol=ATOL, rtol=1e-5)
    with pytest.raises(ValueError, match="divide"):
        InteractionAggregation(6, 4, num_heads=4)
