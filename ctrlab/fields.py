"""What a model needs to know about its input: the fitted feature layout.

A model never sees raw values. The fitted FeaturePipeline turns a row into
``dense: float32[dense_width]`` (the numeric features, then any list weights) and
``sparse: int64[sparse_width]`` (the single-valued fields, then any list blocks) and describes that
layout with a :class:`FeatureSpec`, which is what model constructors take.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: Reserved ids in every vocabulary-encoded sparse field.
MISSING_ID = 0  # the value was empty / absent
OOV_ID = 1  # the value was not in the vocabulary fitted on the training split
NUM_RESERVED_IDS = 2


@dataclass(frozen=True)
class ListField:
    """A list-valued categorical field (multi-valued set or behaviour sequence), encoded as
    ``length`` further columns of the sparse matrix: its ids first, oldest to newest, then the
    missing id 0 as padding (values are never 0: a valid value is >= 1, OOV included), so a
    model masks padding with ``ids != MISSING_ID``.

    vocab_size: ids of its own table; with ``shares`` set, the named field's (a history of
        clicked items shares the target ``item_id``'s ids and embedding table).
    kind: ``sequence`` (ordered) or ``multi`` (a set); pooling: ``sum``, ``mean`` or ``max``
        (how a model that takes it as one more field pools it).
    weighted: its values carry weights (``tag:0.7``), ``length`` further columns of the dense
        matrix after the numeric ones (:attr:`FeatureSpec.weight_columns`; 0 at padding). Pooling
        multiplies each value's embedding by its weight first (a mean still divides by the number
        of values).
    """

    name: str
    length: int
    vocab_size: int
    shares: str | None = None
    kind: str = "sequence"
    pooling: str = "mean"
    weighted: bool = False

    def to_dict(self) -> dict[str, Any]:
        out = {"name": self.name, "length": self.length, "vocab_size": self.vocab_size, "shares": self.shares,
               "kind": self.kind, "pooling": self.pooling}
        if self.weighted:  # (unweighted fields keep their bytes)
            out["weighted"] = True
        return out


@dataclass(frozen=True)
class FeatureSpec:
    """Layout of the encoded features.

    dense_names: names of the float columns, in order (may be empty).
    sparse_names: names of the categorical columns, in order.
    vocab_sizes: per sparse column, the number of distinct ids (reserved ids included),
        so valid ids of column j are ``0 .. vocab_sizes[j] - 1``.
    lists: list-valued fields (:class:`ListField`), whose blocks of ``length`` columns follow
        the single-valued ones in the sparse matrix: ``sparse: int64[B, sparse_width]``.

    The dense matrix is ``float32[B, dense_width]``: the ``n_dense`` numeric columns, then the
    weights of each weighted list field (``dense_width == n_dense`` without weighted fields).
    A model takes the numeric values as ``dense[:, :spec.n_dense]``.
    """

    dense_names: tuple[str, ...]
    sparse_names: tuple[str, ...]
    vocab_sizes: tuple[int, ...]
    lists: tuple[ListField, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "dense_names", tuple(self.dense_names))
        object.__setattr__(self, "sparse_names", tuple(self.sparse_names))
        object.__setattr__(self, "vocab_sizes", tuple(int(v) for v in self.vocab_sizes))
        object.__setattr__(self, "lists", tuple(f if isinstance(f, ListField) else ListField(**f) for f in self.lists))
        names = list(self.sparse_names) + [f.name for f in self.lists]
        if len(set(names)) != len(names):
            raise ValueError(f"FeatureSpec: field names repeat: {names}")
        for f in self.lists:
            if f.length < 1 or f.vocab_size < 1:
                raise ValueError(f"FeatureSpec: list field {f.name!r} needs length and vocab_size >= 1")
            if f.shares is not None and f.shares not in names:
                raise ValueError(f"FeatureSpec: list field {f.name!r} shares the table of unknown field {f.shares!r}")
        if len(self.sparse_names) != len(self.vocab_sizes):
            raise ValueError(
                f"FeatureSpec: {len(self.sparse_names)} sparse names but {len(self.vocab_sizes)} vocab sizes"
            )
        if any(v < 1 for v in self.vocab_sizes):
            raise ValueError(f"FeatureSpec: vocab sizes must be >= 1, got {self.vocab_sizes}")

    @property
    def n_dense(self) -> int:
        return len(self.dense_names)

    @property
    def n_sparse(self) -> int:
        return len(self.sparse_names)

    @property
    def total_vocab(self) -> int:
        return sum(self.vocab_sizes)

    @property
    def column_vocab_sizes(self) -> tuple[int, ...]:
        """Per column of the sparse matrix, the number of ids of the table it reads."""
        return self.vocab_sizes + tuple(f.vocab_size for f in self.lists for _ in range(f.length))

    @property
    def column_names(self) -> tuple[str, ...]:
        """Per column of the sparse matrix, its field's name (a list field's, over its block)."""
        return self.sparse_names + tuple(f.name for f in self.lists for _ in range(f.length))

    @property
    def sparse_width(self) -> int:
        """Columns of the sparse matrix: the single-valued fields, then every list field's block."""
        return self.n_sparse + sum(f.length for f in self.lists)

    @property
    def weight_columns(self) -> dict[str, tuple[int, int]]:
        """Per weighted list field, its (start, stop) columns in the dense matrix."""
        out, start = {}, self.n_dense
        for f in self.lists:
            if f.weighted:
                out[f.name] = (start, start + f.length)
                start += f.length
        return out

    @property
    def dense_width(self) -> int:
        """Columns of the dense matrix: the numeric ones, then the weighted list fields' weights."""
        return self.n_dense + sum(f.length for f in self.lists if f.weighted)

    @property
    def dense_column_names(self) -> tuple[str, ...]:
        """Per column of the dense matrix, its name (``tags.weight[2]`` for a weight)."""
        return self.dense_names + tuple(f"{f.name}.weight[{i}]" for f in self.lists if f.weighted
                                        for i in range(f.length))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "dense_names": list(self.dense_names),
            "sparse_names": list(self.sparse_names),
            "vocab_sizes": list(self.vocab_sizes),
        }
        if self.lists:  # (flat specs keep their bytes)
            out["lists"] = [f.to_dict() for f in self.lists]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FeatureSpec":
        return cls(data["dense_names"], data["sparse_names"], data["vocab_sizes"], data.get("lists", ()))

    @classmethod
    def criteo_like(cls, vocab_sizes: list[int] | None = None, n_dense: int = 13) -> "FeatureSpec":
        """A Criteo-shaped spec (13 dense, 26 sparse) for tests and benchmarks."""
        sizes = vocab_sizes if vocab_sizes is not None else [1000] * 26
        return cls(
            tuple(f"I{i}" for i in range(1, n_dense + 1)),
            tuple(f"C{i}" for i in range(1, len(sizes) + 1)),
            tuple(sizes),
        )
