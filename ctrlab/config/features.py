"""The ``features`` section as encoder options, both ways: per-column options for prepare, and the
section that re-creates a fitted pipeline (pipeline.json is the truth; a config only records it)."""

from __future__ import annotations

import collections
import dataclasses
from typing import Any

from ..features.encoders import BucketizedNumeric, HashBuckets, NumericTransform, Vocabulary
from ..features.pipeline import CategoricalOptions, NumericOptions
from .sections import ConfigError, FeaturesConfig, from_dict, to_dict


def column_overrides(features: FeaturesConfig, dense: list[str], sparse: list[str]) -> dict[str, Any]:
    """``features.columns`` as typed options: numeric columns take NumericOptions keys merged
    over ``features.numeric``, categorical ones CategoricalOptions keys over ``features.categorical``."""
    out: dict[str, Any] = {}
    for col, values in features.columns.items():
        if col in dense:
            base, cls, section = features.numeric, NumericOptions, "numeric"
        elif col in sparse:
            base, cls, section = features.categorical, CategoricalOptions, "categorical"
        else:
            raise ConfigError(f"features.columns.{col}: no such column; columns are {dense + sparse}")
        merged = {**to_dict(base), **(values or {})}
        try:
            out[col] = from_dict(cls, merged, f"features.columns.{col}")
        except ConfigError as exc:
            raise ConfigError(f"{exc} (a {section} column)") from None
    return out


def encoder_options(encoder: Any, base: CategoricalOptions | NumericOptions) -> CategoricalOptions | NumericOptions:
    """The options that build ``encoder`` (settings it does not use are taken from ``base``)."""
    if isinstance(encoder, Vocabulary):
        return dataclasses.replace(base, encoder="vocab", min_count=encoder.min_count, max_size=encoder.max_size)
    if isinstance(encoder, HashBuckets):
        return dataclasses.replace(base, encoder="hash", hash_buckets=encoder.buckets)
    if isinstance(encoder, BucketizedNumeric):
        return dataclasses.replace(base, transform="log_square_bucket", min_count=encoder.vocab.min_count)
    if isinstance(encoder, NumericTransform):
        return dataclasses.replace(base, transform=encoder.kind, fill_value=encoder.fill_value)
    raise TypeError(f"no options describe encoder {type(encoder).__name__}")


def fitted_features(pipeline: Any, declared: FeaturesConfig | None = None) -> FeaturesConfig:
    """The ``features`` section that re-creates a fitted pipeline's encoders (pipeline.json is
    the truth; a config only records it). The declared section is kept where it matches; the
    most common options of each kind become the section default, the rest per-column overrides."""
    declared = declared or FeaturesConfig()
    sections = {}
    columns: dict[str, dict[str, Any]] = {}
    for name, inputs in (("numeric", pipeline.dense_inputs), ("categorical", pipeline.sparse_inputs)):
        base = getattr(declared, name)
        options = {col: encoder_options(pipeline.encoders[col], base) for col in inputs}
        if options and base not in options.values():  # (options are unhashable: count them by value)
            counts = collections.Counter(repr(o) for o in options.values())
            base = max(options.values(), key=lambda o: counts[repr(o)])
        sections[name] = base
        base_values = to_dict(base)
        for col, opts in options.items():
            changed = {k: v for k, v in to_dict(opts).items() if v != base_values[k]}
            if changed:
                columns[col] = changed
    return FeaturesConfig(categorical=sections["categorical"], numeric=sections["numeric"], columns=columns)
