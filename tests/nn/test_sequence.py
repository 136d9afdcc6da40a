"""Reference tests for the sequence blocks in ctrlab.nn.sequence (DIN, DIEN, BST): each block
against a loop-written twin over rows and positions, garbage padding, empty and full rows,
gradients, and ONNX export parity."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from ctrlab.nn import MLP, AUGRU, BSTLayer, Dice, TargetAttention, dien_auxiliary_loss, masked_pool

B, L, D = 5, 7, 8
LENGTHS = [0, 7, 3, 1, 5]  # includes an empty and a full row
TIGHT = dict(atol=1e-10, rtol=1e-10)  # float64 twins


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)


def inputs(dtype=torch.float64, batch=B, lengths=None):
    lengths = torch.tensor(LENGTHS if lengths is None else lengths, dtype=torch.int64)
    seq = torch.randn(len(lengths) if batch is None else batch, L, D, dtype=dtype)
    target = torch.randn(seq.shape[0], D, dtype=dtype)
    return seq, lengths, target


def with_garbage(seq: torch.Tensor, lengths: torch.Tensor, kind: str) -> torch.Tensor:
    """A copy of ``seq`` whose positions ``>= length`` hold garbage."""
    padded = torch.arange(seq.shape[1]) >= lengths[:, None]  # [B, L]
    if kind == "huge":
        garbage = torch.randn_like(seq) * 1e6
    else:  # extreme: the largest finite values, infinities and NaN
        choices = torch.tensor([3e38, -3e38, math.inf, -math.inf, math.nan], dtype=seq.dtype)
        garbage = choices[torch.randint(0, len(choices), seq.shape)]
    while padded.dim() < seq.dim():
        padded = padded.unsqueeze(-1)
    return torch.where(padded, garbage, seq)


def randomize_dice(module: torch.nn.Module) -> None:
    """Non-trivial running statistics and alpha for every Dice in ``module``."""
    with torch.no_grad():
        for dice in module.modules():
            if isinstance(dice, Dice):
                dice.alpha.uniform_(-0.8, 0.8)
                dice.batch_norm.running_mean.normal_()
                dice.batch_norm.running_var.uniform_(0.5, 2.0)


# --------------------------------------------------------------------------- masked_pool


def loop_pool(seq, lengths, mode, weights):
    out = torch.zeros(seq.shape[0], seq.shape[2], dtype=seq.dtype)
    for b in range(seq.shape[0]):
        n = int(lengths[b])
        rows = [seq[b, t] * (1.0 if weights is None else weights[b, t]) for t in range(n)]
        if n == 0:
            continue
        if mode == "max":
            for d in range(seq.shape[2]):
                out[b, d] = max(float(row[d]) for row in rows)
        else:
            total = torch.zeros(seq.shape[2], dtype=seq.dtype)
            for row in rows:
                total = total + row
            out[b] = total / n if mode == "mean" else total
    return out


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
@pytest.mark.parametrize("weighted", [False, True])
def test_masked_pool_matches_loop(mode, weighted):
    seq, lengths, _ = inputs()
    weights = torch.rand(B, L, dtype=seq.dtype) if weighted else None
    expected = loop_pool(seq, lengths, mode, weights)
    dirty_weights = None if weights is None else with_garbage(weights, lengths, "huge")
    out = masked_pool(with_garbage(seq, lengths, "extreme"), lengths, mode, dirty_weights)
    torch.testing.assert_close(out, expected, **TIGHT)
    assert out[0].abs().max() == 0  # the empty row
    with pytest.raises(ValueError, match="pooling mode"):
        masked_pool(seq, lengths, "median")


# --------------------------------------------------------------------------- Dice


def dice_formula(x, mean, var, eps, alpha):
    p = torch.sigmoid((x - mean) / torch.sqrt(var + eps))
    return p * x + (1 - p) * alpha * x


def test_dice_2d_matches_formula_in_training_and_eval():
    dice = Dice(4).double()
    assert dice.batch_norm.eps == 1e-8 and not dice.batch_norm.affine
    assert dice.alpha.tolist() == [0.0] * 4
    with torch.no_grad():
        dice.alpha.uniform_(-1, 1)
    x = torch.randn(6, 4, dtype=torch.float64) * 3 + 1
    out = dice(x)
    expected = torch.zeros_like(x)
    for f in range(4):
        column = [float(x[b, f]) for b in range(6)]
        mean = sum(column) / 6
        var = sum((v - mean) ** 2 for v in column) / 6
        unbiased = sum((v - mean) ** 2 for v in column) / 5
        for b in range(6):
            expected[b, f] = dice_formula(x[b, f], mean, torch.tensor(var, dtype=x.dtype), 1e-8, dice.alpha[f])
        assert math.isclose(float(dice.batch_norm.running_mean[f]), 0.1 * mean, rel_tol=1e-9)
        assert math.isclose(float(dice.batch_norm.running_var[f]), 0.9 + 0.1 * unbiased, rel_tol=1e-9)
    torch.testing.assert_close(out, expected, **TIGHT)
    dice.eval()
    running_mean, running_var = dice.batch_norm.running_mean, dice.batch_norm.running_var
    torch.testing.assert_close(dice(x), dice_formula(x, running_mean, running_var, 1e-8, dice.alpha), **TIGHT)


def test_dice_3d_masked_statistics_use_valid_positions_only():
    dice = Dice(D).double()
    with torch.no_grad():
        dice.alpha.uniform_(-1, 1)
    seq, lengths, _ = inputs()
    mask = torch.arange(L) < lengths[:, None]
    out = dice(with_garbage(seq, lengths, "huge"), mask)
    valid = [seq[b, t] for b in range(B) for t in range(int(lengths[b]))]
    n = len(valid)
    mean = sum(valid) / n
    var = sum((v - mean) ** 2 for v in valid) / n
    for b in range(B):
        for t in range(int(lengths[b])):
            torch.testing.assert_close(out[b, t], dice_formula(seq[b, t], mean, var, 1e-8, dice.alpha), **TIGHT)
    torch.testing.assert_close(dice.batch_norm.running_mean, 0.1 * mean, **TIGHT)
    torch.testing.assert_close(dice.batch_norm.running_var, 0.9 + 0.1 * var * n / (n - 1), **TIGHT)
    # Eval: per position with the running statistics; the mask changes nothing.
    dice.eval()
    stats = (dice.batch_norm.running_mean, dice.batch_norm.running_var)
    for b in range(B):
        for t in range(L):
            torch.testing.assert_close(dice(seq, mask)[b, t], dice_formula(seq[b, t], *stats, 1e-8, dice.alpha))
    # Fewer than 2 valid positions in training: running statistics, not updated, no NaN.
    dice.train()
    before = dice.batch_norm.running_mean.clone()
    few = dice(seq, torch.arange(L) < torch.tensor([0, 1, 0, 0, 0])[:, None])
    assert torch.isfinite(few).all() and torch.equal(dice.batch_norm.running_mean, before)
    torch.testing.assert_close(few[1, 0], dice_formula(seq[1, 0], *stats, 1e-8, dice.alpha), **TIGHT)
    # Without a mask, training statistics pool every (row, position).
    unmasked = Dice(D).double()
    every = [seq[b, t] for b in range(B) for t in range(L)]
    mean = sum(every) / len(every)
    var = sum((v - mean) ** 2 for v in every) / len(every)
    out = unmasked(seq)
    for b in range(B):
        for t in range(L):
            torch.testing.assert_close(out[b, t], dice_formula(seq[b, t], mean, var, 1e-8, 0.0), **TIGHT)
    with pytest.raises(ValueError, match="Dice expects"):
        dice(torch.randn(2, 3, 4, D))
    with pytest.raises(ValueError, match="mask"):
        dice(torch.randn(2, D), torch.ones(2, dtype=torch.bool))


# --------------------------------------------------------------------------- DIN target attention


def loop_target_attention(module: TargetAttention, seq, lengths, target, activation, training):
    """Layer by layer over the list of valid (row, position) pairs; Dice statistics in
    training are taken over that list."""
    cells = [(b, t) for b in range(seq.shape[0]) for t in range(int(lengths[b]))]
    hidden = {}
    for b, t in cells:
        q, s = target[b], seq[b, t]
        hidden[b, t] = torch.cat([q, s, q - s, q * s])
    for linear, act in zip(module.linears, module.activations):
        for cell in cells:
            hidden[cell] = linear.weight @ hidden[cell] + linear.bias
        if activation == "dice":
            if training:
                mean = sum(hidden[c] for c in cells) / len(cells)
                var = sum((hidden[c] - mean) ** 2 for c in cells) / len(cells)
            else:
                mean, var = act.batch_norm.running_mean, act.batch_norm.running_var
            for cell in cells:
                hidden[cell] = dice_formula(hidden[cell], mean, var, act.batch_norm.eps, act.alpha)
        else:
            fn = {"relu": torch.relu, "sigmoid": torch.sigmoid}[activation]
            for cell in cells:
                hidden[cell] = fn(hidden[cell])
    out = torch.zeros(seq.shape[0], seq.shape[2], dtype=seq.dtype)
    for b in range(seq.shape[0]):
        n = int(lengths[b])
        scores = [module.score.weight[0] @ hidden[b, t] + module.score.bias[0] for t in range(n)]
        if n == 0:
            continue
        if module.softmax:
            top = torch.stack(scores).max()
            exps = [torch.exp(s - top) for s in scores]
            scores = [e / sum(exps) for e in exps]
        for t in range(n):
            out[b] = out[b] + scores[t] * seq[b, t]
    return out


@pytest.mark.parametrize(
    "activation,softmax,training",
    [
        ("dice", False, False),
        ("dice", False, True),
        ("dice", True, False),
        ("sigmoid", False, False),
        ("relu", True, False),
        ("relu", True, True),  # (training computes the valid positions only, packed)
        ("sigmoid", False, True),
    ],
)
def test_target_attention_matches_loop(activation, softmax, training):
    module = TargetAttention(D, (6, 5), activation=activation, softmax=softmax).double()
    randomize_dice(module)
    module.train(training)
    seq, lengths, target = inputs()
    out = module(with_garbage(seq, lengths, "extreme"), lengths, target)
    expected = loop_target_attention(module, seq, lengths, target, activation, training)
    torch.testing.assert_close(out, expected, **TIGHT)
    assert out[0].abs().max() == 0
    weights = module.attention_weights(seq, lengths, target)
    if softmax:
        torch.testing.assert_close(weights.sum(dim=1), (lengths > 0).to(weights.dtype), **TIGHT)


# --------------------------------------------------------------------------- DIEN


def loop_gru(module: AUGRU, seq, lengths, attention):
    h_dim = module.hidden_dim
    w, bias, u = module.input_linear.weight, module.input_linear.bias, module.hidden_linear.weight
    gate = [slice(i * h_dim, (i + 1) * h_dim) for i in range(3)]  # update, reset, candidate
    states = torch.zeros(seq.shape[0], seq.shape[1], h_dim, dtype=seq.dtype)
    finals = torch.zeros(seq.shape[0], h_dim, dtype=seq.dtype)
    for b in range(seq.shape[0]):
        h = torch.zeros(h_dim, dtype=seq.dtype)
        for t in range(int(lengths[b])):
            x = seq[b, t]
            update = torch.sigmoid(w[gate[0]] @ x + u[gate[0]] @ h + bias[gate[0]])
            reset = torch.sigmoid(w[gate[1]] @ x + u[gate[1]] @ h + bias[gate[1]])
            candidate = torch.tanh(w[gate[2]] @ x + reset * (u[gate[2]] @ h) + bias[gate[2]])
            if module.gate == "augru":
                update = attention[b, t] * update
            elif module.gate == "agru":
                update = attention[b, t] * torch.ones(h_dim, dtype=seq.dtype)
            h = (1 - update) * h + update * candidate
            states[b, t] = h
        finals[b] = h
    return states, finals


@pytest.mark.parametrize("gate", ["gru", "augru", "agru"])
def test_gru_matches_loop(gate):
    module = AUGRU(D, 6, gate=gate).double()
    seq, lengths, _ = inputs()
    attention = None if gate == "gru" else torch.rand(B, L, dtype=seq.dtype)
    dirty_attention = None if attention is None else with_garbage(attention, lengths, "extreme")
    states, final = module(with_garbage(seq, lengths, "extreme"), lengths, dirty_attention)
    expected_states, expected_final = loop_gru(module, seq, lengths, attention)
    torch.testing.assert_close(states, expected_states, **TIGHT)
    torch.testing.assert_close(final, expected_final, **TIGHT)
    assert final[0].abs().max() == 0 and states.shape == (B, L, 6)
    with pytest.raises(ValueError, match="attention"):
        module(seq, lengths, None if gate != "gru" else torch.rand(B, L, dtype=seq.dtype))


def test_dien_auxiliary_loss_matches_loop():
    hidden_dim = 6
    mlp = MLP(hidden_dim + D, [5], activation="sigmoid", output_dim=1).double()
    hidden = torch.randn(B, L, hidden_dim, dtype=torch.float64)
    clicked, lengths, _ = inputs()
    negative = torch.randn(B, L, D, dtype=torch.float64)
    total, count = 0.0, 0
    for b in range(B):
        for t in range(int(lengths[b]) - 1):
            pos = mlp(torch.cat([hidden[b, t], clicked[b, t]])[None])[0, 0]
            neg = mlp(torch.cat([hidden[b, t], negative[b, t]])[None])[0, 0]
            total = total - torch.log(torch.sigmoid(pos)) - torch.log(1 - torch.sigmoid(neg))
            count += 1
    assert count == 6 + 2 + 0 + 4
    last_valid = torch.arange(L) >= (lengths - 1).clamp(min=0)[:, None]  # t >= length - 1: ignored
    dirty = [torch.where(last_valid[..., None], torch.full_like(x, 1e6), x) for x in (hidden, clicked, negative)]
    loss = dien_auxiliary_loss(*dirty, lengths, mlp)
    torch.testing.assert_close(loss, total / count, **TIGHT)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in mlp.parameters())
    empty = dien_auxiliary_loss(hidden, clicked, negative, torch.tensor([0, 1, 1, 0, 1]), mlp)
    assert empty.item() == 0.0 and empty.requires_grad


# --------------------------------------------------------------------------- BST


def loop_bst(module: BSTLayer, seq, lengths, target):
    heads, d = module.num_heads, module.head_dim

    def layer_norm(x, norm):
        mean = x.mean()
        var = ((x - mean) ** 2).mean()
        return (x - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias

    ff1, ff2 = module.feed_forward[0], module.feed_forward[2]
    outputs = torch.zeros(seq.shape[0], seq.shape[1] + 1, seq.shape[2], dtype=seq.dtype)
    for b in range(seq.shape[0]):
        n = int(lengths[b])
        tokens = [seq[b, t] for t in range(n)] + [target[b]]  # only the valid ones
        if module.position is not None:
            tokens = [tok + module.position.weight[n - i] for i, tok in enumerate(tokens)]  # target: n - n = 0
        q = [module.query.weight @ x + module.query.bias for x in tokens]
        k = [module.key.weight @ x + module.key.bias for x in tokens]
        v = [module.value.weight @ x + module.value.bias for x in tokens]
        for i, x in enumerate(tokens):
            attended = []
            for h in range(heads):
                rows = slice(h * d, (h + 1) * d)
                scores = torch.stack([q[i][rows] @ k[j][rows] / math.sqrt(d) for j in range(len(tokens))])
                alpha = torch.softmax(scores, dim=0)
                attended.append(sum(alpha[j] * v[j][rows] for j in range(len(tokens))))
            mh = module.attention_output.weight @ torch.cat(attended) + module.attention_output.bias
            s = layer_norm(x + mh, module.norm1)
            ff = ff2.weight @ torch.nn.functional.leaky_relu(ff1.weight @ s + ff1.bias) + ff2.bias
            position = i if i < n else seq.shape[1]  # the target is token L
            outputs[b, position] = layer_norm(s + ff, module.norm2)
    return outputs


@pytest.mark.parametrize("output,positional", [("flatten", True), ("mean", True), ("target", False)])
def test_bst_matches_loop(output, positional):
    module = BSTLayer(D, L, num_heads=2, ff_dim=12, positional=positional, output=output).double()
    with torch.no_grad():
        for norm in (module.norm1, module.norm2):
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.normal_()
    seq, lengths, target = inputs()
    encoded = loop_bst(module, seq, lengths, target)
    dirty = with_garbage(seq, lengths, "extreme")
    tokens, token_mask = module.encode(dirty, lengths, target)
    torch.testing.assert_close(tokens, encoded, **TIGHT)
    assert token_mask.sum(dim=1).tolist() == [n + 1 for n in LENGTHS]
    expected = {
        "flatten": encoded.flatten(1),
        "mean": encoded.sum(dim=1) / (lengths + 1).to(seq.dtype)[:, None],
        "target": encoded[:, -1],
    }[output]
    out = module(dirty, lengths, target)
    assert out.shape == (B, module.output_dim)
    torch.testing.assert_close(out, expected, **TIGHT)
    with pytest.raises(ValueError, match="max_length"):
        module(torch.randn(B, L + 1, D, dtype=seq.dtype), lengths, target)


# --------------------------------------------------------------------------- all blocks: padding, gradients, ONNX


class Wrapped(torch.nn.Module):
    """One block behind ``(seq, lengths, target) -> one tensor``."""

    def __init__(self, name: str):
        super().__init__()
        self.name = name
        self.block = None
        if name.startswith("din"):
            self.block = TargetAttention(D, (6, 5), activation="dice" if name == "din" else "relu", softmax=name != "din")
        elif name in ("gru", "augru", "agru"):
            self.block = AUGRU(D, 6, gate=name)
            # DIEN: the attention of the evolution layer comes from DIN's unit with a softmax.
            self.attention = TargetAttention(D, (5,), activation="sigmoid", softmax=True) if name != "gru" else None
        elif name.startswith("bst"):
            self.block = BSTLayer(D, L, ff_dim=12, output=name.split("_")[1])
        randomize_dice(self)

    def forward(self, seq, lengths, target):
        if self.name.startswith("pool"):
            mode = self.name.split("_")[1]
            weights = torch.sigmoid((seq * target.unsqueeze(1)).sum(dim=-1))
            return masked_pool(seq, lengths, mode, weights)
        if self.name in ("gru", "augru", "agru"):
            attention = None if self.attention is None else self.attention.attention_weights(seq, lengths, target)
            states, final = self.block(seq, lengths, attention)
            return torch.cat([states.flatten(1), final], dim=1)
        return self.block(seq, lengths, target)


BLOCKS = ["pool_sum", "pool_mean", "pool_max", "din", "din_softmax", "gru", "augru", "agru", "bst_flatten", "bst_mean"]
LEARNABLE = [name for name in BLOCKS if not name.startswith("pool")] + ["bst_target"]


@pytest.mark.parametrize("name", BLOCKS + ["bst_target"])
@pytest.mark.parametrize("training", [True, False])
def test_garbage_padding_changes_nothing(name, training):
    module = Wrapped(name).train(training)
    seq, lengths, target = inputs(torch.float32)
    clean = module(seq, lengths, target)
    assert torch.isfinite(clean).all()
    for kind in ("huge", "extreme"):
        dirty = module(with_garbage(seq, lengths, kind), lengths, target)
        assert torch.isfinite(dirty).all()
        torch.testing.assert_close(dirty, clean, atol=1e-6, rtol=0)
    # Each row on its own gives the same output as in the batch (no cross-row leakage through
    # the padding in eval; Dice's training statistics are batch-wide by design).
    if not training:
        for b in range(B):
            alone = module(with_garbage(seq[b : b + 1], lengths[b : b + 1], "huge"), lengths[b : b + 1], target[b : b + 1])
            torch.testing.assert_close(alone[0], clean[b], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("name", LEARNABLE)
def test_gradients_flow_and_ignore_padding(name):
    module = Wrapped(name).train()
    seq, lengths, target = inputs(torch.float32)
    grads = []
    for dirty in (seq, with_garbage(seq, lengths, "huge"), with_garbage(seq, lengths, "extreme")):
        module.zero_grad()
        dirty = dirty.clone().requires_grad_(True)
        query = target.clone().requires_grad_(True)
        module(dirty, lengths, query).sum().backward()
        padded = torch.arange(L) >= lengths[:, None]
        assert torch.isfinite(dirty.grad).all() and dirty.grad[padded].abs().max() == 0
        assert dirty.grad[~padded].abs().max() > 0
        assert (query.grad is None) == (name == "gru")  # the plain GRU takes no target
        assert query.grad is None or (torch.isfinite(query.grad).all() and query.grad.abs().max() > 0)
        for param_name, param in module.named_parameters():
            assert param.grad is not None, param_name
            assert torch.isfinite(param.grad).all(), param_name
            assert param.grad.abs().max() > 0, param_name
        grads.append([p.grad.clone() for p in module.parameters()])
    for other in grads[1:]:
        for reference, grad in zip(grads[0], other):
            torch.testing.assert_close(grad, reference, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", BLOCKS + ["bst_target"])
def test_onnx_export_matches_torch(name, tmp_path):
    import onnxruntime

    module = Wrapped(name).eval()
    seq, lengths, target = inputs(torch.float32, batch=2, lengths=[L, 3])
    path = tmp_path / f"{name}.onnx"
    with warnings.catch_warnings(), torch.no_grad():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(
            module,
            (seq, lengths, target),
            str(path),
            dynamo=False,
            input_names=["seq", "lengths", "target"],
            output_names=["out"],
            dynamic_axes={"seq": {0: "batch"}, "lengths": {0: "batch"}, "target": {0: "batch"}, "out": {0: "batch"}},
            opset_version=17,
        )
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    big = torch.randint(0, L + 1, (1000,))
    big[:2] = torch.tensor([0, L])
    cases = [[0], [L], [3], big.tolist()]
    for case in cases:
        seq, lengths, target = inputs(torch.float32, batch=None, lengths=case)
        seq = with_garbage(seq, lengths, "huge")
        with torch.no_grad():
            expected = module(seq, lengths, target).numpy()
        feed = {"seq": seq.numpy(), "lengths": lengths.numpy(), "target": target.numpy()}
        used = {node.name for node in session.get_inputs()}  # the plain GRU ignores the target
        assert used == set(feed) - ({"target"} if name == "gru" else set())
        (got,) = session.run(None, {key: value for key, value in feed.items() if key in used})
        assert got.shape == expected.shape and np.isfinite(got).all()
        assert np.abs(got - expected).max() < 1e-5, (case[:3], np.abs(got - expected).max())
