"""Config files in, typed configs out: the one loading path.

A file is read once by :func:`read_config_file`; a PaddleRec-style file (``runner:`` /
``hyper_parameters:``) is mapped to native sections right there, so every caller (train, eval,
the experiments) sees the same native data and the same notes. :func:`load_run_config` is what
``ctrlab train`` / ``eval`` / ``compare`` start from: a file, or a model's ready config, with
overrides laid on top.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

import yaml

from ..fileio import write_bytes_atomic
from .overrides import Overrides, apply_overrides
from .paddlerec import is_paddlerec_config, paddlerec_to_native
from .presets import base_config_for
from .sections import Config, ConfigError, from_dict, to_dict


def _note_to_stderr(note: str) -> None:
    print(f"note: {note}", file=sys.stderr)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML file's top-level mapping, as written (no mapping, no checks)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found")
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return data


def read_config_file(path: str | Path, note: Callable[[str], None] = _note_to_stderr) -> dict[str, Any]:
    """A config file as native data: a PaddleRec config is mapped here (the one place), each key
    that does not apply reported through ``note``."""
    raw = load_yaml(path)
    if is_paddlerec_config(raw):
        raw, notes = paddlerec_to_native(raw, Path(path).parent)
        for text in notes:
            note(text)
    return raw


def load_config(path: str | Path | None = None, overrides: Overrides | None = None,
                base: dict[str, Any] | None = None, cls: type = Config,
                note: Callable[[str], None] = _note_to_stderr) -> Any:
    """Load a config file (native or PaddleRec; or start from ``base``, whose sections the file's
    replace), lay ``overrides`` over it, validate every value."""
    data: dict[str, Any] = dict(base or {})
    if path is not None:
        data.update(read_config_file(path, note))
    data = apply_overrides(data, overrides)
    return from_dict(cls, data)


def load_run_config(path: str | Path | None = None, model: str | None = None,
                    overrides: Overrides | None = None,
                    note: Callable[[str], None] = _note_to_stderr) -> Config:
    """The config of a run: the file when given, else ``model``'s ready config; ``model`` (when
    given) names the model either way; ``overrides`` come last."""
    data: dict[str, Any] = read_config_file(path, note) if path is not None else {}
    if model and path is None:
        data = base_config_for(model)
    data = apply_overrides(data, overrides)
    if model:
        data = apply_overrides(data, {"model.name": model})
    return from_dict(Config, data)


def dump_config(cfg: Any, path: str | Path) -> None:
    """Write a config as YAML, whole or not at all."""
    write_bytes_atomic(path, yaml.safe_dump(to_dict(cfg), sort_keys=False).encode("utf-8"))
