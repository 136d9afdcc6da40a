"""First-order (linear / "wide") term."""

from __future__ import annotations

import torch
from torch import nn

from ctrlab.fields import FeatureSpec
from ctrlab.nn.embedding import FieldEmbedding, numeric, pool_list_fields, table_layout


class FirstOrder(nn.Module):
    """``w0 + sum_j w[field j, id_j] + sum_i u_i * dense_i`` (logistic-regression logit).

    The per-id weights are a fused 1-dim :class:`FieldEmbedding` (one gather); the dense
    part is a bias-free ``Linear(n_dense, 1)``, absent when ``n_dense == 0``.

    A list field (``spec.lists``) adds its values' weights pooled as the field's pooling says.

    Shapes:
        dense: float32 ``[B, n_dense]``, sparse: int64 ``[B, sparse_width]``
        returns: float32 ``[B]``
    """

    def __init__(self, spec: FeatureSpec) -> None:
        super().__init__()
        self.spec = spec
        sizes, columns, names = table_layout(spec)
        self.sparse_weight = FieldEmbedding(sizes, 1, field_names=names, columns=columns) if sizes else None
        self.dense_weight = nn.Linear(spec.n_dense, 1, bias=False) if spec.n_dense > 0 else None
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        logit = self.bias.expand(dense.shape[0])
        if self.sparse_weight is not None:  # (a list field's weights pooled)
            logit = logit + pool_list_fields(self.sparse_weight(sparse), sparse, self.spec, dense).sum(dim=(1, 2))
        if self.dense_weight is not None:
            logit = logit + self.dense_weight(numeric(dense, self.spec)).squeeze(-1)
        return logit
