"""What several command families share: flags and ``--set`` texts as one override mapping, and a
config section built from flags with the section's own checks.

Flags are typed by argparse and become ``{dotted key: value}`` entries; they are never turned
into YAML text and parsed back.
"""

from __future__ import annotations

import argparse
from typing import Any, Mapping

from ..config import Overrides, convert_setting, override_items


def merge_overrides(*layers: Overrides) -> dict[str, Any]:
    """Layers of overrides (``--set`` texts, or ``{dotted key: value}`` flag mappings), later layers
    winning, as one mapping that lays the same values in the same order as applying the layers one
    after another. A key set again moves to the end, so an earlier ``--set train={...}`` cannot
    undo a later ``train.lr``. In a mapping, ``None`` means the flag was not given: left out.

    ``merge_overrides(args.set, {"train.epochs": args.epochs})``: the flag beats ``--set``."""
    merged: dict[str, Any] = {}
    for layer in layers:
        if isinstance(layer, Mapping):
            layer = {key: value for key, value in layer.items() if value is not None}
        for key, value in override_items(layer):
            merged.pop(key, None)
            merged[key] = value
    return merged


def section_from_flags(cls: type, args: argparse.Namespace, keys: list[str]) -> Any:
    """Config section ``cls`` from the flags ``--key-name`` (argparse attribute ``key_name``) of
    ``keys``; a flag not given keeps the section's default. Each value goes through the section's
    one check (type, choices, range), and an error names the flag: ``--workers: 0 is out of range``."""
    values = {}
    for key in keys:
        value = getattr(args, key)
        if value is not None:
            values[key] = convert_setting(cls, key, value, "--" + key.replace("_", "-"))
    return cls(**values)
