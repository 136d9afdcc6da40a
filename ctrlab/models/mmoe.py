"""MMoE: multi-gate mixture of experts."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ctrlab.fields import FeatureSpec
from ctrlab.models.registry import register
from ctrlab.nn.multitask import MixtureOfExperts, TaskInputs, Towers


@register("mmoe")
class MMoE(nn.Module):
    """Multi-task: shared expert MLPs, one softmax gate per task mixing them, one tower per task.

    Paper: Ma, Zhao, Yi, Chen, Hong and Chi (2018), "Modeling Task Relationships in Multi-task
    Learning with Multi-gate Mixture-of-Experts", KDD.

    Dense features: raw values concatenated to the flattened sparse embeddings (the input of
    every expert and gate).

    Shapes: dense float32 [B, dense_width], sparse int64 [B, n_sparse] -> logits float32 [B, num_tasks].

    Hyperparameters:
        num_tasks: number of tasks T; logits column t is task t's logit
        num_experts: number of shared experts
        expert_units: widths of each expert MLP's hidden layers (the last is the expert output)
        tower_units: widths of each task tower's hidden layers (then a linear logit)
    """

    multi_task = True

    def __init__(
        self,
        spec: FeatureSpec,
        *,
        num_tasks: int = 2,
        embedding_dim: int = 10,
        num_experts: int = 4,
        expert_units: Sequence[int] = (256, 128),
        tower_units: Sequence[int] = (64,),
        activation: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        self.inputs = TaskInputs(spec, embedding_dim, num_tasks, model="mmoe")
        self.num_tasks = self.inputs.num_tasks
        options = {"activation": activation, "dropout": dropout, "batch_norm": batch_norm}
        self.moe = MixtureOfExperts(self.inputs.output_dim, num_experts, num_tasks, expert_units, **options)
        self.towers = Towers(self.moe.output_dim, num_tasks, tower_units, **options)

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        return self.towers(self.moe(self.inputs(dense, sparse)))
