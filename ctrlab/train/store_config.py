"""A run config's ``data`` and ``features`` sections as the options of ``prepare``.

Used wherever a config prepares a store: ``ctrlab prepare``, a run that prepares its own store
(:func:`ctrlab.train.run.ensure_store`), the demo. It lives here, above both :mod:`ctrlab.config`
and :mod:`ctrlab.data`, because it joins the two; it imports no torch, so ``ctrlab prepare``
starts as fast as before.
"""

from __future__ import annotations

from ..config import Config, ConfigError, DataConfig, column_overrides, convert_setting
from ..data.formats import file_schema
from ..data.prepare import PrepareOptions
from ..data.readers import resolve_inputs


def prepare_options(cfg: Config) -> PrepareOptions:
    """``cfg.data`` + ``cfg.features`` -> PrepareOptions, per-column overrides typed against the
    columns of the first training file (whose format is detected here when ``data.format`` is auto).

    Raises ConfigError when there is no training data or the split is not three valid ratios
    (checked again here because a config object may have been changed after loading)."""
    if not cfg.data.train:
        raise ConfigError("no training data: give INPUT files or set data.train in the config")
    convert_setting(DataConfig, "split", cfg.data.split, "data.split")
    first = resolve_inputs(cfg.data.train)[0]
    _, schema = file_schema(first, cfg.data.format, cfg.data.schema)
    return PrepareOptions(
        train=cfg.data.train, valid=cfg.data.valid, test=cfg.data.test, format=cfg.data.format,
        schema=cfg.data.schema, split=tuple(cfg.data.split), seed=cfg.data.seed, bad_lines=cfg.data.bad_lines,
        vocab_memory_mib=cfg.data.vocab_memory_mib,
        categorical=cfg.features.categorical, numeric=cfg.features.numeric,
        columns=column_overrides(cfg.features, list(schema.dense), list(schema.sparse)),
    )
