"""Ready configs: ``presets/<model>.yaml`` (package data, so an installed wheel has them) holds the
model and training settings that worked best here (see the README's quality tables); it is the
base of ``ctrlab train --data STORE --model NAME`` and of each model in ``ctrlab compare``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

PRESET_DIR = Path(__file__).resolve().parent / "presets"


def preset_path(model: str) -> Path:
    return PRESET_DIR / f"{model}.yaml"


def preset_names() -> list[str]:
    """Models with a ready config."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def base_config_for(model: str) -> dict[str, Any]:
    """The ready config of a model, or just its name."""
    path = preset_path(model)
    if path.is_file():
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh) or {}
        data.setdefault("model", {})["name"] = model
        return data
    return {"model": {"name": model}}
