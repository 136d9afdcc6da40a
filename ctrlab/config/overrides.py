"""The one implementation of ``--set a.b=c`` and dotted keys, used by train, eval, prepare, the
experiments (compare, sweep, tune) and serve.

An override is either text (``train.lr=1e-4``: the value is parsed as YAML, see
:func:`parse_value`) or an already typed mapping ``{"train.lr": 1e-4}`` (what command-line flags
become). Either way it is laid over a plain config mapping before the typed sections check it.
"""

from __future__ import annotations

import copy
import re
from typing import Any, Iterable, Mapping

import yaml

from .sections import ConfigError

Overrides = Iterable[str] | Mapping[str, Any]


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=c`` -> (['a', 'b'], yaml-parsed c)."""
    if "=" not in text:
        raise ConfigError(f"--set expects KEY=VALUE (e.g. data.seed=7), got {text!r}")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"--set: empty key in {text!r}")
    try:
        value = parse_value(raw) if raw.strip() else ""
    except ConfigError as exc:
        raise ConfigError(f"--set {key}: {exc}") from None
    return parts, value


_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
_BASE60 = re.compile(r"[-+]?\d+(:\d+)+")  # YAML 1.1 reads 3:1 as 181; a range like eval.epochs means text


def parse_value(raw: str) -> Any:
    """One override value (``--set``, sweep grids) as YAML, except that numbers YAML 1.1 leaves as
    strings (``1e-3``) become floats and ``3:1`` stays the text it looks like."""
    if _BASE60.fullmatch(raw.strip()):
        return raw.strip()
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"cannot parse value {raw!r}: {exc}") from None
    if isinstance(value, str) and _NUMBER.fullmatch(raw.strip()):  # a quoted '2' stays text
        return float(value)
    return value


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """``data[a][b] = value`` for ``key == 'a.b'``, creating sections on the way. The config gets its
    own copy of ``value``: configs built from one override (a sweep's points) share no lists."""
    parts = split_key(key)
    node = data
    for part in parts[:-1]:
        if node.get(part) is None:
            node[part] = {}
        if not isinstance(node[part], dict):
            raise ConfigError(f"--set {key}: {part!r} is not a section")
        node = node[part]
    node[parts[-1]] = copy.deepcopy(value)


def get_dotted(data: Mapping[str, Any], key: str, default: Any = None) -> Any:
    """``data[a][b]`` for ``key == 'a.b'`` (``default`` where a part is missing)."""
    node: Any = data
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


def split_key(key: str) -> list[str]:
    """``'a.b'`` -> ``['a', 'b']`` (empty parts dropped); ConfigError for an empty key."""
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"--set: empty key {key!r}")
    return parts


def override_items(overrides: Overrides | None) -> list[tuple[str, Any]]:
    """``overrides`` as ``[(dotted key, value)]`` in their order: texts parsed (:func:`parse_override`),
    a mapping's values as they are. What every caller lays over a config, or checks first (the
    experiments refuse keys a point may not vary)."""
    if isinstance(overrides, Mapping):
        return [(".".join(split_key(key)), value) for key, value in overrides.items()]
    items = []
    for text in overrides or []:
        parts, value = parse_override(text)
        items.append((".".join(parts), value))
    return items


def apply_overrides(data: dict[str, Any], overrides: Overrides | None) -> dict[str, Any]:
    """Lay ``overrides`` (``KEY=VALUE`` texts, or a ``{dotted key: value}`` mapping) over ``data``."""
    for key, value in override_items(overrides):
        set_dotted(data, key, value)
    return data
