"""Growing a trained model's embedding tables to a grown vocabulary (continual training).

A partitioned store's vocabularies only grow at the end of each field's range (existing ids keep
their meaning) or reuse ids retired under eviction (:mod:`ctrlab.data.append`). A model trained at
vocabulary version V continues at version W by:

* every :class:`~ctrlab.nn.embedding.FieldEmbedding` table (the fused k-dim tables, FirstOrder's
  1-dim table, list fields' tables, DMR's output table, FFM's field-aware table...): each table's
  old rows ``[old_offset, old_offset + old_size)`` are copied to ``[new_offset, new_offset +
  old_size)`` (a table grows at its end, so an old id keeps its row); rows of new ids keep the
  fresh model's initialisation (what its constructor drew: ``EMBEDDING_INIT_STD`` normal); rows
  of ids in ``reset_ids[vocabulary]`` (``Store.id_changes(V, W)``: retired or reused) are reset to
  the fresh model's rows too;
* every other parameter and buffer (dense layers, dense-field embeddings, position tables...)
  is copied as it is (its shape must not have changed);
* the row-sparse optimizer state of the tables (Adam moments, Adagrad sums, momentum buffers:
  :class:`~ctrlab.train.optim.RowSparseOptimizer`) grows the same way, new and reset rows at
  their initial value (zeros; Adagrad: ``initial_accumulator_value``).

The old layout is the same model's layout for ``old_spec``: a table that reads the spec's tables
in :func:`~ctrlab.nn.embedding.table_layout` order (the usual case) is matched table by table;
another one (DMR's output table: one table per attended sequence's target) is matched by its
(new size) to the spec tables of that size, refused when that is ambiguous.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..fields import FeatureSpec
from ..nn.embedding import FieldEmbedding, table_layout


class GrowthError(ValueError):
    """The old weights do not fit the old spec, or a table cannot be matched."""


@dataclass(frozen=True)
class TableGrowth:
    """One table of a fused weight: where its old rows are and go, and which of them are reset."""

    vocabulary: str
    old_offset: int
    new_offset: int
    old_size: int
    new_size: int
    reset: np.ndarray  # ids (0-based in the table) whose rows start fresh


def _module_tables(module: FieldEmbedding) -> tuple[list[tuple[int, int]], list[int]]:
    """(each table's (offset, size) in weight order, per column the table index it reads)."""
    offsets = module.offsets.tolist()
    sizes = module.vocab_sizes.tolist()
    by_offset = dict(sorted({o: s for o, s in zip(offsets, sizes)}.items()))
    tables = list(by_offset.items())
    index = {o: i for i, (o, _) in enumerate(tables)}
    return tables, [index[o] for o in offsets]


def _spec_tables(spec: FeatureSpec, column_vocabularies: list[str] | None) -> tuple[list[int], list[int], list[str]]:
    """(table sizes, per matrix column its table, per table its vocabulary's name)."""
    sizes, columns, names = table_layout(spec)
    vocab_names = []
    for t in range(len(sizes)):
        first = columns.index(t)
        vocab_names.append(column_vocabularies[first] if column_vocabularies else names[first])
    return sizes, columns, vocab_names


def growth_plan(model: torch.nn.Module, old_spec: FeatureSpec, new_spec: FeatureSpec,
                reset_ids: dict[str, np.ndarray] | None = None, *,
                column_vocabularies: list[str] | None = None) -> dict[str, list[TableGrowth]]:
    """Per FieldEmbedding weight of ``model`` (built for ``new_spec``; by its state_dict key), the
    growth of each of its tables from ``old_spec``. ``column_vocabularies``: the vocabulary each
    sparse matrix column reads (``store.meta["column_vocabularies"]``, the names ``reset_ids``
    uses); default: the table's field name."""
    reset_ids = reset_ids or {}
    new_sizes, new_columns, vocabs = _spec_tables(new_spec, column_vocabularies)
    old_sizes, old_columns, _ = _spec_tables(old_spec, column_vocabularies)
    if len(old_sizes) != len(new_sizes) or old_columns != new_columns:
        raise GrowthError(f"the spec's tables changed (old {len(old_sizes)} tables, new {len(new_sizes)}): not a "
                          "grown vocabulary of the same pipeline")
    for t, (o, n) in enumerate(zip(old_sizes, new_sizes)):
        if n < o:
            raise GrowthError(f"table of {vocabs[t]!r} shrank from {o} to {n} ids: not a grown vocabulary")
    plan: dict[str, list[TableGrowth]] = {}
    for path, module in model.named_modules():
        if not isinstance(module, FieldEmbedding):
            continue
        tables, columns = _module_tables(module)
        if columns == new_columns and [s for _, s in tables] == list(new_sizes):
            match = list(range(len(tables)))  # the spec's own layout
        else:
            match = []
            for _, size in tables:
                candidates = [t for t, n in enumerate(new_sizes) if n == size]
                kinds = {(old_sizes[t], tuple(np.asarray(reset_ids.get(vocabs[t], [])).tolist())) for t in candidates}
                if not candidates or len(kinds) > 1:
                    raise GrowthError(f"{path or 'model'}: a table of {size} ids matches "
                                      f"{'no' if not candidates else 'several'} vocabularies of the spec: cannot grow it")
                match.append(candidates[0])
        growths, old_offset = [], 0
        for (new_offset, new_size), t in zip(tables, match):
            old_size = old_sizes[t]
            reset = np.asarray(reset_ids.get(vocabs[t], np.zeros(0, np.int64)), dtype=np.int64)
            reset = reset[(reset >= 0) & (reset < old_size)]
            growths.append(TableGrowth(vocabs[t], old_offset, new_offset, old_size, new_size, reset))
            old_offset += old_size
        plan[f"{path}.weight" if path else "weight"] = growths
    return plan


def grow_rows(old: torch.Tensor, fresh: torch.Tensor, growths: list[TableGrowth]) -> torch.Tensor:
    """``fresh`` (the new layout, initialised) with each table's old rows of ``old`` copied into
    place and its reset rows left fresh (a new tensor; rows are dim 0)."""
    expected = sum(g.old_size for g in growths)
    if old.shape[0] != expected or old.shape[1:] != fresh.shape[1:]:
        raise GrowthError(f"old table of shape {tuple(old.shape)} does not fit the old spec ({expected} rows x "
                          f"{tuple(fresh.shape[1:])}): the checkpoint was not trained on this store's lineage")
    out = fresh.detach().clone()
    old = old.to(device=out.device, dtype=out.dtype)
    for g in growths:
        out[g.new_offset: g.new_offset + g.old_size] = old[g.old_offset: g.old_offset + g.old_size]
        if len(g.reset):
            rows = torch.as_tensor(g.reset + g.new_offset, device=out.device)
            out[rows] = fresh.detach()[rows].to(out.dtype)
    return out


def grow_state_dict(model: torch.nn.Module, old_state: dict[str, torch.Tensor], old_spec: FeatureSpec,
                    new_spec: FeatureSpec, reset_ids: dict[str, np.ndarray] | None = None, *,
                    column_vocabularies: list[str] | None = None) -> dict[str, torch.Tensor]:
    """A state_dict for ``model`` (freshly built for ``new_spec``) from ``old_state`` (the same
    model trained at ``old_spec``): see the module docstring. Loads with ``load_state_dict``."""
    plan = growth_plan(model, old_spec, new_spec, reset_ids, column_vocabularies=column_vocabularies)
    fresh = model.state_dict()
    missing = sorted(set(fresh) - set(old_state))
    extra = sorted(set(old_state) - set(fresh))
    if missing or extra:
        raise GrowthError(f"the checkpoint is not this model's: missing {missing[:5]}, unexpected {extra[:5]}")
    out = {}
    for key, value in fresh.items():
        if key in plan:
            out[key] = grow_rows(old_state[key], value, plan[key])
        else:
            old = old_state[key]
            if old.shape != value.shape:
                raise GrowthError(f"{key}: shape {tuple(old.shape)} in the checkpoint, {tuple(value.shape)} in the "
                                  "model: only embedding tables may grow")
            out[key] = old.detach().clone().to(device=value.device)
    return out


def embedding_weight_keys(model: torch.nn.Module) -> list[str]:
    """The state_dict keys of the FieldEmbedding weights, in ``model.modules()`` order (the order
    of :func:`ctrlab.train.trainer.embedding_parameters`, i.e. of the row-sparse optimizer's state)."""
    return [f"{path}.weight" if path else "weight" for path, m in model.named_modules()
            if isinstance(m, FieldEmbedding)]


def grow_sparse_optimizer_state(model: torch.nn.Module, old_opt_state: dict, fresh_opt_state: dict,
                                old_spec: FeatureSpec, new_spec: FeatureSpec,
                                reset_ids: dict[str, np.ndarray] | None = None, *,
                                column_vocabularies: list[str] | None = None) -> dict:
    """A :class:`~ctrlab.train.optim.RowSparseOptimizer` state_dict for ``model``'s tables from
    the old one's: every per-row state tensor grown like the rows (new and reset rows take
    ``fresh_opt_state``'s values, i.e. the optimizer's initial ones); kind and step count carry."""
    plan = growth_plan(model, old_spec, new_spec, reset_ids, column_vocabularies=column_vocabularies)
    keys = embedding_weight_keys(model)
    if old_opt_state["kind"] != fresh_opt_state["kind"]:
        raise GrowthError(f"the parent's embedding optimizer is {old_opt_state['kind']}, this run's "
                          f"{fresh_opt_state['kind']}")
    if len(old_opt_state["state"]) != len(keys) or len(fresh_opt_state["state"]) != len(keys):
        raise GrowthError("the optimizer state does not have one entry per embedding table")
    state = []
    for key, old, fresh in zip(keys, old_opt_state["state"], fresh_opt_state["state"]):
        if set(old) != set(fresh):
            raise GrowthError(f"{key}: optimizer state {sorted(old)} vs {sorted(fresh)} (other optimizer settings)")
        state.append({name: grow_rows(old[name], fresh[name], plan[key]) for name in fresh})
    return {**fresh_opt_state, "step_count": old_opt_state["step_count"], "state": state}
