"""Logistic regression."""

from __future__ import annotations

import torch
from torch import nn

from ctrlab.fields import FeatureSpec
from ctrlab.models.registry import register
from ctrlab.nn import FirstOrder


@register("lr")
class LR(nn.Module):
    """Logistic regression on one-hot sparse ids and raw dense values.

    Paper: Richardson, Dominowska and Ragno (2007), "Predicting Clicks: Estimating the
    Click-Through Rate for New Ads", WWW.

    Dense features: one weight per numeric column (logit is linear in each value).

    Shapes: dense float32 [B, dense_width], sparse int64 [B, n_sparse] -> logits float32 [B].
    """

    def __init__(self, spec: FeatureSpec) -> None:
        super().__init__()
        self.linear = FirstOrder(spec)

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        return self.linear(dense, sparse)
