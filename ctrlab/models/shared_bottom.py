"""Shared-Bottom multi-task model."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ctrlab.fields import FeatureSpec
from ctrlab.models.registry import register
from ctrlab.nn import MLP
from ctrlab.nn.multitask import TaskInputs, Towers


@register("shared_bottom")
class SharedBottom(nn.Module):
    """Multi-task: one shared MLP over the embeddings, then one tower per task.

    Paper: Caruana (1997), "Multitask Learning", Machine Learning 28; the hard parameter
    sharing baseline of Ma et al. (2018), "Modeling Task Relationships in Multi-task Learning
    with Multi-gate Mixture-of-Experts", KDD.

    Dense features: raw values concatenated to the flattened sparse embeddings (the shared
    MLP's input).

    Shapes: dense float32 [B, dense_width], sparse int64 [B, n_sparse] -> logits float32 [B, num_tasks].

    Hyperparameters:
        num_tasks: number of tasks T; logits column t is task t's logit
        hidden_units: widths of the shared bottom MLP's hidden layers
        tower_units: widths of each task tower's hidden layers (then a linear logit)
    """

    multi_task = True

    def __init__(
        self,
        spec: FeatureSpec,
        *,
        num_tasks: int = 2,
        embedding_dim: int = 10,
        hidden_units: Sequence[int] = (256, 128),
        tower_units: Sequence[int] = (64,),
        activation: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        if not hidden_units:
            raise ValueError("hidden_units (the shared bottom) must not be empty")
        self.inputs = TaskInputs(spec, embedding_dim, num_tasks, model="shared_bottom")
        self.num_tasks = self.inputs.num_tasks
        options = {"activation": activation, "dropout": dropout, "batch_norm": batch_norm}
        self.bottom = MLP(self.inputs.output_dim, hidden_units, **options)
        self.towers = Towers(self.bottom.out_features, num_tasks, tower_units, **options)

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        return self.towers(self.bottom(self.inputs(dense, sparse)))
