"""The served model, swapped as one reference.

Every request takes ``ServerState.current`` once and uses only that :class:`LoadedModel`, so a
reload (which loads the new bundle fully, then assigns one reference) never fails or mixes a
request: in-flight requests finish on the old model.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from typing import Any

from ..inference import Predictor


@dataclass(frozen=True)
class LoadedModel:
    predictor: Predictor
    version: str  # see model_version
    loaded_at: float  # Unix time


def model_version(manifest: dict[str, Any], backend: str) -> str:
    """``NAME@CREATED#SHA12``: the model name, the export time and the sha256 (first 12 hex digits)
    of the model file the backend runs."""
    name = manifest.get("model", {}).get("name", "model")
    created = manifest.get("created", "unknown")
    model_file = manifest.get("onnx", {}).get("file", "model.onnx") if backend == "onnx" else "model.pt"
    sha = (manifest.get("files", {}).get(model_file) or {}).get("sha256", "")[:12]
    return f"{name}@{created}#{sha}"


def load_model(bundle_dir: str | os.PathLike, backend: str, threads: int | None) -> LoadedModel:
    predictor = Predictor(bundle_dir, backend=backend, threads=threads)
    return LoadedModel(predictor, model_version(predictor.manifest, backend), time.time())


class ServerState:
    """The current model and what a reload needs to load the next one the same way."""

    def __init__(self, current: LoadedModel, backend: str, threads: int | None):
        self.current = current
        self.backend = backend
        self.threads = threads
        self.reload_lock = asyncio.Lock()
