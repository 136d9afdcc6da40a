"""MMoE: multi-gate mixture of experts."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ctrlab.fields import FeatureSpec
from ctrlab.models.registry import register
from ctrlab.nn import FeatureEmbedding, deep_input
from ctrlab.nn.multitask import MixtureOfExperts, Towers


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
        if num_tasks < 1:
            raise ValueError(f"num_tasks must be >= 1, got {num_tasks}")
        self.num_tasks = int(num_tasks)
        self.n_dense = spec.n_dense
        options = {"activation": activation, "dropout": dropout, "batch_norm": batch_norm}
        self.embedding = FeatureEmbedding(spec, embedding_dim, embed_dense=False)
        self.moe = MixtureOfExperts(self.embedding.output_dim + spec.n_dense, num_experts, num_tasks, expert_units,
                                    **options)
        self.towers = Towers(self.moe.output_dim, num_tasks, tower_units, **options)

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        x = deep_input(self.embedding(dense, sparse), dense, self.n_dense)
        return self.towers(self.moe(x))
