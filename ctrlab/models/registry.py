"""Model registry: ``@register("name")``, ``build_model``, and descriptions for the CLI.

A model is an ``nn.Module`` whose constructor is ``Model(spec, *, hyper=default, ...)``:
the :class:`~ctrlab.fields.FeatureSpec` first, then keyword-only hyperparameters, each
with a default (no ``*args``/``**kwargs``). :func:`register` enforces that shape, so the
constructor signature *is* the list of valid hyperparameters and :func:`build_model` can
check a config against it.

Model docstrings follow one layout, which :func:`describe_model` reads::

    One-line summary.

    Paper: Authors (year), "Title", venue.

    Dense features: how the numeric columns are used.

    Shapes: dense float32 [B, dense_width], sparse int64 [B, n_sparse] -> logits float32 [B].

    Hyperparameters:
        name: help text (names without an entry use COMMON_HYPERPARAMETER_HELP)

A model that needs a behaviour sequence in its spec (a ``ListField`` of kind ``sequence``
sharing a single-valued field's table: din, dien, bst) sets the class attribute
``needs_sequence = True`` and raises ``ValueError`` for a spec without one; the contract
tests give such models their specs plus one such field.
"""

from __future__ import annotations

import difflib
import inspect
import math
import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from torch import nn

from ctrlab.fields import FeatureSpec

ModelClass = TypeVar("ModelClass", bound=type[nn.Module])

_MODELS: dict[str, type[nn.Module]] = {}
_NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]*$")

#: Help text for hyperparameters shared by many models (a model's docstring can override).
COMMON_HYPERPARAMETER_HELP: dict[str, str] = {
    "embedding_dim": "size k of every field embedding",
    "hidden_units": "widths of the DNN hidden layers",
    "activation": "DNN activation: relu, tanh, sigmoid, gelu, leaky_relu, prelu, identity",
    "dropout": "dropout probability after each DNN hidden layer",
    "batch_norm": "BatchNorm after each DNN hidden Linear",
}


# --------------------------------------------------------------------------- registration


def register(name: str) -> Callable[[ModelClass], ModelClass]:
    """Class decorator adding a model to the registry under ``name`` (lowercase, ``[a-z0-9_]``)."""
    if not _NAME_PATTERN.match(name):
        raise ValueError(f"model name {name!r} must be lowercase letters, digits and underscores")

    def decorator(cls: ModelClass) -> ModelClass:
        if name in _MODELS and _MODELS[name] is not cls:
            raise ValueError(f"model name {name!r} is already registered by {_MODELS[name].__qualname__}")
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            raise TypeError(f"@register({name!r}) must decorate an nn.Module subclass, got {cls!r}")
        _check_constructor(name, cls)
        cls.model_name = name
        _MODELS[name] = cls
        return cls

    return decorator


def _check_constructor(name: str, cls: type) -> None:
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]  # drop self
    problems = []
    if not params or params[0].name != "spec" or params[0].kind not in (
        inspect.Parameter.POSITIONAL_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
    ):
        problems.append("the first parameter must be the positional 'spec'")
    for param in params[1:]:
        if param.kind is not inspect.Parameter.KEYWORD_ONLY:
            problems.append(f"'{param.name}' must be keyword-only (no *args/**kwargs; put hyperparameters after '*')")
        elif param.default is inspect.Parameter.empty:
            problems.append(f"hyperparameter '{param.name}' needs a default")
    if problems:
        raise TypeError(f"model {name!r} ({cls.__qualname__}) constructor breaks the contract: " + "; ".join(problems))


# --------------------------------------------------------------------------- lookup


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    return sorted(_MODELS)


def needs_sequence(name: str) -> bool:
    """Whether model ``name`` needs a behaviour sequence sharing a target field (din, dien, bst)."""
    return bool(getattr(get_model_class(name), "needs_sequence", False))


def multi_task(name: str) -> bool:
    """Whether model ``name`` predicts several labels at once (logits ``[B, num_tasks]``)."""
    return bool(getattr(get_model_class(name), "multi_task", False))


def single_task_models() -> list[str]:
    """The registered models with one logit per row."""
    return [name for name in list_models() if not multi_task(name)]


def flat_models() -> list[str]:
    """The single-task models that take single-valued fields alone (every one but the sequence models)."""
    return [name for name in single_task_models() if not needs_sequence(name)]


def _closest(word: str, choices: list[str]) -> str | None:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.5)
    return close[0] if close else None


def _suggest(word: str, choices: list[str]) -> str:
    close = _closest(word, choices)
    return f" Did you mean '{close}'?" if close else ""


def get_model_class(name: str) -> type[nn.Module]:
    """The class registered as ``name``; ``ValueError`` listing registered names otherwise."""
    try:
        return _MODELS[name]
    except KeyError:
        names = list_models()
        raise ValueError(
            f"Unknown model {name!r}.{_suggest(str(name), names)} Registered models: {', '.join(names)}"
        ) from None


def hyperparameter_defaults(name: str) -> dict[str, Any]:
    """``{hyperparameter: default}`` in constructor order."""
    params = list(inspect.signature(get_model_class(name).__init__).parameters.values())[2:]
    return {param.name: param.default for param in params}


# --------------------------------------------------------------------------- building


def _check_value(key: str, value: Any, default: Any) -> tuple[Any, str | None]:
    """Coerce ``value`` like ``default`` (lists -> tuples) or explain the mismatch."""
    if default is None:
        return value, None
    expected: str | None = None
    if isinstance(default, bool):
        expected = None if isinstance(value, bool) else "a boolean"
    elif isinstance(default, int):
        expected = None if isinstance(value, int) and not isinstance(value, bool) else "an integer"
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = float(value)
        else:
            expected = "a number"
    elif isinstance(default, str):
        expected = None if isinstance(value, str) else "a string"
    elif isinstance(default, tuple):
        if isinstance(value, (list, tuple)):
            value = tuple(value)
        else:
            expected = "a list"
    if expected is not None:
        return value, f"'{key}' must be {expected} (like its default {default!r}), got {value!r}"
    return value, _range_problem(key, value, default)


def _range_problem(key: str, value: Any, default: Any) -> str | None:
    """Sizes and counts are >= 1, dropout probabilities in [0, 1), other numbers finite and > 0."""
    if isinstance(default, bool):
        return None
    if isinstance(default, int):
        return None if value >= 1 else f"'{key}' must be >= 1, got {value!r}"
    if isinstance(default, float):
        if "dropout" in key:
            return None if 0.0 <= value < 1.0 else f"'{key}' must be in [0, 1), got {value!r}"
        return None if math.isfinite(value) and value > 0 else f"'{key}' must be > 0, got {value!r}"
    if isinstance(default, tuple) and default and all(isinstance(d, int) for d in default):
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value):
            return f"'{key}' must be a list of sizes >= 1, got {list(value)!r}"
    return None


def check_params(name: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``params`` checked against model ``name``'s constructor (names, types, ranges), as keyword
    arguments; ``ValueError`` naming every bad key otherwise. Needs no data: run it before any."""
    defaults = hyperparameter_defaults(name)
    params = dict(params or {})
    unknown = [key for key in params if key not in defaults]
    if unknown:
        valid = list(defaults)
        details = []
        for key in unknown:
            close = _closest(str(key), valid)
            details.append(f"'{key}' (did you mean '{close}'?)" if close else f"'{key}'")
        raise ValueError(
            f"Unknown hyperparameter(s) for model '{name}': {', '.join(details)}. "
            f"Valid hyperparameters: {', '.join(valid) if valid else '(none)'}"
        )
    kwargs: dict[str, Any] = {}
    problems = []
    for key, value in params.items():
        kwargs[key], problem = _check_value(key, value, defaults[key])
        if problem:
            problems.append(problem)
    if problems:
        raise ValueError(f"Bad hyperparameter value(s) for model '{name}': " + "; ".join(problems))
    return kwargs


def build_model(name: str, spec: FeatureSpec, params: Mapping[str, Any] | None = None) -> nn.Module:
    """Instantiate model ``name`` for ``spec`` with hyperparameters ``params``.

    Unknown keys raise ``ValueError`` naming each bad key, the nearest valid name, and all
    valid names; values whose type does not match the default's (bool/int/float/str/list)
    or out of range (:func:`check_params`) raise ``ValueError`` too. Lists are converted to
    tuples. Omitted keys use defaults.
    """
    cls = get_model_class(name)
    kwargs = check_params(name, params)
    try:
        return cls(spec, **kwargs)
    except ValueError as error:
        raise ValueError(f"model '{name}': {error}") from error


# --------------------------------------------------------------------------- descriptions


def _docstring_sections(doc: str) -> tuple[str, dict[str, str], dict[str, str]]:
    """Split a model docstring into (summary, {section: text}, {hyperparameter: help})."""
    lines = inspect.cleandoc(doc or "").splitlines()
    summary = lines[0].strip() if lines else ""
    sections: dict[str, str] = {}
    help_texts: dict[str, str] = {}
    current: str | None = None
    last_param: str | None = None
    for line in lines[1:]:
        header = re.match(r"^([A-Z][A-Za-z ]+):\s*(.*)$", line)
        if header and not line.startswith(" "):
            current = header.group(1).lower()
            sections[current] = header.group(2).strip()
            last_param = None
            continue
        if current is None:
            continue
        if current == "hyperparameters":
            item = re.match(r"^\s+([a-z_][a-z0-9_]*):\s*(.*)$", line)
            if item:
                last_param = item.group(1)
                help_texts[last_param] = item.group(2).strip()
            elif line.strip() and last_param:
                help_texts[last_param] += " " + line.strip()
        elif line.strip():
            sections[current] = (sections[current] + " " + line.strip()).strip()
        else:
            current = None
    return summary, sections, help_texts


def describe_model(name: str) -> dict[str, Any]:
    """What ``ctrlab models NAME`` shows.

    Returns ``{"name", "class", "summary", "paper", "dense_features",
    "hyperparameters": {name: {"default": value, "help": text}}}``.
    """
    cls = get_model_class(name)
    summary, sections, help_texts = _docstring_sections(cls.__doc__ or "")
    return {
        "name": name,
        "class": f"{cls.__module__}.{cls.__qualname__}",
        "summary": summary,
        "paper": sections.get("paper", ""),
        "dense_features": sections.get("dense features", ""),
        "hyperparameters": {
            key: {"default": default, "help": help_texts.get(key, COMMON_HYPERPARAMETER_HELP.get(key, ""))}
            for key, default in hyperparameter_defaults(name).items()
        },
    }


def model_inputs(name: str) -> str:
    """What a model needs beyond single-valued fields and one label ('' for most)."""
    return "several labels" if multi_task(name) else "behaviour sequence" if needs_sequence(name) else ""


def format_model_table() -> str:
    """One line per registered model: name and summary, and what it needs (for ``ctrlab models``)."""
    rows = [(name, describe_model(name)["summary"] + (f" [{model_inputs(name)}]" if model_inputs(name) else ""))
            for name in list_models()]
    width = max([len("MODEL")] + [len(name) for name, _ in rows])
    lines = [f"{'MODEL'.ljust(width)}  SUMMARY"]
    lines += [f"{name.ljust(width)}  {summary}" for name, summary in rows]
    return "\n".join(lines)


def format_model_detail(name: str) -> str:
    """Summary, paper, dense-feature handling and hyperparameters of one model."""
    info = describe_model(name)
    lines = [f"{info['name']}: {info['summary']}", f"  class: {info['class']}"]
    if info["paper"]:
        lines.append(f"  paper: {info['paper']}")
    if info["dense_features"]:
        lines.append(f"  dense features: {info['dense_features']}")
    hypers = info["hyperparameters"]
    lines.append("  hyperparameters:" if hypers else "  hyperparameters: (none)")
    width = max([len(key) + len(repr(h["default"])) + 3 for key, h in hypers.items()] + [0])
    for key, hyper in hypers.items():
        left = f"{key} = {hyper['default']!r}"
        lines.append(f"    {left.ljust(width)}  {hyper['help']}".rstrip())
    return "\n".join(lines)
