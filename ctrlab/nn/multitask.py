"""Multi-task blocks: experts, softmax expert gates, MMoE and CGC (PLE) layers, per-task towers,
AITM's adaptive information transfer, and the logit of a product of two probabilities (ESMM).

Every block documents its shapes; ``T`` is the number of tasks, ``E`` a number of experts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ctrlab.fields import FeatureSpec
from ctrlab.nn.embedding import FeatureEmbedding, deep_input
from ctrlab.nn.mlp import MLP


class TaskInputs(nn.Module):
    """The input every multi-task model shares: the flattened field embeddings followed by the raw
    numeric values (:func:`~ctrlab.nn.embedding.deep_input`), and the check of its task count
    (``tasks``: the number a model requires, None for any ``num_tasks >= 1``).

    Shapes: dense float32 ``[B, dense_width]``, sparse int64 ``[B, sparse_width]`` -> ``[B, output_dim]``
    """

    def __init__(self, spec: FeatureSpec, embedding_dim: int, num_tasks: int, *, model: str,
                 tasks: int | None = None) -> None:
        super().__init__()
        if tasks is not None and num_tasks != tasks:
            raise ValueError(f"{model} has exactly {tasks} tasks (click, conversion), got num_tasks={num_tasks}")
        if num_tasks < 1:
            raise ValueError(f"num_tasks must be >= 1, got {num_tasks}")
        self.num_tasks = int(num_tasks)
        self.n_dense = spec.n_dense
        self.embedding = FeatureEmbedding(spec, embedding_dim, embed_dense=False)
        self.output_dim = self.embedding.output_dim + spec.n_dense

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        return deep_input(self.embedding(dense, sparse), dense, self.n_dense)


def _expert_mlp(input_dim: int, units: Sequence[int], activation: str, dropout: float, batch_norm: bool) -> MLP:
    if not units:
        raise ValueError("experts need at least one hidden layer (expert_units must not be empty)")
    return MLP(input_dim, units, activation=activation, dropout=dropout, batch_norm=batch_norm)


class Experts(nn.Module):
    """``E`` independent expert MLPs (``MLP(input_dim, units)`` each) over one input.

    Shapes:
        x: float32 ``[B, input_dim]`` -> ``[B, E, units[-1]]`` (expert ``e`` in ``[:, e]``)
    """

    def __init__(
        self,
        input_dim: int,
        num_experts: int,
        units: Sequence[int],
        *,
        activation: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        if num_experts < 1:
            raise ValueError(f"num_experts must be >= 1, got {num_experts}")
        self.experts = nn.ModuleList(
            _expert_mlp(input_dim, units, activation, dropout, batch_norm) for _ in range(num_experts)
        )
        self.num_experts = int(num_experts)
        self.output_dim = int(units[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([expert(x) for expert in self.experts], dim=1)


class ExpertGate(nn.Module):
    """Softmax gate over ``E`` experts: ``g(x) = softmax(W x)`` (``W`` bias-free, as in MMoE),
    output ``sum_e g(x)_e * expert_e``.

    Shapes:
        x: float32 ``[B, input_dim]``, experts: float32 ``[B, E, D]`` -> ``[B, D]``
        :meth:`weights`: x ``[B, input_dim]`` -> ``[B, E]`` (rows sum to 1)
    """

    def __init__(self, input_dim: int, num_experts: int) -> None:
        super().__init__()
        self.linear = nn.Linear(input_dim, num_experts, bias=False)

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.linear(x), dim=-1)

    def forward(self, x: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
        return torch.matmul(self.weights(x).unsqueeze(1), experts).squeeze(1)


class MixtureOfExperts(nn.Module):
    """Multi-gate mixture of experts (MMoE): ``E`` shared experts, one softmax gate per output,
    every gate reading the same input.

    Ma, Zhao, Yi, Chen, Hong and Chi (2018), "Modeling Task Relationships in Multi-task
    Learning with Multi-gate Mixture-of-Experts", KDD.

    Shapes:
        x: float32 ``[B, input_dim]`` -> ``[B, num_gates, expert_units[-1]]``
    """

    def __init__(
        self,
        input_dim: int,
        num_experts: int,
        num_gates: int,
        expert_units: Sequence[int],
        *,
        activation: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        self.experts = Experts(input_dim, num_experts, expert_units, activation=activation, dropout=dropout,
                               batch_norm=batch_norm)
        self.gates = nn.ModuleList(ExpertGate(input_dim, num_experts) for _ in range(num_gates))
        self.output_dim = self.experts.output_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        experts = self.experts(x)
        return torch.stack([gate(x, experts) for gate in self.gates], dim=1)


class CGCLayer(nn.Module):
    """Customized Gate Control layer of PLE: per task ``num_task_experts`` task-specific experts,
    plus ``num_shared_experts`` shared ones.

    Task ``t``'s gate reads task ``t``'s input and mixes task ``t``'s experts followed by the
    shared experts; with ``shared_gate`` (every PLE level but the last) a shared gate reads the
    shared input and mixes every expert (task 0's, ..., task T-1's, then the shared ones), and
    its output is the shared input of the next level.

    Tang, Liu, Zhao and Gong (2020), "Progressive Layered Extraction (PLE): A Novel Multi-Task
    Learning (MTL) Model for Personalized Recommendations", RecSys.

    Shapes:
        inputs: float32 ``[B, T + 1, input_dim]`` (tasks' inputs, then the shared input; the first
        level passes the same vector T + 1 times) -> ``[B, T + 1, expert_units[-1]]`` with
        ``shared_gate``, else ``[B, T, expert_units[-1]]``
    """

    def __init__(
        self,
        input_dim: int,
        num_tasks: int,
        num_task_experts: int,
        num_shared_experts: int,
        expert_units: Sequence[int],
        *,
        shared_gate: bool = True,
        activation: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        options = {"activation": activation, "dropout": dropout, "batch_norm": batch_norm}
        self.num_tasks = int(num_tasks)
        self.task_experts = nn.ModuleList(
            Experts(input_dim, num_task_experts, expert_units, **options) for _ in range(num_tasks)
        )
        self.shared_experts = Experts(input_dim, num_shared_experts, expert_units, **options)
        self.task_gates = nn.ModuleList(
            ExpertGate(input_dim, num_task_experts + num_shared_experts) for _ in range(num_tasks)
        )
        self.shared_gate = (
            ExpertGate(input_dim, num_tasks * num_task_experts + num_shared_experts) if shared_gate else None
        )
        self.output_dim = self.shared_experts.output_dim

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        shared_input = inputs[:, self.num_tasks]
        shared = self.shared_experts(shared_input)  # [B, Es, D]
        task_experts = [experts(inputs[:, t]) for t, experts in enumerate(self.task_experts)]  # [B, Et, D] each
        outputs = [
            gate(inputs[:, t], torch.cat([task_experts[t], shared], dim=1)) for t, gate in enumerate(self.task_gates)
        ]
        if self.shared_gate is not None:
            outputs.append(self.shared_gate(shared_input, torch.cat(task_experts + [shared], dim=1)))
        return torch.stack(outputs, dim=1)


class Towers(nn.Module):
    """One tower per task: ``MLP(input_dim, hidden_units, output_dim=1)``; tower ``t`` reads task
    ``t``'s input (or the one shared input).

    Shapes:
        x: float32 ``[B, T, input_dim]`` (per task) or ``[B, input_dim]`` (shared) -> logits ``[B, T]``
    """

    def __init__(
        self,
        input_dim: int,
        num_tasks: int,
        hidden_units: Sequence[int],
        *,
        activation: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        self.towers = nn.ModuleList(
            MLP(input_dim, hidden_units, activation=activation, dropout=dropout, batch_norm=batch_norm, output_dim=1)
            for _ in range(num_tasks)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            return torch.cat([tower(x) for tower in self.towers], dim=1)
        return torch.cat([tower(x[:, t]) for t, tower in enumerate(self.towers)], dim=1)


class InformationTransfer(nn.Module):
    """AITM's Adaptive Information Transfer: attention over the transferred information ``p``
    (from the previous task) and the task's own tower output ``q``:
    ``z = sum_{u in (p, q)} w_u h1(u)``, ``w_u = softmax_u(<h2(u), h3(u)> / sqrt(D))``, with
    ``h1, h2, h3`` bias-free linear maps ``D -> D``.

    Xi, Chen, Liu, Zhang, Song, Wang, Chen, Liang (2021), "Modeling the Sequential Dependence
    among Audience Multi-step Conversions with Multi-task Learning in Targeted Display
    Advertising", KDD.

    Shapes:
        p: float32 ``[B, D]``, q: float32 ``[B, D]`` -> ``[B, D]``
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.value = nn.Linear(dim, dim, bias=False)
        self.query = nn.Linear(dim, dim, bias=False)
        self.key = nn.Linear(dim, dim, bias=False)
        self.scale = 1.0 / math.sqrt(dim)

    def forward(self, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        inputs = torch.stack([p, q], dim=1)  # [B, 2, D]
        scores = (self.query(inputs) * self.key(inputs)).sum(dim=-1) * self.scale  # [B, 2]
        weights = torch.softmax(scores, dim=1)
        return (weights.unsqueeze(-1) * self.value(inputs)).sum(dim=1)


def product_logit(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The logit of ``sigmoid(a) * sigmoid(b)``, computed stably.

    With ``p = sigmoid(a) sigmoid(b)``: ``1 - p = (e^-a + e^-b + e^-(a+b)) / ((1 + e^-a)(1 + e^-b))``,
    so ``logit(p) = log p - log(1 - p) = -logsumexp(-a, -b, -(a + b))``: finite for every finite
    input (no ``log(0)`` where ``p`` rounds to 1, unlike ``log p - log(-expm1(log p))``), and always
    ``<= min(a, b)``, so ``p <= sigmoid(a)`` and ``p <= sigmoid(b)`` hold exactly.

    Shapes: a, b: float32 ``[...]`` (broadcastable) -> ``[...]``
    """
    a, b = torch.broadcast_tensors(a, b)
    return -torch.logsumexp(torch.stack([-a, -b, -(a + b)], dim=-1), dim=-1)
