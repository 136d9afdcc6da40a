"""AITM: adaptive information transfer multi-task model."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ctrlab.fields import FeatureSpec
from ctrlab.models.registry import register
from ctrlab.nn import MLP
from ctrlab.nn.multitask import InformationTransfer, TaskInputs


@register("aitm")
class AITM(nn.Module):
    """Multi-task click -> conversion: attention transfers the click tower's information to the conversion tower.

    Paper: Xi, Chen, Liu, Zhang, Song, Wang, Chen and Liang (2021), "Modeling the Sequential
    Dependence among Audience Multi-step Conversions with Multi-task Learning in Targeted
    Display Advertising", KDD.

    Dense features: raw values concatenated to the flattened sparse embeddings (the input of
    both towers).

    Shapes: dense float32 [B, dense_width], sparse int64 [B, n_sparse] -> logits float32 [B, num_tasks].

    Two sequential tasks on all impressions: logits column 0 is the click logit, column 1 the
    conversion logit (label: click and conversion). Task 1's tower output q_1 attends over itself
    and p_0 = transfer(z_0), the information transferred from task 0 (z_0 = q_0).
    calibration_loss(logits) gives the behavioural expectation calibrator,
    calibrator_weight * mean(max(p_1 - p_0, 0)); training adds it to the tasks' losses.

    Hyperparameters:
        num_tasks: must be 2 (task 0 = click, task 1 = click and conversion)
        tower_units: widths of each task tower's hidden layers (the last is the width D that
            the transfer and attention work in; then a linear logit)
        calibrator_weight: weight alpha of the calibration loss (the paper's 0.6)
    """

    multi_task = True

    def __init__(
        self,
        spec: FeatureSpec,
        *,
        num_tasks: int = 2,
        embedding_dim: int = 10,
        tower_units: Sequence[int] = (128, 64, 32),
        activation: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
        calibrator_weight: float = 0.6,
    ) -> None:
        super().__init__()
        if not tower_units:
            raise ValueError("tower_units must not be empty")
        self.inputs = TaskInputs(spec, embedding_dim, num_tasks, model="aitm", tasks=2)
        self.num_tasks = 2
        self.calibrator_weight = float(calibrator_weight)
        options = {"activation": activation, "dropout": dropout, "batch_norm": batch_norm}
        dim = int(tower_units[-1])
        self.towers = nn.ModuleList(MLP(self.inputs.output_dim, tower_units, **options) for _ in range(2))
        self.transfer = MLP(dim, (dim,), activation=activation)  # p_0 = transfer(z_0)
        self.attention = InformationTransfer(dim)
        self.heads = nn.ModuleList(nn.Linear(dim, 1) for _ in range(2))

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        x = self.inputs(dense, sparse)
        z0 = self.towers[0](x)
        z1 = self.attention(self.transfer(z0), self.towers[1](x))
        return torch.cat([self.heads[0](z0), self.heads[1](z1)], dim=1)

    def calibration_loss(self, logits: torch.Tensor) -> torch.Tensor:
        """``calibrator_weight * mean(max(sigmoid(logits[:, 1]) - sigmoid(logits[:, 0]), 0))`` (scalar):
        conversion implies click, so the conversion probability should not exceed the click one."""
        probabilities = torch.sigmoid(logits)
        return self.calibrator_weight * torch.relu(probabilities[:, 1] - probabilities[:, 0]).mean()
