"""``ctrlab compare``: several models, one prepared split, the same training budget.

With a config file (``-c base.yaml``) every model gets the file's data, features and train
sections; the model section is the base model's params for that model, and for any other model
its ready params (the ready config, ctrlab/config/presets/<model>.yaml) with the base params it takes laid over them (shared
settings such as embedding_dim stay equal). With ``--data STORE`` alone every model starts from
its own ready config. ``--set`` overrides apply to every model (a model parameter only to the
models that take it: the plan's notes and experiment.json's "overrides" say per model what was
applied; a model parameter that no listed model takes is an error).
"""

from __future__ import annotations

import copy
from pathlib import Path

from ..config import ConfigError, Overrides, base_config_for, get_dotted, read_config_file, set_dotted
from ..models import flat_models, get_model_class
from .core import (
    Plan,
    Point,
    check_params_used,
    config_for_model,
    finish_plan,
    override_record,
    parse_sets,
    pin_store,
    store_label,
)

#: train settings that make up the budget of a run; a comparison notes where they differ
BUDGET_KEYS = ("train.epochs", "train.batch_size", "train.early_stopping_patience", "train.optimizer", "train.lr")


def parse_models(text: str | list[str]) -> list[str]:
    """``"deepfm,dcn_v2"`` or ``"all"`` -> registered model names (unknown names are errors).
    ``all`` is every model that takes single-valued fields; the sequence models (din, dien, bst),
    which need a history field, are named explicitly (``all,din``)."""
    items = text if isinstance(text, list) else [text]
    names: list[str] = []
    for item in items:
        for name in str(item).split(","):
            name = name.strip()
            if not name:
                continue
            if name == "all":
                names += flat_models()
                continue
            get_model_class(name)  # ValueError with the registered names
            names.append(name)
    names = list(dict.fromkeys(names))
    if not names:
        raise ConfigError("--models: give model names separated by commas (see `ctrlab models`), or all")
    return names


def plan_compare(exp_dir: str | Path, models: str | list[str], *, config_path: str | None = None,
                 store: str | None = None, seeds: int = 1, overrides: Overrides | None = None,
                 metric: str = "test_auc", command: list[str] | None = None) -> Plan:
    """The points of a comparison (one per model), checked, nothing trained yet."""
    if config_path is None and store is None:
        raise ConfigError("what data? give -c CONFIG (a config with data.store or data.train) or --data STORE")
    exp_dir = Path(exp_dir)
    names = parse_models(models)
    sets = parse_sets(overrides)
    if any(key == "model.name" for key, _ in sets):
        raise ConfigError("--set model.name: the models of a comparison come from --models")
    check_params_used(sets, names)
    file_base = read_config_file(config_path) if config_path else None
    if store is not None and not (Path(store) / "meta.json").is_file():
        raise FileNotFoundError(f"{store}: not a ctrlab store (no meta.json); run `ctrlab prepare` first")
    notes: list[str] = []
    points = []
    for name in names:
        base = copy.deepcopy(file_base) if file_base is not None else base_config_for(name)
        if store is not None:
            set_dotted(base, "data.store", store)
        data = config_for_model(base, name, sets, notes)
        pinned = pin_store(data, exp_dir)
        points.append(Point(name=name, slug=name, settings={"model.name": name}, config=data))
    budgets = {key: {p.name: get_dotted(p.config, key) for p in points} for key in BUDGET_KEYS}
    for key, per_model in budgets.items():
        if len({repr(v) for v in per_model.values()}) > 1:
            notes.append(f"{key} differs between the models' ready configs "
                         f"({', '.join(f'{m}: {v}' for m, v in per_model.items())}); --set {key}=... makes it equal")
    overrides = override_record(sets, names, notes)
    plan = Plan(kind="compare", points=points, seeds=seeds, metric=metric, store=pinned,
                title=f"compare {', '.join(names)} on {store_label(pinned)}", notes=notes, command=command or [],
                overrides=overrides)
    return finish_plan(plan)

