"""Reference tests for the multi-task blocks in ctrlab.nn.multitask: each block against a
loop-written version (per row, per expert, per task) of its formula."""

from __future__ import annotations

import math

import pytest
import torch

from ctrlab.nn.multitask import (
    CGCLayer,
    ExpertGate,
    Experts,
    InformationTransfer,
    MixtureOfExperts,
    Towers,
    product_logit,
)

ATOL = 1e-5


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)


def softmax_list(values: list[float]) -> list[float]:
    top = max(values)
    exps = [math.exp(v - top) for v in values]
    return [e / sum(exps) for e in exps]


def gate_mix_loop(gate: ExpertGate, x_row: torch.Tensor, expert_rows: list[torch.Tensor]) -> torch.Tensor:
    """sum_e softmax(W x)_e * expert_e for one row, written out."""
    scores = [float((gate.linear.weight[e] @ x_row).detach()) for e in range(len(expert_rows))]
    weights = softmax_list(scores)
    out = torch.zeros_like(expert_rows[0])
    for w, expert in zip(weights, expert_rows):
        out = out + w * expert
    return out


def test_experts_stack_each_expert_mlp():
    experts = Experts(6, 3, (8, 5)).eval()
    x = torch.randn(7, 6)
    out = experts(x)
    assert out.shape == (7, 3, 5) and experts.output_dim == 5
    for b in range(7):
        for e in range(3):
            assert torch.allclose(out[b, e], experts.experts[e](x[b : b + 1])[0], atol=ATOL)
    with pytest.raises(ValueError):
        Experts(6, 0, (8,))
    with pytest.raises(ValueError):
        Experts(6, 2, ())


def test_expert_gate_against_loop():
    gate = ExpertGate(6, 4)
    x, experts = torch.randn(5, 6), torch.randn(5, 4, 3)
    out = gate(x, experts)
    weights = gate.weights(x)
    assert out.shape == (5, 3) and weights.shape == (5, 4)
    assert torch.allclose(weights.sum(dim=1), torch.ones(5), atol=ATOL)
    for b in range(5):
        expected = gate_mix_loop(gate, x[b], [experts[b, e] for e in range(4)])
        assert torch.allclose(out[b], expected, atol=ATOL)


def test_mixture_of_experts_against_loop():
    moe = MixtureOfExperts(6, 3, 2, (8, 4)).eval()
    x = torch.randn(5, 6)
    out = moe(x)
    assert out.shape == (5, 2, 4)
    for b in range(5):
        experts = [moe.experts.experts[e](x[b : b + 1])[0] for e in range(3)]
        for g in range(2):
            assert torch.allclose(out[b, g], gate_mix_loop(moe.gates[g], x[b], experts), atol=ATOL)


@pytest.mark.parametrize("shared_gate", [True, False])
def test_cgc_layer_against_loop(shared_gate):
    tasks, task_experts, shared_experts = 3, 2, 2
    layer = CGCLayer(6, tasks, task_experts, shared_experts, (7, 4), shared_gate=shared_gate).eval()
    inputs = torch.randn(5, tasks + 1, 6)  # a different input per task and for the shared part
    out = layer(inputs)
    assert out.shape == (5, tasks + 1 if shared_gate else tasks, 4)
    for b in range(5):
        own = [
            [layer.task_experts[t].experts[e](inputs[b, t : t + 1])[0] for e in range(task_experts)]
            for t in range(tasks)
        ]
        shared = [layer.shared_experts.experts[e](inputs[b, tasks : tasks + 1])[0] for e in range(shared_experts)]
        for t in range(tasks):
            expected = gate_mix_loop(layer.task_gates[t], inputs[b, t], own[t] + shared)
            assert torch.allclose(out[b, t], expected, atol=ATOL)
        if shared_gate:
            every = [expert for task in own for expert in task] + shared
            expected = gate_mix_loop(layer.shared_gate, inputs[b, tasks], every)
            assert torch.allclose(out[b, tasks], expected, atol=ATOL)
    if not shared_gate:
        assert layer.shared_gate is None


def test_towers_against_loop():
    towers = Towers(5, 3, (6,)).eval()
    per_task, shared = torch.randn(4, 3, 5), torch.randn(4, 5)
    out_per_task, out_shared = towers(per_task), towers(shared)
    assert out_per_task.shape == (4, 3) and out_shared.shape == (4, 3)
    for b in range(4):
        for t in range(3):
            assert torch.allclose(out_per_task[b, t], towers.towers[t](per_task[b : b + 1, t])[0, 0], atol=ATOL)
            assert torch.allclose(out_shared[b, t], towers.towers[t](shared[b : b + 1])[0, 0], atol=ATOL)


def test_information_transfer_against_loop():
    ait = InformationTransfer(4)
    p, q = torch.randn(6, 4), torch.randn(6, 4)
    out = ait(p, q)
    assert out.shape == (6, 4)
    for b in range(6):
        scores, values = [], []
        for u in (p[b], q[b]):
            h1, h2, h3 = ait.value.weight @ u, ait.query.weight @ u, ait.key.weight @ u
            scores.append(float((h2 @ h3).detach()) / math.sqrt(4))
            values.append(h1)
        weights = softmax_list(scores)
        expected = weights[0] * values[0] + weights[1] * values[1]
        assert torch.allclose(out[b], expected, atol=ATOL)


def test_product_logit_matches_the_probability_product():
    a = torch.randn(200, dtype=torch.float64) * 4
    b = torch.randn(200, dtype=torch.float64) * 4
    out = product_logit(a, b)
    for i in range(200):
        p = 1 / (1 + math.exp(-float(a[i]))) * 1 / (1 + math.exp(-float(b[i])))
        assert float(out[i]) == pytest.approx(math.log(p / (1 - p)), rel=1e-9, abs=1e-9)
    # the log-space form log p - log(-expm1(log p)) agrees where it is finite
    log_p = torch.nn.functional.logsigmoid(a) + torch.nn.functional.logsigmoid(b)
    assert torch.allclose(out, log_p - torch.log(-torch.expm1(log_p)), atol=1e-9)


def test_product_logit_is_finite_and_bounded_at_extremes():
    values = torch.tensor([-1e4, -200.0, -88.0, -30.0, -1.0, 0.0, 1.0, 30.0, 88.0, 200.0, 1e4])
    a, b = torch.meshgrid(values, values, indexing="ij")
    a, b = a.requires_grad_(), b.requires_grad_()
    out = product_logit(a, b)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    # p = sigmoid(a) sigmoid(b) <= min(sigmoid(a), sigmoid(b)), exactly, also after the sigmoid
    assert (out <= torch.minimum(a, b)).all()
    assert (torch.sigmoid(out) <= torch.minimum(torch.sigmoid(a), torch.sigmoid(b))).all()
    # both large: p ~ 1 - e^-a - e^-b, logit ~ min(a, b) - log 2 when equal
    assert float(product_logit(torch.tensor(200.0), torch.tensor(200.0))) == pytest.approx(200 - math.log(2))
    out.sum().backward()
    assert torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()


def test_task_inputs_are_the_flat_embeddings_then_the_numeric_values():
    from ctrlab.fields import FeatureSpec
    from ctrlab.nn.multitask import TaskInputs

    spec = FeatureSpec(("x0", "x1"), ("a", "b"), (5, 7))
    block = TaskInputs(spec, 3, 2, model="mmoe")
    dense, sparse = torch.randn(4, 2), torch.tensor([[1, 2], [0, 6], [4, 1], [3, 3]])
    table, offsets = block.embedding.sparse.weight, [0, 5]
    expected = torch.stack([torch.cat([table[offsets[0] + int(r[0])], table[offsets[1] + int(r[1])], d])
                            for r, d in zip(sparse, dense)])
    torch.testing.assert_close(block(dense, sparse), expected)
    assert block.output_dim == 2 * 3 + 2
    with pytest.raises(ValueError, match="esmm has exactly 2 tasks"):
        TaskInputs(spec, 3, 3, model="esmm", tasks=2)
    with pytest.raises(ValueError, match="num_tasks must be >= 1"):
        TaskInputs(spec, 3, 0, model="mmoe")
