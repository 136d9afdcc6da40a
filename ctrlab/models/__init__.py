"""The model zoo.

Every module in this package (except ``registry`` and names starting with ``_``) is
imported on first import of ``ctrlab.models``, so its ``@register`` decorators run:
adding a model means adding one file here.
"""

from __future__ import annotations

import importlib
import pkgutil

from ctrlab.models.registry import (
    build_model,
    check_params,
    describe_model,
    flat_models,
    format_model_detail,
    format_model_table,
    get_model_class,
    hyperparameter_defaults,
    list_models,
    multi_task,
    needs_sequence,
    register,
    single_task_models,
)

__all__ = [
    "build_model",
    "check_params",
    "describe_model",
    "flat_models",
    "format_model_detail",
    "format_model_table",
    "get_model_class",
    "hyperparameter_defaults",
    "list_models",
    "multi_task",
    "needs_sequence",
    "register",
    "single_task_models",
]


def _import_model_modules() -> None:
    for module in pkgutil.iter_modules(__path__):
        if module.name == "registry" or module.name.startswith("_"):
            continue
        try:
            importlib.import_module(f"{__name__}.{module.name}")
        except Exception as error:
            raise ImportError(f"ctrlab.models: could not import model module '{module.name}.py': {error}") from error


_import_model_modules()
