"""PLE: progressive layered extraction."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ctrlab.fields import FeatureSpec
from ctrlab.models.registry import register
from ctrlab.nn.multitask import CGCLayer, TaskInputs, Towers


@register("ple")
class PLE(nn.Module):
    """Multi-task: stacked CGC layers of task-specific and shared experts with gates, then towers.

    Paper: Tang, Liu, Zhao and Gong (2020), "Progressive Layered Extraction (PLE): A Novel
    Multi-Task Learning (MTL) Model for Personalized Recommendations", RecSys.

    Dense features: raw values concatenated to the flattened sparse embeddings (the input of
    the first level's experts and gates).

    Shapes: dense float32 [B, dense_width], sparse int64 [B, n_sparse] -> logits float32 [B, num_tasks].

    Hyperparameters:
        num_tasks: number of tasks T; logits column t is task t's logit
        num_experts: task-specific experts per task in every level
        num_shared_experts: shared experts in every level
        num_levels: stacked extraction levels; every level but the last also has a shared
            gate feeding the next level's shared experts (num_levels=1 is CGC)
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
        num_experts: int = 2,
        num_shared_experts: int = 2,
        num_levels: int = 2,
        expert_units: Sequence[int] = (256, 128),
        tower_units: Sequence[int] = (64,),
        activation: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        if num_levels < 1:
            raise ValueError(f"num_levels must be >= 1, got {num_levels}")
        self.inputs = TaskInputs(spec, embedding_dim, num_tasks, model="ple")
        self.num_tasks = self.inputs.num_tasks
        options = {"activation": activation, "dropout": dropout, "batch_norm": batch_norm}
        width = self.inputs.output_dim
        self.levels = nn.ModuleList()
        for level in range(num_levels):
            layer = CGCLayer(width, num_tasks, num_experts, num_shared_experts, expert_units,
                             shared_gate=level < num_levels - 1, **options)
            self.levels.append(layer)
            width = layer.output_dim
        self.towers = Towers(width, num_tasks, tower_units, **options)

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        x = self.inputs(dense, sparse)
        h = x.unsqueeze(1).expand(-1, self.num_tasks + 1, -1)  # every task and the shared part read x
        for level in self.levels:
            h = level(h)
        return self.towers(h)
