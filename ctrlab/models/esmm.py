"""ESMM: entire space multi-task model."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ctrlab.fields import FeatureSpec
from ctrlab.models.registry import register
from ctrlab.nn import MLP
from ctrlab.nn.multitask import TaskInputs, product_logit


@register("esmm")
class ESMM(nn.Module):
    """Multi-task CTR/CVR over the entire impression space: pCTCVR = pCTR x pCVR, shared embeddings.

    Paper: Ma, Zhao, Huang, Wang, Hu, Zhu and Gai (2018), "Entire Space Multi-Task Model: An
    Effective Approach for Estimating Post-Click Conversion Rate", SIGIR.

    Dense features: raw values concatenated to the flattened sparse embeddings (the input of
    both towers).

    Shapes: dense float32 [B, dense_width], sparse int64 [B, n_sparse] -> logits float32 [B, num_tasks].

    Two tasks: logits column 0 is the CTR logit (label: click), column 1 the logit of
    pCTCVR = sigmoid(ctr) * sigmoid(cvr) (label: click and conversion); both are trained on all
    impressions, and pCTCVR <= pCTR always. cvr_logits(dense, sparse) gives the CVR tower's
    logit [B] alone (pCVR, meaningful on clicked rows).

    Hyperparameters:
        num_tasks: must be 2 (task 0 = click, task 1 = click and conversion)
        tower_units: widths of the CTR tower's and the CVR tower's hidden layers (then a linear logit)
    """

    multi_task = True

    def __init__(
        self,
        spec: FeatureSpec,
        *,
        num_tasks: int = 2,
        embedding_dim: int = 10,
        tower_units: Sequence[int] = (360, 200, 80),
        activation: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        self.inputs = TaskInputs(spec, embedding_dim, num_tasks, model="esmm", tasks=2)
        self.num_tasks = 2
        options = {"activation": activation, "dropout": dropout, "batch_norm": batch_norm, "output_dim": 1}
        self.ctr_tower = MLP(self.inputs.output_dim, tower_units, **options)
        self.cvr_tower = MLP(self.inputs.output_dim, tower_units, **options)

    def cvr_logits(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        """The CVR tower's logit ``[B]`` (pCVR = sigmoid of it; conversion given a click)."""
        return self.cvr_tower(self.inputs(dense, sparse)).squeeze(-1)

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        x = self.inputs(dense, sparse)
        ctr = self.ctr_tower(x)  # [B, 1]
        return torch.cat([ctr, product_logit(ctr, self.cvr_tower(x))], dim=1)
