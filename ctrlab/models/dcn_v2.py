"""DCN-V2."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ctrlab.fields import FeatureSpec
from ctrlab.models.registry import register
from ctrlab.nn import MLP, CrossNetV2, FeatureEmbedding, deep_input

STRUCTURES = ("parallel", "stacked")


@register("dcn_v2")
class DCNV2(nn.Module):
    """Matrix cross network (optionally a mixture of low-rank experts) with an MLP.

    Paper: Wang, Shivanna, Cheng, Jain, Lin, Hong and Chi (2021), "DCN V2: Improved Deep &
    Cross Network and Practical Lessons for Web-scale Learning to Rank Systems", WWW.

    Dense features: raw (normalised) values concatenated to the flattened sparse
    embeddings to form x0, as in the paper.

    Shapes: dense float32 [B, dense_width], sparse int64 [B, n_sparse] -> logits float32 [B].

    Hyperparameters:
        cross_layers: number of cross layers
        structure: "parallel" (cross and MLP side by side on x0, concatenated) or "stacked"
            (MLP on top of the cross network)
        use_low_rank_mixture: use the mixture of low-rank experts (DCN-Mix) instead of the
            full-rank D x D matrices
        low_rank: rank r of each expert (mixture only)
        num_experts: number of low-rank experts (mixture only)
        hidden_units: widths of the MLP hidden layers (empty: cross network only)
    """

    def __init__(
        self,
        spec: FeatureSpec,
        *,
        embedding_dim: int = 10,
        cross_layers: int = 3,
        structure: str = "parallel",
        use_low_rank_mixture: bool = False,
        low_rank: int = 32,
        num_experts: int = 4,
        hidden_units: Sequence[int] = (400, 400, 400),
        activation: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        if structure not in STRUCTURES:
            raise ValueError(f"structure must be one of {STRUCTURES}, got {structure!r}")
        self.structure = structure
        self.n_dense = spec.n_dense
        self.embedding = FeatureEmbedding(spec, embedding_dim, embed_dense=False)
        input_dim = self.embedding.output_dim + spec.n_dense
        self.cross = CrossNetV2(
            input_dim, cross_layers, low_rank=low_rank if use_low_rank_mixture else None, num_experts=num_experts
        )
        self.deep = (
            MLP(input_dim, hidden_units, activation=activation, dropout=dropout, batch_norm=batch_norm)
            if hidden_units
            else None
        )
        deep_width = self.deep.out_features if self.deep is not None else 0
        if structure == "parallel":
            output_dim = input_dim + deep_width
        else:
            output_dim = deep_width or input_dim
        self.output = nn.Linear(output_dim, 1)

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        x0 = deep_input(self.embedding(dense, sparse), dense, self.n_dense)
        crossed = self.cross(x0)
        if self.deep is None:
            hidden = crossed
        elif self.structure == "stacked":
            hidden = self.deep(crossed)
        else:
            hidden = torch.cat([crossed, self.deep(x0)], dim=1)
        return self.output(hidden).squeeze(-1)
