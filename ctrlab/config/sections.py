"""The typed config sections of every stage (data, features, model, train, eval) and the one
check of a value: its type, its choices and its range. Unknown keys are errors with the nearest
valid key. Loading lives in :mod:`ctrlab.config.loading`, ``--set`` in :mod:`ctrlab.config.overrides`.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, get_args, get_origin, get_type_hints


from ..features.encoders import NumericTransform
from ..features.pipeline import CategoricalOptions, NumericOptions
from ..schema import FORMAT_NAMES, GenericSchemaConfig


class ConfigError(ValueError):
    """A config problem, naming the key path (``data.split``) and what was expected."""


@dataclass
class DataConfig:
    """Where the raw data is and how to read and split it."""

    train: list[str] = field(default_factory=list)  # files, globs or directories
    valid: list[str] = field(default_factory=list)
    test: list[str] = field(default_factory=list)
    format: str = "auto"  # auto | criteo | criteo_test | criteo_kaggle_csv | criteo_csv | slot | csv | tsv
    schema: GenericSchemaConfig | None = None  # for csv / tsv
    split: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])  # train:valid:test (BARS Criteo_x4)
    seed: int = 2024
    bad_lines: str = "error"  # error | skip
    # memory for counting the vocabularies in prepare: past it the counts spill to disk and are
    # merged exactly (the same vocabulary), so prepare's memory does not grow with distinct values
    vocab_memory_mib: int = 512
    store: str | None = None  # the encoded store (written by prepare, read by train)
    # a partitioned store (prepare --partition / --append): the partitions to train on, in order
    # (null: all but valid_partition / test_partition; continuing a run: those its parent did not train on)
    partitions: list[str] | None = None
    valid_partition: str | None = None  # a partitioned store: the partition validated on each epoch
    test_partition: str | None = None  # a partitioned store: the partition tested on at the end


@dataclass
class FeaturesConfig:
    """How raw columns become model inputs.

    The defaults are the one set ctrlab uses everywhere (library, ``ctrlab prepare``, a run that
    prepares its own store, the ready configs): they live in :class:`CategoricalOptions` and
    :class:`NumericOptions` themselves."""

    categorical: CategoricalOptions = field(default_factory=CategoricalOptions)
    numeric: NumericOptions = field(default_factory=NumericOptions)
    # per-column overrides: {I1: {transform: log_square_bucket}, C3: {min_count: 10}}
    columns: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class ModelConfig:
    """Which model and its hyperparameters (checked against the model's constructor)."""

    name: str = "deepfm"
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainConfig:
    """Training settings (the ``train`` config section)."""

    epochs: int = 1
    batch_size: int = 4096  # the GLOBAL batch: with N processes each takes batch_size / N rows per step
    optimizer: str = "adam"  # adam | adamw | sgd | adagrad | lbfgs (full batch, ctrlab.train.fullbatch)
    lr: float = 1e-3
    embedding_lr: float | None = None  # learning rate of the embedding tables (default: lr)
    momentum: float = 0.0  # sgd
    reg: float = 0.0  # L2 on the embedding rows each batch touches
    weight_decay: float = 0.0  # L2 on the other (dense) weights
    grad_clip: float | None = None  # max global norm of the dense weights' gradients (null: no clipping)
    # a model with an auxiliary loss (DIEN's next-behaviour loss) trains on loss + this * that loss
    # (0: off); the reported train loss stays the click loss, comparable across models
    auxiliary_loss_weight: float = 1.0
    monitor: str = "auc"  # validation metric for early stopping / LR reduction: auc | logloss
    # several labels (a multi-task store): the task whose valid metric is monitored, or "mean" (the
    # mean over the tasks)
    monitor_task: str = "mean"
    # train a SINGLE-task model on this task of a multi-task store (rows without its label are left
    # out of training and metrics); null: a multi-task model trains on every task
    task: str | None = None
    # multi-task loss = sum over tasks of weight * (the task's mean BCE over its labelled rows);
    # task name -> weight, default 1 each
    task_weights: dict[str, float] = field(default_factory=dict)
    # early stopping and LR reduction need a validation split; without one every epoch runs
    early_stopping_patience: int = 2  # stop after this many epochs without improvement (0: never stop early)
    min_epochs: int = 1  # early stopping cannot stop a run before this many epochs
    lr_decay_factor: float = 1.0  # multiply the learning rates by this on each epoch without improvement (1: off)
    seed: int = 2024
    device: str = "cpu"  # cpu | cuda | cuda:N
    threads: int | None = None  # torch threads (default: the available cores)
    log_every: int = 50  # steps between loss records
    eval_batch_size: int = 16384
    tensorboard: bool = False
    init_from: str | None = None  # warm start: a checkpoint or model.pt to load weights from
    # continual training (a partitioned store): the parent run directory to continue from, its tables
    # grown to the store's current vocabularies (ctrlab.train.grow); scores the new partitions with the
    # parent first (progressive validation)
    continue_from: str | None = None
    shuffle: bool = True
    dist_timeout_s: float = 300.0  # distributed runs: a collective waiting longer than this fails the run
    # optimizer lbfgs: mean logloss + l2/2 * ||weights||^2 solved to lbfgs_tolerance (max |gradient|) for
    # each l2 of the grid (strongest first, warm-started); the valid split picks the l2
    l2_grid: list[float] = field(default_factory=lambda: [1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5,
                                                          3e-6, 1e-6, 3e-7, 1e-7])
    lbfgs_tolerance: float = 1e-6
    lbfgs_max_iter: int = 2000  # per l2 value; reaching it is warned about (not converged)


@dataclass
class EvalConfig:
    """``ctrlab eval``: which saved epochs to evaluate, on which split."""

    split: str = "test"
    epochs: str | None = None  # "START:END" (inclusive), e.g. "1:4"; default: all saved epochs
    batch_size: int = 16384


@dataclass
class ExportConfig:
    """``ctrlab export``: which epoch of a run becomes a bundle, and what goes into it."""

    epoch: int | None = None  # default: the run's best epoch
    force: bool = False  # replace an existing bundle
    quantize: bool = False  # also write model.int8.onnx
    golden_rows: int = 256  # rows of the store's valid (else test) split for the ONNX parity check


@dataclass
class ServeConfig:
    """``ctrlab serve``: how a bundle is served over HTTP (typed; reaches worker processes whole)."""

    bundle: str = ""
    host: str = "127.0.0.1"  # this machine only unless asked
    port: int = 8867
    workers: int = 1
    backend: str = "onnx"
    threads: int | None = None  # intra-op threads per worker (default 1: concurrent requests run in parallel)
    max_rows: int = 50_000  # rows per request
    max_body_bytes: int = 32 << 20  # 32 MiB: a 50k-row JSON request of Criteo dicts is ~30 MB
    # /v1/predict requests arriving within this many ms of each other are scored in one model call
    # (each still gets its own scores and errors); 0: off, every request scored alone
    batch_window_ms: float = 0.0
    access_log: bool = False
    log_level: str = "info"


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run_dir: str | None = None  # where training writes checkpoints and logs


_LIST_FIELDS = {"train", "valid", "test", "partitions"}  # accept a single string where a list is expected


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def _suggest(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _convert(value: Any, tp: Any, path: str) -> Any:
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if value is None:
            if len(args) < len(get_args(tp)):
                return None
            raise ConfigError(f"{path}: a value is required")
        errors = []
        for arg in args:
            try:
                return _convert(value, arg, path)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0])
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping of {[f.name for f in dataclasses.fields(tp)]}, got {value!r}")
        return from_dict(tp, value, path)
    if origin is list:
        (item,) = get_args(tp) or (Any,)
        if isinstance(value, (str, int, float)) and path.rsplit(".", 1)[-1] in _LIST_FIELDS:
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        return [_convert(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        _, vt = get_args(tp) or (Any, Any)
        return {str(k): _convert(v, vt, f"{path}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{path}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads 1e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{path}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{path}: expected a string, got {value!r}")
    return value


#: Allowed values of string settings, checked when a config is loaded.
CHOICES: dict[tuple[type, str], tuple[str, ...]] = {
    (DataConfig, "format"): ("auto",) + FORMAT_NAMES,
    (DataConfig, "bad_lines"): ("error", "skip"),
    (CategoricalOptions, "encoder"): ("vocab", "hash"),
    (NumericOptions, "transform"): NumericTransform.KINDS + ("log_square_bucket",),
    (TrainConfig, "optimizer"): ("adam", "adamw", "sgd", "adagrad", "lbfgs"),
    (TrainConfig, "monitor"): ("auc", "logloss"),
    (EvalConfig, "split"): ("train", "valid", "test"),
    (ServeConfig, "backend"): ("onnx", "torch"),
    (ServeConfig, "log_level"): ("critical", "error", "warning", "info", "debug", "trace"),
}


@dataclass(frozen=True)
class Range:
    """Allowed values of a numeric setting (of each item, for a list): finite, within the bounds."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False  # low itself is not allowed
    high_open: bool = False

    def __str__(self) -> str:
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        if self.high is not None:
            return f"{'<' if self.high_open else '<='} {self.high:g}"
        return "a finite number"

    def contains(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return self.high is None or (value < self.high or (not self.high_open and value == self.high))

    def check(self, value: Any, where: str, extra: str = "") -> None:
        """Raise ConfigError naming ``where`` and the allowed range when ``value`` (or an item) is outside."""
        if isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                self.check(item, f"{where}[{i}]", extra)
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and not self.contains(value):
            raise ConfigError(f"{where}: {value!r} is out of range; allowed: {self}{extra}")


AT_LEAST_1, NON_NEGATIVE, POSITIVE = Range(1), Range(0), Range(0, low_open=True)
SEED = Range(0, 2**32 - 1)

#: Allowed ranges of numeric settings, checked when a config is loaded (before any data is read).
LIMITS: dict[tuple[type, str], Range] = {
    (DataConfig, "split"): NON_NEGATIVE,
    (DataConfig, "seed"): SEED,
    (DataConfig, "vocab_memory_mib"): NON_NEGATIVE,
    (CategoricalOptions, "min_count"): AT_LEAST_1,
    (CategoricalOptions, "max_size"): NON_NEGATIVE,
    (CategoricalOptions, "hash_buckets"): AT_LEAST_1,
    (NumericOptions, "fill_value"): Range(),
    (NumericOptions, "min_count"): AT_LEAST_1,
    (TrainConfig, "epochs"): AT_LEAST_1,
    (TrainConfig, "batch_size"): AT_LEAST_1,
    (TrainConfig, "lr"): NON_NEGATIVE,  # 0 freezes the weights (tests use it); negative would ascend
    (TrainConfig, "embedding_lr"): NON_NEGATIVE,
    (TrainConfig, "momentum"): Range(0, 1, high_open=True),
    (TrainConfig, "reg"): NON_NEGATIVE,
    (TrainConfig, "auxiliary_loss_weight"): NON_NEGATIVE,
    (TrainConfig, "weight_decay"): NON_NEGATIVE,
    (TrainConfig, "grad_clip"): POSITIVE,
    (TrainConfig, "early_stopping_patience"): NON_NEGATIVE,
    (TrainConfig, "min_epochs"): AT_LEAST_1,
    (TrainConfig, "lr_decay_factor"): Range(0, 1, low_open=True),
    (TrainConfig, "seed"): SEED,
    (TrainConfig, "threads"): AT_LEAST_1,
    (TrainConfig, "log_every"): AT_LEAST_1,
    (TrainConfig, "eval_batch_size"): AT_LEAST_1,
    (TrainConfig, "dist_timeout_s"): POSITIVE,
    (TrainConfig, "l2_grid"): NON_NEGATIVE,
    (TrainConfig, "lbfgs_tolerance"): POSITIVE,
    (TrainConfig, "lbfgs_max_iter"): AT_LEAST_1,
    (EvalConfig, "batch_size"): AT_LEAST_1,
    (ExportConfig, "epoch"): AT_LEAST_1,
    (ExportConfig, "golden_rows"): AT_LEAST_1,
    (ServeConfig, "port"): Range(0, 65535),
    (ServeConfig, "workers"): AT_LEAST_1,
    (ServeConfig, "threads"): AT_LEAST_1,
    (ServeConfig, "max_rows"): AT_LEAST_1,
    (ServeConfig, "max_body_bytes"): AT_LEAST_1,
    (ServeConfig, "batch_window_ms"): Range(0, 100),
}


def check_setting(cls: type, key: str, value: Any, where: str) -> None:
    """The one check of a loaded value: its choices and its range (``where`` names it in errors)."""
    choices = CHOICES.get((cls, key))
    if choices and value not in choices:
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(choices)}{_suggest(str(value), list(choices))}")
    limit = LIMITS.get((cls, key))
    if limit is not None and value is not None:
        optional = type(None) in get_args(get_type_hints(cls)[key])
        limit.check(value, where, " (or null)" if optional else "")
    rule = RULES.get((cls, key))
    if rule is not None and value is not None:
        rule(value, where)


def convert_setting(cls: type, key: str, value: Any, where: str) -> Any:
    """``value`` as setting ``cls.key`` takes it (type, choices, range checked); errors name ``where``."""
    converted = _convert(value, get_type_hints(cls)[key], where)
    check_setting(cls, key, converted, where)
    return converted


def _check_split(ratios: list[float], where: str) -> None:
    if len(ratios) != 3 or ratios[0] <= 0:
        raise ConfigError(f"{where}: expected three ratios train:valid:test with train > 0, got {ratios}")


def parse_epoch_range_text(text: str, where: str = "eval.epochs") -> tuple[int | None, int | None]:
    """'START:END' (either side may be empty) or 'N' -> (START, END), inclusive; None = open."""
    m = re.fullmatch(r"\s*(\d*)\s*:\s*(\d*)\s*", text)
    if m:
        lo, hi = (int(g) if g else None for g in m.groups())
    elif text.strip().isdigit():
        lo = hi = int(text)
    else:
        raise ConfigError(f"{where} expects START:END or N (saved epochs, from 1), got {text!r}")
    return lo, hi


def _check_columns(columns: dict[str, dict[str, Any]], where: str) -> None:
    """Each per-column override must be valid numeric or categorical options (the schema, read
    later, says which; prepare checks that again against the real columns)."""
    kinds = {cls: [f.name for f in dataclasses.fields(cls)] for cls in (NumericOptions, CategoricalOptions)}
    for col, values in columns.items():
        if not isinstance(values, dict):
            raise ConfigError(f"{where}.{col}: expected a mapping of options, got {values!r}")
        fitting = [cls for cls, names in kinds.items() if set(values) <= set(names)]
        if not fitting:
            names = sorted({n for ns in kinds.values() for n in ns})
            unknown = [k for k in values if k not in names]
            raise ConfigError(f"{where}.{col}: {unknown or list(values)} are not options of one column kind"
                              f"{_suggest(str((unknown or list(values))[0]), names)}; numeric columns take "
                              f"{', '.join(kinds[NumericOptions])}, categorical ones {', '.join(kinds[CategoricalOptions])}")
        for cls in fitting:
            from_dict(cls, values, f"{where}.{col}")


def _check_task_weights(weights: dict[str, float], where: str) -> None:
    """Each weight finite and >= 0 (the task names are checked against the store when it is read)."""
    for name, weight in weights.items():
        NON_NEGATIVE.check(weight, f"{where}.{name}")


def _check_task_name(name: str, where: str) -> None:
    if not name.strip():
        raise ConfigError(f"{where}: expected a task name (a label column of the store), got {name!r}")


#: Further checks of particular settings (beyond type, choices and range).
RULES: dict[tuple[type, str], Any] = {
    (TrainConfig, "task_weights"): _check_task_weights,
    (TrainConfig, "task"): _check_task_name,
    (TrainConfig, "monitor_task"): _check_task_name,
    (DataConfig, "split"): _check_split,
    (EvalConfig, "epochs"): lambda text, where: parse_epoch_range_text(text, where),
    (FeaturesConfig, "columns"): _check_columns,
}


def from_dict(cls: type, data: dict[str, Any], path: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping; unknown keys raise with the nearest valid key, and
    every value is checked (type, choices, range) with its key path in the error."""
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        where = f"{path}.{key}" if path else str(key)
        if key not in names:
            raise ConfigError(f"unknown config key {where!r}{_suggest(str(key), names)}; valid keys"
                              f"{' of ' + path if path else ''}: {', '.join(names)}")
        kwargs[key] = convert_setting(cls, key, value, where)
    return cls(**kwargs)


def to_dict(obj: Any) -> Any:
    """A config object as plain data (for YAML)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj
