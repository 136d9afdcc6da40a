"""``ctrlab sweep``: train one base config at many settings (a grid, or one axis at a time).

An axis is ``KEY=V1,V2,...`` with YAML values; commas inside brackets, braces or quotes do not
split (``model.params.hidden_units=[400,400],[512,256]`` has two values). ``1e-3`` is a number.
Every point reads the same prepared store, so axes on ``data.*`` / ``features.*`` are refused.
"""

from __future__ import annotations

import copy
import itertools
from pathlib import Path
from typing import Any

from ..config import (ConfigError, Overrides, base_config_for, get_dotted, parse_value, read_config_file,
                      set_dotted, to_dict)
from ..models import hyperparameter_defaults
from .core import (
    SHARED_SECTIONS,
    Plan,
    Point,
    check_params_used,
    config_for_model,
    finish_plan,
    model_takes,
    override_record,
    parse_sets,
    pin_store,
    store_label,
    validate_config,
)
from .layout import slugify
from .results import format_value, same_value

MODES = ("grid", "one-at-a-time")
_OPEN, _CLOSE = "[{(", "]})"


def split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside [], {}, () or quotes: ``"[1,2],[3,4]" -> ["[1,2]", "[3,4]"]``."""
    parts, depth, quote, current = [], [], None, []
    for ch in text:
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch in _OPEN:
            depth.append(_CLOSE[_OPEN.index(ch)])
        elif ch in _CLOSE:
            if not depth or depth.pop() != ch:
                raise ConfigError(f"unbalanced {ch!r} in {text!r}")
        elif ch == "," and not depth:
            parts.append("".join(current))
            current = []
            continue
        current.append(ch)
    if quote or depth:
        raise ConfigError(f"unclosed {quote or ''.join(reversed(depth))!r} in {text!r}")
    parts.append("".join(current))
    return [p.strip() for p in parts]


def parse_axis(text: str) -> tuple[str, list[Any]]:
    """``"train.lr=1e-2,1e-3"`` -> ("train.lr", [0.01, 0.001])."""
    if "=" not in text:
        raise ConfigError(f"--grid expects KEY=V1,V2,... (e.g. train.lr=1e-2,1e-3), got {text!r}")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--grid: bad key {key!r} in {text!r}")
    if key.split(".")[0] in SHARED_SECTIONS:
        raise ConfigError(f"--grid {key}: every point of a sweep reads the same prepared store, so data, features "
                          "and run_dir cannot vary; prepare one store per setting and compare those")
    if key in ("train.seed",):
        raise ConfigError("--grid train.seed: use --seeds N to repeat every point with N seeds")
    try:
        texts = split_top_level(raw)
    except ConfigError as exc:
        raise ConfigError(f"--grid {key}: {exc}") from None
    if any(not t for t in texts):
        raise ConfigError(f"--grid {key}: empty value in {raw!r}")
    values = [parse_value(t) for t in texts]
    seen: list[Any] = []
    for value in values:
        if any(same_value(value, other) for other in seen):
            raise ConfigError(f"--grid {key}: the value {format_value(value)} is given twice")
        seen.append(value)
    return key, values


def parse_grid(items: list[str]) -> dict[str, list[Any]]:
    axes: dict[str, list[Any]] = {}
    for text in items:
        key, values = parse_axis(text)
        if key in axes:
            raise ConfigError(f"--grid {key} is given twice; put all its values in one --grid")
        axes[key] = values
    if not axes:
        raise ConfigError("a sweep needs at least one --grid KEY=V1,V2,...")
    return axes


def expand_grid(axes: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination, the first axis varying slowest."""
    keys = list(axes)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(axes[k] for k in keys))]


def expand_one_at_a_time(axes: dict[str, list[Any]], base_values: dict[str, Any]) -> list[dict[str, Any]]:
    """The base config ({}), then each axis value alone; a value equal to the base's is the base point."""
    points: list[dict[str, Any]] = [{}]
    for key, values in axes.items():
        for value in values:
            if same_value(value, base_values.get(key)):
                continue
            points.append({key: value})
    return points


def short_keys(keys: list[str]) -> dict[str, str]:
    """``train.lr`` -> ``lr`` unless two axes end in the same name."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last)}


def point_name(settings: dict[str, Any], shorts: dict[str, str]) -> str:
    if not settings:
        return "base"
    return ", ".join(f"{shorts[k]}={format_value(v)}" for k, v in settings.items())


def resolved_value(cfg_data: dict[str, Any], key: str) -> Any:
    """The value a key has in a (validated) config, model defaults included."""
    if key.startswith("model.params."):
        name = key.split(".", 2)[2]
        params = get_dotted(cfg_data, "model.params") or {}
        if name in params:
            return params[name]
        default = hyperparameter_defaults(get_dotted(cfg_data, "model.name")).get(name)
        return list(default) if isinstance(default, tuple) else default
    return get_dotted(cfg_data, key)


def plan_sweep(exp_dir: str | Path, grid: list[str], *, config_path: str | None = None, store: str | None = None,
               model: str | None = None, mode: str = "grid", seeds: int = 1, overrides: Overrides | None = None,
               metric: str = "valid_auc", command: list[str] | None = None) -> Plan:
    """The points of a sweep, checked, nothing trained yet."""
    if mode not in MODES:
        raise ConfigError(f"--mode: {mode!r} is not one of {', '.join(MODES)}")
    exp_dir = Path(exp_dir)
    axes = parse_grid(grid)
    if config_path is not None:
        base = read_config_file(config_path)
    elif store is not None and model is not None:
        base = base_config_for(model)
    else:
        raise ConfigError("what to sweep? give -c CONFIG, or --data STORE with --model NAME")
    if store is not None:
        if not (Path(store) / "meta.json").is_file():
            raise FileNotFoundError(f"{store}: not a ctrlab store (no meta.json); run `ctrlab prepare` first")
        set_dotted(base, "data.store", store)
    sets = parse_sets(overrides)
    for key, value in sets:
        if key == "model.name":
            model = str(value)
    model = model or get_dotted(base, "model.name")
    if not model:
        raise ConfigError("which model? the config has no model.name; pass --model NAME")
    notes: list[str] = []
    base_data = config_for_model(base, model, sets, notes)
    pin_store(base_data, exp_dir)
    base_cfg = to_dict(validate_config(base_data, "the base config"))
    base_cfg.pop("run_dir", None)
    base_values = {key: resolved_value(base_cfg, key) for key in axes}

    settings_list = expand_grid(axes) if mode == "grid" else expand_one_at_a_time(axes, base_values)
    models = sorted({s.get("model.name", model) for s in settings_list})
    check_params_used(sets + [(k, v) for k, values in axes.items() for v in values], models, "--set/--grid")
    shorts = short_keys(list(axes))
    points = []
    overrides = override_record(sets, models, notes)
    for settings in settings_list:
        point_model = settings.get("model.name", model)
        left_out = [f"{k}={format_value(v)}" for k, v in settings.items() if not model_takes(point_model, k)]
        if left_out:
            notes.append(f"{point_model} does not take {', '.join(left_out)}: left out for it (those points "
                         f"train {point_model} without it)")
        data = config_for_model(base, point_model, sets + list(settings.items()), notes)
        pinned = pin_store(data, exp_dir)
        name = point_name(settings, shorts)
        points.append(Point(name=name, slug=slugify(name.replace(", ", "_")), settings=copy.deepcopy(settings),
                            config=data))
    if mode == "one-at-a-time":
        skipped = [f"{k}={format_value(v)}" for k, vs in axes.items() for v in vs if same_value(v, base_values[k])]
        if skipped:
            notes.append(f"{', '.join(skipped)}: the base config's value(s), trained once as the 'base' point")
    title = f"sweep ({mode}) of {model} on {store_label(pinned)}: {', '.join(axes)}"
    plan = Plan(kind="sweep", points=points, seeds=seeds, metric=metric, store=pinned, title=title, axes=axes,
                mode=mode, base_settings=base_values if mode == "one-at-a-time" else {}, base_config=base_cfg,
                notes=notes, command=command or [], overrides=overrides)
    return finish_plan(plan)

