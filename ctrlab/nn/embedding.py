"""Embedding layers: sparse ids and dense values -> per-field vectors.

Every model embeds its sparse fields through :class:`FieldEmbedding`: ONE table holding
all fields' rows back to back, a per-field offsets buffer, and one gather on the flat
index ``sparse + offsets``; ``benchmarks/bench_models.py`` measures it against 26
per-field ``nn.Embedding`` lookups.

Why the CPU training path has its own backward (:class:`_FlatGather`): with one big table
(Criteo: ~1M ids x 16 floats = 64 MB) the dense gradient is one big allocation per step.
Measured on 2 CPU cores, torch 2.13, batch 4096 x 26 ids:

* ``nn.functional.embedding``'s CPU backward (a per-row add loop) took ~10 ms; a single
  vectorised ``index_add_`` into the zeroed gradient ~3 ms (and it is deterministic);
* allocating + zeroing the 64 MB gradient took ~16 ms, almost all of it 4 KB page faults:
  glibc serves blocks over 32 MB with a fresh ``mmap`` every time, while the 26 smaller
  per-field gradients are recycled from the heap. Advising the kernel to back the block
  with 2 MB pages (``madvise(MADV_HUGEPAGE)``, what torch does under
  ``THP_MEM_ALLOC_ENABLE=1``) before zeroing it cut that to ~2.4 ms.

Eval mode, ``no_grad``, export/tracing, torch.compile and non-CPU tensors use plain
``nn.functional.embedding``.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Sequence
from functools import lru_cache

import torch
from torch import nn

from ctrlab.fields import MISSING_ID, FeatureSpec
from ctrlab.nn.sequence import masked_pool

#: Standard deviation of the normal initialisation of embedding rows (libFM-style small
#: random init: large enough that pairwise terms carry gradient, small enough to start
#: near logit 0).
EMBEDDING_INIT_STD = 0.01


def _is_exporting_or_compiling() -> bool:
    """True while tracing / scripting / exporting / compiling, where data-dependent checks
    cannot run (they would be baked into the graph or break it)."""
    return (
        torch.jit.is_tracing()
        or torch.jit.is_scripting()
        or torch.onnx.is_in_onnx_export()
        or torch.compiler.is_compiling()
    )


_HUGE_PAGE_BYTES = 2 * 1024 * 1024
_MADV_HUGEPAGE = 14  # Linux <sys/mman.h>
#: glibc's largest mmap threshold: bigger blocks are always fresh mmaps (page faults on
#: every use); smaller ones are recycled from the heap, so advice would buy nothing.
_FRESH_MMAP_BYTES = 32 * 1024 * 1024


@lru_cache(maxsize=1)
def _libc_madvise():
    if not sys.platform.startswith("linux"):
        return None
    try:
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    madvise.restype = ctypes.c_int
    return madvise


def _zeros_for_gradient(rows: int, dim: int, dtype: torch.dtype) -> torch.Tensor:
    """``torch.zeros(rows, dim)`` on CPU; blocks over 32 MB are advised to use 2 MB pages
    before they are first touched (a hint only: any failure leaves normal pages)."""
    tensor = torch.empty(rows, dim, dtype=dtype)
    nbytes = tensor.numel() * tensor.element_size()
    madvise = _libc_madvise() if nbytes > _FRESH_MMAP_BYTES else None
    if madvise is not None:
        start = tensor.data_ptr()
        first = -(-start // _HUGE_PAGE_BYTES) * _HUGE_PAGE_BYTES
        last = (start + nbytes) // _HUGE_PAGE_BYTES * _HUGE_PAGE_BYTES
        if last > first:
            madvise(first, last - first, _MADV_HUGEPAGE)
    return tensor.zero_()


class _FlatGather(torch.autograd.Function):
    """``weight[flat_ids]`` with a vectorised ``index_add_`` backward (CPU training path)."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, flat_ids: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(flat_ids)
        ctx.num_rows = weight.shape[0]
        return weight.index_select(0, flat_ids.reshape(-1)).view(*flat_ids.shape, weight.shape[1])

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (flat_ids,) = ctx.saved_tensors
        dim = grad_output.shape[-1]
        grad_weight = _zeros_for_gradient(ctx.num_rows, dim, grad_output.dtype)
        grad_weight.index_add_(0, flat_ids.reshape(-1), grad_output.reshape(-1, dim))
        return grad_weight, None


class _SparseGather(torch.autograd.Function):
    """``weight[flat_ids]`` whose gradient is a sparse COO tensor holding only the touched rows
    (training with row-sparse optimizers: the cost of a step follows the batch, not the table)."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, flat_ids: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(flat_ids)
        ctx.shape = weight.shape
        return weight.index_select(0, flat_ids.reshape(-1)).view(*flat_ids.shape, weight.shape[1])

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (flat_ids,) = ctx.saved_tensors
        dim = ctx.shape[1]
        grad = torch.sparse_coo_tensor(flat_ids.reshape(1, -1), grad_output.reshape(-1, dim).contiguous(),
                                       ctx.shape, check_invariants=False)
        return grad, None


class FieldEmbedding(nn.Module):
    """Fused embedding of ``F`` categorical fields.

    One ``[sum(vocab_sizes), embedding_dim]`` weight; field ``j`` owns rows
    ``offsets[j] .. offsets[j] + vocab_sizes[j] - 1``.

    Shapes:
        sparse: int64 ``[B, F]``, ids of field j in ``0 .. vocab_sizes[j] - 1``
        returns: float32 ``[B, F, embedding_dim]``

    Because the fields share one table, an id outside its field's range would silently
    read another field's row. In eager mode the forward therefore checks the range and
    raises ``ValueError`` naming the field (two comparisons on ``[B, F]``; skipped while
    tracing/exporting/compiling). The check reads a boolean back to the host, i.e. it
    synchronises a GPU; a trainer that has validated its data can set
    ``validate_ids = False`` on the module.
    """

    def __init__(
        self,
        vocab_sizes: Sequence[int],
        embedding_dim: int,
        *,
        field_names: Sequence[str] | None = None,
        init_std: float = EMBEDDING_INIT_STD,
        validate_ids: bool = True,
        columns: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.validate_ids = validate_ids
        vocab_sizes = [int(v) for v in vocab_sizes]
        if not vocab_sizes:
            raise ValueError("FieldEmbedding needs at least one sparse field")
        if any(v < 1 for v in vocab_sizes):
            raise ValueError(f"vocab sizes must be >= 1, got {vocab_sizes}")
        if embedding_dim < 1:
            raise ValueError(f"embedding_dim must be >= 1, got {embedding_dim}")
        # columns: per input column, the table (vocab_sizes index) it reads: a list field's block
        # of columns reads one table, maybe another field's (default: column j reads table j)
        columns = list(range(len(vocab_sizes))) if columns is None else [int(c) for c in columns]
        self.num_fields = len(columns)
        self.embedding_dim = int(embedding_dim)
        self.field_names = (
            tuple(field_names) if field_names is not None else tuple(f"field{j}" for j in range(len(columns)))
        )
        table_offsets = [0]
        for size in vocab_sizes[:-1]:
            table_offsets.append(table_offsets[-1] + size)
        # Derived from the spec, so not saved in the state_dict.
        self.register_buffer("offsets", torch.tensor([table_offsets[c] for c in columns], dtype=torch.int64),
                             persistent=False)
        self.register_buffer("vocab_sizes", torch.tensor([vocab_sizes[c] for c in columns], dtype=torch.int64),
                             persistent=False)
        self.weight = nn.Parameter(torch.empty(sum(vocab_sizes), self.embedding_dim))
        nn.init.normal_(self.weight, mean=0.0, std=init_std)
        #: training sets this: gradients become sparse (touched rows only), for row-sparse optimizers
        self.sparse_grad = False

    def check_ids(self, sparse: torch.Tensor) -> None:
        """Raise ``ValueError`` if ``sparse`` is not ``[B, F]`` int64 with in-range ids."""
        if sparse.dim() != 2 or sparse.shape[1] != self.num_fields:
            raise ValueError(f"sparse must be [B, {self.num_fields}], got {list(sparse.shape)}")
        if sparse.dtype != torch.int64:
            raise ValueError(f"sparse must be int64, got {sparse.dtype}")
        bad = (sparse < 0) | (sparse >= self.vocab_sizes)
        if bool(bad.any()):
            row, col = (int(i) for i in bad.nonzero()[0])
            raise ValueError(
                f"sparse id {int(sparse[row, col])} in row {row} of field {col} "
                f"('{self.field_names[col]}') is outside 0..{int(self.vocab_sizes[col]) - 1}"
            )

    def forward(self, sparse: torch.Tensor) -> torch.Tensor:
        special = _is_exporting_or_compiling()
        if self.validate_ids and not special:
            self.check_ids(sparse)
        flat_ids = sparse + self.offsets  # one gather over the flat table
        if not special and torch.is_grad_enabled() and self.weight.requires_grad:
            if self.sparse_grad:
                return _SparseGather.apply(self.weight, flat_ids)
            if self.weight.device.type == "cpu":
                return _FlatGather.apply(self.weight, flat_ids)
        return nn.functional.embedding(flat_ids, self.weight)


def table_layout(spec: FeatureSpec) -> tuple[list[int], list[int], list[str]]:
    """The tables behind a spec's sparse matrix: (each table's vocabulary size, per matrix column
    the table it reads, per column its field's name). Single-valued fields own a table each; a
    list field owns one unless it ``shares`` another field's; its block of columns reads it."""
    sizes = list(spec.vocab_sizes)
    table = {name: j for j, name in enumerate(spec.sparse_names)}
    for field in spec.lists:
        if field.shares is None:
            table[field.name] = len(sizes)
            sizes.append(field.vocab_size)
    columns, names = list(range(spec.n_sparse)), list(spec.sparse_names)
    for field in spec.lists:
        owner = field.name
        while owner not in table:  # (a share of a share resolves to the owner's table)
            owner = next(f.shares for f in spec.lists if f.name == owner)
        table[field.name] = table[owner]
        columns += [table[field.name]] * field.length
        names += [field.name] * field.length
    return sizes, columns, names


def pool_list_fields(embedded: torch.Tensor, sparse: torch.Tensor, spec: FeatureSpec,
                     dense: torch.Tensor | None = None) -> torch.Tensor:
    """``[B, sparse_width, k]`` embeddings of a spec's sparse matrix -> ``[B, n_sparse + n_lists, k]``:
    the single-valued fields as they are, then each list field pooled over its values (padding,
    the missing id 0, masked out) with its pooling (sum, mean or max; an empty list gives 0).
    A weighted list field's values are multiplied by their weights, read from ``dense`` (the
    whole dense matrix, ``[B, spec.dense_width]``; :attr:`FeatureSpec.weight_columns`) first."""
    if not spec.lists:
        return embedded
    fields = [embedded[:, : spec.n_sparse]]
    start = spec.n_sparse
    weight_columns = spec.weight_columns
    for field in spec.lists:
        block = embedded[:, start:start + field.length]
        lengths = (sparse[:, start:start + field.length] != MISSING_ID).sum(dim=1)
        weights = None
        if field.weighted:
            if dense is None:
                raise ValueError(f"list field {field.name!r} is weighted: pool_list_fields needs the dense matrix")
            first, stop = weight_columns[field.name]
            weights = dense[:, first:stop]
        fields.append(masked_pool(block, lengths, field.pooling, weights).unsqueeze(1))
        start += field.length
    return torch.cat(fields, dim=1)


class DenseFieldEmbedding(nn.Module):
    """Numeric fields as fields: field ``i`` becomes ``value_i * v_i`` (a learned vector).

    This is how FM treats a real-valued feature (``x_i v_i``) and how AutoInt / FuxiCTR
    embed numeric columns, so dense values join field interactions like sparse fields.

    Shapes:
        dense: float32 ``[B, n_dense]``
        returns: float32 ``[B, n_dense, embedding_dim]``
    """

    def __init__(self, n_dense: int, embedding_dim: int, *, init_std: float = EMBEDDING_INIT_STD) -> None:
        super().__init__()
        if n_dense < 1:
            raise ValueError("DenseFieldEmbedding needs n_dense >= 1 (skip it when there are no dense fields)")
        self.weight = nn.Parameter(torch.empty(n_dense, embedding_dim))
        nn.init.normal_(self.weight, mean=0.0, std=init_std)

    def forward(self, dense: torch.Tensor) -> torch.Tensor:
        return dense.unsqueeze(-1) * self.weight


class FeatureEmbedding(nn.Module):
    """All fields of a :class:`FeatureSpec` as vectors: sparse fields, then dense fields.

    With ``embed_dense=True`` each numeric column is a field (``value * vector``) and the
    output has ``spec.n_sparse + spec.n_dense`` fields; with ``embed_dense=False`` (or
    ``spec.n_dense == 0``) only the sparse fields are embedded and the caller uses the
    raw dense tensor itself (e.g. concatenates it to the DNN input). A list field (multi-valued
    or sequence, ``spec.lists``) is one more field, its values' vectors pooled
    (:func:`pool_list_fields`): fields are sparse, then lists, then dense.

    Shapes:
        dense: float32 ``[B, dense_width]`` (the numeric columns, ``n_dense`` may be 0, then any
        list weights), sparse: int64 ``[B, sparse_width]``
        returns: float32 ``[B, num_fields, embedding_dim]``
    """

    def __init__(self, spec: FeatureSpec, embedding_dim: int, *, embed_dense: bool = True) -> None:
        super().__init__()
        self.spec = spec
        self.embedding_dim = int(embedding_dim)
        sizes, columns, names = table_layout(spec)
        # (no categorical field at all: PaddleRec's census configs feed 499 numeric features alone)
        self.sparse = FieldEmbedding(sizes, embedding_dim, field_names=names, columns=columns) if sizes else None
        self.dense = DenseFieldEmbedding(spec.n_dense, embedding_dim) if embed_dense and spec.n_dense > 0 else None
        list_names = tuple(f.name for f in spec.lists)
        #: the categorical fields (single-valued, then list fields), before any dense ones
        self.categorical_fields = spec.n_sparse + len(list_names)
        self.num_fields = self.categorical_fields + (spec.n_dense if self.dense is not None else 0)
        self.field_names = (tuple(spec.sparse_names) + list_names
                            + (tuple(spec.dense_names) if self.dense is not None else ()))

    @property
    def output_dim(self) -> int:
        """Size of the flattened output, ``num_fields * embedding_dim``."""
        return self.num_fields * self.embedding_dim

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        if self.sparse is None:
            sparse_emb = dense.new_zeros(dense.shape[0], 0, self.embedding_dim)
        else:
            sparse_emb = pool_list_fields(self.sparse(sparse), sparse, self.spec, dense)
        if self.dense is None:
            return sparse_emb
        return torch.cat([sparse_emb, self.dense(numeric(dense, self.spec))], dim=1)


class SequenceInputs(nn.Module):
    """A spec's fields split for a sequence model: each behaviour sequence that ``shares`` a
    single-valued field's table (``kind="sequence"``; e.g. clicked items sharing the target
    ``item_id``), unpooled, with its lengths and its target's embedding; every other field
    (single-valued fields, other list fields pooled as :class:`FeatureEmbedding` pools them).

    Padding is the missing id 0 after the valid ids, so ``lengths = (block != 0).sum(1)``.
    Raises ``ValueError`` when the spec has no such sequence (``model`` names the caller).

    Shapes:
        dense: float32 ``[B, n_dense]``, sparse: int64 ``[B, sparse_width]``
        -> (others: float32 ``[B, num_others, D]``,
            [(seq: float32 ``[B, L_i, D]``, lengths: int64 ``[B]``, target: float32 ``[B, D]``) per sequence])
    """

    def __init__(self, spec: FeatureSpec, embedding_dim: int, *, model: str) -> None:
        super().__init__()
        self.spec = spec
        self.embedding = FeatureEmbedding(spec, embedding_dim, embed_dense=False)
        #: per attended sequence: (first column, length, target column)
        self.sequences: list[tuple[int, int, int]] = []
        attended, start = set(), spec.n_sparse
        for index, field in enumerate(spec.lists):
            if field.kind == "sequence" and field.shares in spec.sparse_names:
                self.sequences.append((start, field.length, spec.sparse_names.index(field.shares)))
                attended.add(spec.n_sparse + index)
            start += field.length
        if not self.sequences:
            raise ValueError(
                f"{model} needs a sequence field that shares a target field's table (vocab_of); this spec has none"
            )
        others = [j for j in range(self.embedding.categorical_fields) if j not in attended]
        self.num_others = len(others)
        self.register_buffer("others", torch.tensor(others, dtype=torch.int64), persistent=False)

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor):
        embedded = self.embedding.sparse(sparse)  # [B, sparse_width, D]
        others = pool_list_fields(embedded, sparse, self.spec, dense).index_select(1, self.others)
        sequences = [
            (embedded[:, start:start + length], (sparse[:, start:start + length] != MISSING_ID).sum(dim=1),
             embedded[:, target])
            for start, length, target in self.sequences
        ]
        return others, sequences


def numeric(dense: torch.Tensor, spec: FeatureSpec) -> torch.Tensor:
    """The numeric columns ``[B, n_dense]`` of a dense matrix ``[B, dense_width]`` (the rest are
    list weights, which only the list fields' pooling reads)."""
    return dense if spec.dense_width == spec.n_dense else dense[:, : spec.n_dense]


def deep_input(embeddings: torch.Tensor, dense: torch.Tensor, n_dense: int) -> torch.Tensor:
    """DNN input ``[B, F*k (+ n_dense)]``: flattened field embeddings, followed by the raw
    numeric values (the first ``n_dense`` columns of ``dense``; none when 0), the Wide&Deep /
    DCN convention for numeric features."""
    flat = embeddings.flatten(1)
    return torch.cat([flat, dense[:, :n_dense]], dim=1) if n_dense else flat
