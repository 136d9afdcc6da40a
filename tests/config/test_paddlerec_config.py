"""Tests for ctrlab.config.paddlerec_to_native: PaddleRec ``runner:`` / ``hyper_parameters:`` configs
mapped onto native sections, a note for every key that is not mapped (checked exhaustively), the
model name from the config's folder, and ``ctrlab train -m config.yaml`` / ``ctrlab eval -m`` end to
end on PaddleRec's own slot sample."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
import yaml

from ctrlab.cli import main
from ctrlab.config import Config, load_config
from ctrlab.config import PADDLE_MODEL_NAMES, PADDLE_MODEL_PARAMS, is_paddlerec_config, paddlerec_to_native
from ctrlab.data.prepare import prepare
from ctrlab.data.store import Store
from ctrlab.models import list_models
from ctrlab.train.store_config import prepare_options


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def to_native(data: dict[str, Any], folder: Path) -> tuple[Config, dict[str, Any], list[str]]:
    out, notes = paddlerec_to_native(data, folder)
    return load_config(None, [], base=out), out, notes


def notes_about(notes: list[str], path: str) -> list[str]:
    """Notes that name the key ``path`` (e.g. ``runner.reader_type``)."""
    return [n for n in notes if n.startswith(path + " ") or n.startswith(path + ":")]


# --------------------------------------------------------------------------------------------
# key mapping
# --------------------------------------------------------------------------------------------


def test_every_mapped_key(tmp_path):
    folder = tmp_path / "wide_deep"
    (folder / "data" / "train").mkdir(parents=True)
    data = {
        "runner": {
            "train_data_dir": "data/train",  # exists next to the config: resolved against its folder
            "test_data_dir": "/elsewhere/test",  # absolute: kept
            "train_batch_size": 50,
            "epochs": 4,
            "use_gpu": False,
            "print_interval": 2,
            "model_save_path": "output_model_wide_deep",
            "infer_batch_size": 5,
            "infer_start_epoch": 3,
            "infer_end_epoch": 4,
            "model_init_path": "output_model_wide_deep/2",
            "use_visual": True,
            "seed": 7,
        },
        "hyper_parameters": {
            "optimizer": {"class": "Adagrad", "learning_rate": 0.05},
            "reg": 0.0001,
            "sparse_feature_number": 1000001,
            "sparse_feature_dim": 9,
            "fc_sizes": [512, 256, 128, 32],
        },
    }
    cfg, out, notes = to_native(data, folder)
    assert len(notes) == 1 and notes[0].startswith("hyper_parameters.sparse_feature_number")
    assert cfg.model.name == "wide_deep"
    assert cfg.data.train == [str(folder / "data/train")]
    assert cfg.data.test == ["/elsewhere/test"]
    assert cfg.data.split == [1.0, 0.0, 0.0]  # every training row trains: no hidden validation holdout
    t = cfg.train
    assert (t.batch_size, t.epochs, t.device, t.log_every) == (50, 4, "cpu", 2)
    assert (t.init_from, t.tensorboard, t.seed) == ("output_model_wide_deep/2", True, 7)
    assert (t.optimizer, t.lr, t.reg) == ("adagrad", 0.05, 0.0001)
    assert cfg.run_dir == "output_model_wide_deep"
    # PaddleRec evaluates epochs start .. end-1 counted from 0; ctrlab counts from 1, inclusive
    assert cfg.eval.epochs == "4:4" and cfg.eval.batch_size == 5
    assert cfg.features.categorical.encoder == "vocab"  # a per-slot vocabulary instead of a fixed table
    assert cfg.model.params == {"embedding_dim": 9, "hidden_units": [512, 256, 128, 32]}
    assert data["runner"]["epochs"] == 4 and "runner" in data  # the input is not modified


@pytest.mark.parametrize("runner, expected", [
    ({"infer_start_epoch": 0, "infer_end_epoch": 3}, "1:3"),
    ({"infer_start_epoch": 2}, "3:"),
    ({"infer_end_epoch": 2}, "1:2"),
])
def test_infer_epoch_range(runner, expected, tmp_path):
    cfg, _, notes = to_native({"runner": runner}, tmp_path / "dnn")
    assert cfg.eval.epochs == expected and notes == []


@pytest.mark.parametrize("class_name, expected", [("Adam", "adam"), ("SGD", "sgd"), ("Adagrad", "adagrad"),
                                                   ("AdamW", "adamw")])
def test_optimizer_class(class_name, expected, tmp_path):
    cfg, _, _ = to_native({"hyper_parameters": {"optimizer": {"class": class_name}}}, tmp_path / "dnn")
    assert cfg.train.optimizer == expected


def test_use_gpu_and_empty_model_init_path(tmp_path):
    cfg, _, notes = to_native({"runner": {"use_gpu": True, "model_init_path": ""}}, tmp_path / "dnn")
    assert cfg.train.device == "cuda" and cfg.train.init_from is None and notes == []


def test_native_sections_beside_paddlerec_ones_are_merged(tmp_path):
    data = {"runner": {"epochs": 3, "test_data_dir": "t"}, "train": {"threads": 1, "lr": 0.5},
            "data": {"split": [0.7, 0.3, 0.0]}, "model": {"name": "dnn", "params": {"dropout": 0.1}},
            "hyper_parameters": {"fc_sizes": [8]}}
    cfg, _, notes = to_native(data, tmp_path / "wide_deep")
    assert cfg.train.threads == 1 and cfg.train.epochs == 3 and cfg.train.lr == 0.5
    assert cfg.data.split == [0.7, 0.3, 0.0]  # an explicit split wins over the test_data_dir default
    assert cfg.model.name == "dnn" and cfg.model.params == {"dropout": 0.1, "hidden_units": [8]}
    assert notes == []


@pytest.mark.parametrize("path, message", [
    ("runner.reader_type", "does not apply"),
    ("runner.train_reader_path", "does not apply"),
    ("runner.infer_reader_path", "does not apply"),
    ("runner.pipe_command", "does not apply"),
    ("runner.use_fleet", "--nproc N"),
    ("runner.use_inference", "ctrlab export"),
    ("runner.use_auc", "always reports exact AUC"),
    ("runner.thread_num", "not used by ctrlab"),
    ("hyper_parameters.dense_input_dim", "derived from the data"),
    ("hyper_parameters.sparse_inputs_slots", "derived from the data"),
    ("hyper_parameters.sparse_input_dim", "derived from the data"),
    ("hyper_parameters.slot_num", "derived from the data"),
    ("hyper_parameters.num_field", "derived from the data"),
    ("hyper_parameters.distributed_embedding", "does not apply"),
    ("hyper_parameters.optimizer.strategy", "not used by ctrlab"),
    ("hyper_parameters.some_new_knob", "not used by ctrlab"),
])
def test_keys_that_do_not_apply_are_noted(path, message, tmp_path):
    section, *rest = path.split(".")
    value: Any = False if path in ("runner.use_auc",) else (True if path in ("runner.use_fleet",) else 13)
    node: dict[str, Any] = {}
    data = {section: node}
    for part in rest[:-1]:
        node = node.setdefault(part, {})
    node[rest[-1]] = value
    cfg, out, notes = to_native(data, tmp_path / "dnn")
    assert len(notes) == 1 and notes_about(notes, path), notes
    assert message in notes[0]
    assert isinstance(cfg, Config)


def test_infer_load_path_different_from_model_save_path_is_noted(tmp_path):
    cfg, _, notes = to_native({"runner": {"model_save_path": "out_a", "infer_load_path": "out_b"}}, tmp_path / "dnn")
    assert cfg.run_dir == "out_a"  # training writes model_save_path; the note says how to eval out_b
    assert len(notes_about(notes, "runner.infer_load_path")) == 1
    cfg, _, notes = to_native({"runner": {"model_save_path": "out_a", "infer_load_path": "out_a"}}, tmp_path / "dnn")
    assert cfg.run_dir == "out_a" and notes == []


def test_infer_load_path_before_model_save_path_is_noted_too(tmp_path):
    cfg, _, notes = to_native({"runner": {"infer_load_path": "out_b", "model_save_path": "out_a"}}, tmp_path / "dnn")
    assert notes_about(notes, "runner.infer_load_path"), (cfg.run_dir, notes)


# PaddleRec's models/rank/wide_deep/config.yaml (its keys and values), with extra keys from other
# PaddleRec configs and some unknown ones; the top-level ``loader`` section is tested separately.
PADDLE_WIDE_DEEP = """
runner:
  train_data_dir: "data/sample_data/train"
  train_reader_path: "criteo_reader"
  use_gpu: False
  use_xpu: False
  use_auc: True
  train_batch_size: 50
  epochs: 4
  print_interval: 2
  model_save_path: "output_model_wide_deep"
  test_data_dir: "data/sample_data/train"
  infer_reader_path: "criteo_reader"
  infer_batch_size: 5
  infer_load_path: "output_model_wide_deep"
  infer_start_epoch: 3
  infer_end_epoch: 4
  use_inference: False
  save_inference_feed_varnames: ["C1", "C2", "dense_input"]
  save_inference_fetch_varnames: ["sigmoid_0.tmp_0"]
  use_fleet: True
  reader_type: "QueueDataset"
  pipe_command: "python queuedataset_reader.py"
  sync_mode: "async"
  split_file_list: False
  thread_num: 1
  model_init_path: "output_model_wide_deep/2"
  use_visual: False
  seed: 3
  some_unknown_runner_key: 1
hyper_parameters:
  optimizer:
    class: Adam
    learning_rate: 0.001
    strategy: async
  sparse_inputs_slots: 27
  sparse_feature_number: 1000001
  sparse_feature_dim: 9
  dense_input_dim: 13
  fc_sizes: [512, 256, 128, 32]
  distributed_embedding: 0
  reg: 0.001
  num_field: 39
  dropout_rate: 0.2
  some_unknown_hyper_key: [1, 2]
"""

# key path -> check on the loaded native config (the key is "mapped" when its value arrives)
MAPPED: dict[str, Callable[[Config, Path], bool]] = {
    "runner.train_data_dir": lambda c, f: c.data.train == [str(f / "data/sample_data/train")],
    "runner.test_data_dir": lambda c, f: c.data.test == [str(f / "data/sample_data/train")],
    "runner.use_gpu": lambda c, f: c.train.device == "cpu",
    "runner.train_batch_size": lambda c, f: c.train.batch_size == 50,
    "runner.epochs": lambda c, f: c.train.epochs == 4,
    "runner.print_interval": lambda c, f: c.train.log_every == 2,
    "runner.model_save_path": lambda c, f: c.run_dir == "output_model_wide_deep",
    "runner.infer_load_path": lambda c, f: c.run_dir == "output_model_wide_deep",
    "runner.infer_batch_size": lambda c, f: c.eval.batch_size == 5,
    "runner.infer_start_epoch": lambda c, f: c.eval.epochs == "4:4",
    "runner.infer_end_epoch": lambda c, f: c.eval.epochs == "4:4",
    "runner.model_init_path": lambda c, f: c.train.init_from == "output_model_wide_deep/2",
    "runner.use_visual": lambda c, f: c.train.tensorboard is False,
    "runner.seed": lambda c, f: c.train.seed == 3,
    "runner.use_auc": lambda c, f: True,  # True: ctrlab always reports AUC (False would be noted)
    "hyper_parameters.optimizer.class": lambda c, f: c.train.optimizer == "adam",
    "hyper_parameters.optimizer.learning_rate": lambda c, f: c.train.lr == 0.001,
    # sparse_feature_number is noted (a per-slot vocabulary replaces the fixed table): see
    # test_sparse_feature_number_keeps_the_table_size
    "hyper_parameters.sparse_feature_dim": lambda c, f: c.model.params["embedding_dim"] == 9,
    "hyper_parameters.fc_sizes": lambda c, f: c.model.params["hidden_units"] == [512, 256, 128, 32],
    "hyper_parameters.reg": lambda c, f: c.train.reg == 0.001,
    "hyper_parameters.dropout_rate": lambda c, f: c.model.params["dropout"] == 0.2,
}


def key_paths(data: dict[str, Any]) -> list[str]:
    paths = []
    for section, body in data.items():
        for key, value in (body or {}).items():
            if section == "hyper_parameters" and key == "optimizer":
                paths += [f"{section}.optimizer.{k}" for k in value]
            else:
                paths.append(f"{section}.{key}")
    return paths


def test_every_key_is_mapped_or_noted(tmp_path):
    folder = tmp_path / "wide_deep"
    (folder / "data" / "sample_data" / "train").mkdir(parents=True)
    data = yaml.safe_load(PADDLE_WIDE_DEEP)
    cfg, _, notes = to_native(data, folder)
    paths = key_paths(data)
    assert len(paths) == 41
    unexplained = []
    for path in paths:
        noted = notes_about(notes, path)
        if path in MAPPED:
            assert MAPPED[path](cfg, folder), f"{path} was not mapped"
            assert not noted, f"{path} is mapped but also noted: {noted}"
        elif len(noted) != 1:
            unexplained.append(path)
    assert unexplained == [], "keys neither mapped nor noted"
    # and no note is about a key that is not in the input
    assert all(any(notes_about([n], p) for p in paths) for n in notes), notes
    assert cfg.model.name == "wide_deep"


def test_false_use_fleet_and_true_use_auc_need_no_note(tmp_path):
    # they describe what ctrlab does anyway (one process, exact AUC)
    _, _, notes = to_native({"runner": {"use_fleet": False, "use_auc": True}}, tmp_path / "dnn")
    assert notes == []


def test_top_level_loader_section_is_noted_not_fatal(tmp_path):
    data = yaml.safe_load(PADDLE_WIDE_DEEP + "\nloader:\n  num_workers: 0\n")
    cfg, _, notes = to_native(data, tmp_path / "wide_deep")
    assert any("loader" in n for n in notes)


# --------------------------------------------------------------------------------------------
# model name
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("folder, expected", [
    ("wide_deep", "wide_deep"), ("widedeep", "wide_deep"), ("gatednn", "gatenet"), ("gate_dnn", "gatenet"),
    ("logistic_regression", "lr"), ("dcn_v2", "dcn_v2"), ("dcnv2", "dcn_v2"), ("deepfm", "deepfm"),
    ("DeepFM", "deepfm"), ("xdeepfm", "xdeepfm"), ("dlrm", "dlrm"),
])
def test_model_name_from_folder(folder, expected, tmp_path):
    (tmp_path / folder).mkdir()
    cfg, _, _ = to_native({"runner": {"epochs": 1}}, tmp_path / folder)
    assert cfg.model.name == expected
    assert expected in list_models()


def test_model_name_from_relative_config_dir(tmp_path, monkeypatch):
    (tmp_path / "deepfm").mkdir()
    monkeypatch.chdir(tmp_path / "deepfm")
    cfg, _, _ = to_native({"runner": {"epochs": 1}}, Path("config.yaml").parent)
    assert cfg.model.name == "deepfm"


def test_model_name_from_runner_or_native_section(tmp_path):
    cfg, _, notes = to_native({"runner": {"model": "fm"}}, tmp_path / "wide_deep")
    assert cfg.model.name == "fm" and notes == []
    cfg, _, notes = to_native({"runner": {"epochs": 1}, "model": {"name": "dnn"}}, tmp_path / "wide_deep")
    assert cfg.model.name == "dnn" and notes == []


def test_mapping_tables_name_registered_models_and_hyperparameters():
    from ctrlab.models import hyperparameter_defaults

    assert set(PADDLE_MODEL_NAMES.values()) <= set(list_models())
    known = {p for m in list_models() for p in hyperparameter_defaults(m)}
    assert {v for v in PADDLE_MODEL_PARAMS.values() if v} <= known


def test_is_paddlerec_config():
    assert is_paddlerec_config({"runner": {}})
    assert is_paddlerec_config({"hyper_parameters": {}})
    assert not is_paddlerec_config({"train": {}, "model": {"name": "fm"}})


# --------------------------------------------------------------------------------------------
# end to end on PaddleRec's slot sample
# --------------------------------------------------------------------------------------------

E2E_CONFIG = """
runner:
  train_data_dir: "data/sample_data/train"
  train_reader_path: "criteo_reader"
  use_gpu: False
  use_auc: True
  train_batch_size: 16
  epochs: 1
  print_interval: 2
  model_save_path: "output_model_wide_deep"
  test_data_dir: "data/sample_data/train"
  infer_reader_path: "criteo_reader"
  infer_batch_size: 7
  infer_load_path: "output_model_wide_deep"
  infer_start_epoch: 0
  infer_end_epoch: 1
  use_inference: False
  use_fleet: True
  reader_type: "QueueDataset"
hyper_parameters:
  optimizer:
    class: Adam
    learning_rate: 0.001
    strategy: async
  sparse_inputs_slots: 27
  sparse_feature_number: 1000
  sparse_feature_dim: 4
  dense_input_dim: 13
  fc_sizes: [16]
  distributed_embedding: 0
"""


@pytest.fixture
def paddle_wide_deep(shared_data, tmp_path, monkeypatch) -> Path:
    """tmp_path/wide_deep/config.yaml beside a copy of PaddleRec's slot sample; cwd is tmp_path/work."""
    sample = shared_data["paddle_slot"]
    folder = tmp_path / "wide_deep"
    (folder / "data" / "sample_data" / "train").mkdir(parents=True)
    shutil.copy(sample, folder / "data" / "sample_data" / "train" / sample.name)
    (folder / "config.yaml").write_text(E2E_CONFIG)
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")  # the data path resolves against the config's folder, not the cwd
    return folder / "config.yaml"


def test_train_and_eval_with_a_paddlerec_config(paddle_wide_deep, tmp_path, capsys):
    rc = main(["train", "-m", str(paddle_wide_deep), "--quiet", "--set", "train.threads=1"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    for path in ("runner.reader_type", "runner.use_fleet", "runner.use_inference", "runner.train_reader_path",
                 "hyper_parameters.dense_input_dim", "hyper_parameters.optimizer.strategy",
                 "hyper_parameters.distributed_embedding"):
        assert f"note: {path}" in captured.err, path
    assert "note:" not in captured.out
    lines = captured.out.splitlines()
    assert any(ln.startswith("test AUC") for ln in lines) and any(ln.startswith("test logloss") for ln in lines)

    run_dir = tmp_path / "work" / "output_model_wide_deep"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["model"] == "wide_deep" and summary["epochs_run"] == 1
    assert summary["test_rows"] == 110  # test_data_dir: the whole sample file
    assert (run_dir / "checkpoints" / "epoch_1.pt").is_file()
    saved = load_config(run_dir / "config.yaml")
    assert saved.model.params == {"embedding_dim": 4, "hidden_units": [16]}
    assert (saved.train.batch_size, saved.train.log_every, saved.train.epochs) == (16, 2, 1)
    assert (saved.eval.epochs, saved.eval.batch_size) == ("1:1", 7)
    store = Store(run_dir / "store")
    assert store.meta["splits"]["test"]["rows"] == 110
    assert store.meta["splits"]["train"]["rows"] == 110 and not store.has_split("valid")  # no hidden holdout

    # the same PaddleRec file drives evaluation (infer_start_epoch 0 .. infer_end_epoch 1 -> epoch 1)
    rc = main(["eval", "-m", str(paddle_wide_deep), "--json", "--set", "train.threads=1"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    results = json.loads(captured.out.strip().splitlines()[-1])
    assert [r["epoch"] for r in results] == [1] and results[0]["rows"] == 110
    assert results[0]["auc"] == pytest.approx(summary["test_auc"], abs=1e-6)


def test_sparse_feature_number_keeps_the_table_size(paddle_wide_deep, tmp_path):
    raw = yaml.safe_load(paddle_wide_deep.read_text())
    cfg, _, _ = to_native(raw, paddle_wide_deep.parent)
    store = prepare(prepare_options(cfg), tmp_path / "store", progress=False, log=lambda _: None)
    vocab_sizes = store.spec.vocab_sizes
    assert len(vocab_sizes) == 26
    # a vocabulary per slot keeps exactly the ids that occur in the training rows (PaddleRec keeps
    # every id: min_count 1), plus the missing and OOV rows; with ids < sparse_feature_number, as
    # PaddleRec requires, that is at most sparse_feature_number rows in all
    distinct: dict[str, set[str]] = {}
    for line in (paddle_wide_deep.parent / "data" / "sample_data" / "train").glob("*.txt"):
        for row in line.read_text().splitlines():
            for token in row.split()[14:]:
                slot, value = token.split(":")
                distinct.setdefault(slot, set()).add(value)
    assert list(vocab_sizes) == [len(distinct[str(k)]) + 2 for k in range(1, 27)]


# --------------------------------------------------------------------------------------------
# PaddleRec's own rank configs build PaddleRec's networks (layer shapes from its net.py files)
# --------------------------------------------------------------------------------------------

RANK = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "PaddlePaddle__PaddleRec" / "models" / "rank"

#: the PaddleRec rank models (folders with a config.yaml) that ctrlab maps onto its own models
PADDLE_RANK_MODELS = ["dcn", "deepfefm", "deepfm", "dlrm", "dnn", "ffm", "fm", "gatenet", "logistic_regression",
                      "wide_deep", "xdeepfm"]


def paddle_shapes(model: str, hp: dict[str, Any]) -> dict[str, Any]:
    """The layer shapes PaddleRec's models/rank/<model>/net.py builds from a config's values.

    linear: (in, out) of every dense weight matrix (Linear layers, CIN's 1x1 convolutions, and the
    first-order weights of the dense inputs, a D -> 1 map). PaddleRec ends some networks in a
    2-unit layer feeding a two-class softmax; ctrlab's equivalent is one logit, so such a
    final (n, 2) layer is expected as (n, 1) here. embedding: the widths of the embedding tables.
    """
    dense, k = hp.get("dense_input_dim", 0), hp.get("sparse_feature_dim", 1)
    sparse = hp.get("sparse_inputs_slots", 1) - 1  # one slot holds the dense vector
    fields = sparse + dense  # models that embed each dense value as a field
    fc = list(hp.get("fc_sizes", []))

    def chain(sizes: list[int]) -> list[tuple[int, int]]:
        pairs = list(zip(sizes[:-1], sizes[1:]))
        return pairs[:-1] + [(pairs[-1][0], 1)] if pairs and pairs[-1][1] == 2 else pairs

    first_order = [(dense, 1)]  # dense_w_one (or wide_deep's wide Linear)
    if model == "dnn":
        return {"linear": chain([sparse * k + dense] + fc + [2]), "embedding": {k}}
    if model == "wide_deep":
        # ctrlab's wide part also keeps a weight per sparse id (the paper's wide part over the
        # sparse features): the 1-wide table PaddleRec's dense-only wide part does not have
        return {"linear": first_order + chain([sparse * k + dense] + fc + [1]), "embedding": {1, k}}
    if model == "deepfm":
        return {"linear": first_order + chain([fields * k] + fc + [1]), "embedding": {1, k}}
    if model == "fm":
        return {"linear": first_order, "embedding": {1, k}}
    if model == "ffm":  # one k-vector per (feature, field): width k * fields
        return {"linear": first_order, "embedding": {1, fields * k}}
    if model == "xdeepfm":
        cin, last, convs = list(hp["layer_sizes_cin"]), fields, []
        for size in cin:
            convs.append((last * fields, size))
            last = size
        dnn = chain([fields * k] + list(hp["layer_sizes_dnn"]) + [1])
        return {"linear": first_order + convs + [(sum(cin), 1)] + dnn, "embedding": {1, k}}
    if model == "deepfefm":  # DNN input: dense values, sparse embeddings, field-pair values
        return {"linear": first_order + chain([dense + sparse * k + fields * (fields - 1) // 2] + fc + [1]),
                "embedding": {1, k}}
    if model == "gatenet":  # hidden gates: one (n, n) matrix per hidden layer
        return {"linear": chain([sparse * k + dense] + fc) + [(fc[-1], 1)], "embedding": {k},
                "hidden_gates": [(n, n) for n in fc]}
    if model == "dcn":  # cross vectors: x0-wide (PaddleRec shares one across layers; ctrlab, as the paper, one per layer)
        x0 = sparse * k + dense
        return {"linear": chain([x0] + fc) + [(fc[-1] + x0, 1)], "embedding": {k}, "cross_width": x0}
    if model == "dlrm":
        pairs = (sparse + 1) * sparse // 2  # dot products among the sparse embeddings and the bottom output
        return {"linear": chain([dense] + list(hp["bot_layer_sizes"])) + chain([pairs + k] + list(hp["top_layer_sizes"])),
                "embedding": {k}}
    if model == "logistic_regression":
        return {"linear": [], "embedding": {1}}
    raise AssertionError(model)


def ctrlab_shapes(net: torch.nn.Module) -> dict[str, Any]:
    from ctrlab.nn.cin import CIN
    from ctrlab.nn.cross import CrossNet
    from ctrlab.nn.embedding import DenseFieldEmbedding, FieldEmbedding
    from ctrlab.nn.gates import GatedMLP

    out: dict[str, Any] = {"linear": [], "embedding": set()}
    for module in net.modules():
        if isinstance(module, torch.nn.Linear):
            out["linear"].append((module.in_features, module.out_features))
        elif isinstance(module, CIN):
            out["linear"] += [(w.shape[1], w.shape[0]) for w in module.weights]
        elif isinstance(module, (FieldEmbedding, DenseFieldEmbedding)):
            out["embedding"].add(module.weight.shape[1])
        elif isinstance(module, GatedMLP) and module.gates is not None:
            out["hidden_gates"] = [tuple(g.shape) for g in module.gates]
        elif isinstance(module, CrossNet):
            out["cross_width"] = module.weight.shape[1]
    return out


def sorted_shapes(shapes: dict[str, Any]) -> dict[str, Any]:
    return {k: sorted(v) if isinstance(v, list) else v for k, v in shapes.items()}


@pytest.mark.parametrize("model", PADDLE_RANK_MODELS)
def test_paddlerec_rank_config_builds_paddlerec_layer_shapes(model, tmp_path):
    from ctrlab.fields import FeatureSpec
    from ctrlab.models import build_model

    config = RANK / model / "config.yaml"
    if not config.is_file():
        pytest.skip(f"{config} is not available")
    raw = yaml.safe_load(config.read_text())
    cfg, _, notes = to_native(raw, config.parent)
    hp = raw["hyper_parameters"]
    if model == "logistic_regression":  # feat_idx rows (not a ctrlab input): num_field id fields
        spec = FeatureSpec((), tuple(f"F{j}" for j in range(hp["num_field"])), (10,) * hp["num_field"])
    else:  # the config's own sample data, prepared as the mapped config says
        store = prepare(prepare_options(cfg), tmp_path / "store", progress=False, log=lambda _: None)
        spec = store.spec
        assert (spec.n_dense, spec.n_sparse) == (hp["dense_input_dim"], hp["sparse_inputs_slots"] - 1)
    net = build_model(cfg.model.name, spec, cfg.model.params)
    assert sorted_shapes(ctrlab_shapes(net)) == sorted_shapes(paddle_shapes(model, hp))
    # no network or training key is left unused (optimizer.strategy is PaddleRec's fleet mode)
    assert [n for n in notes if "not used by ctrlab" in n and n.startswith("hyper_parameters.")] in (
        [], ["hyper_parameters.optimizer.strategy is not used by ctrlab"]), notes


def test_all_rank_configs_are_listed():
    if not RANK.is_dir():
        pytest.skip(f"{RANK} is not available")
    with_config = {p.parent.name for p in RANK.glob("*/config.yaml")}
    assert set(PADDLE_RANK_MODELS) <= with_config
    # the rest are sequence / multi-field models ctrlab does not implement
    assert with_config - set(PADDLE_RANK_MODELS) <= {"bst", "dien", "din", "dmr", "dsin"}


def test_dcn_keys_with_a_ctrlab_equivalent_are_mapped(tmp_path):
    cfg, _, notes = to_native({"hyper_parameters": {"l2_reg_cross": 5e-05, "clip_by_norm": 100.0, "dnn_use_bn": True,
                                                    "cross_num": 2, "fc_sizes": [8]}}, tmp_path / "dcn")
    assert (cfg.train.weight_decay, cfg.train.grad_clip) == (5e-05, 100.0)
    assert cfg.model.params == {"batch_norm": True, "cross_layers": 2, "hidden_units": [8]}
    assert notes == []


def test_output_layer_of_top_layer_sizes_becomes_the_logit(tmp_path):
    cfg, _, _ = to_native({"hyper_parameters": {"top_layer_sizes": [512, 256, 2], "bot_layer_sizes": [64, 16],
                                                "sparse_feature_dim": 16}}, tmp_path / "dlrm")
    assert cfg.model.params == {"top_mlp_units": [512, 256], "bottom_mlp_units": [64, 16], "embedding_dim": 16}
    with pytest.raises(Exception, match="top_layer_sizes: expected a list of layer sizes ending in"):
        to_native({"hyper_parameters": {"top_layer_sizes": [512, 256]}}, tmp_path / "dlrm")


def test_xdeepfm_reads_layer_sizes_dnn_not_fc_sizes(tmp_path):
    cfg, _, notes = to_native({"hyper_parameters": {"fc_sizes": [9, 9], "layer_sizes_dnn": [8], "layer_sizes_cin": [4]}},
                              tmp_path / "xdeepfm")
    assert cfg.model.params == {"hidden_units": [8], "cin_layer_units": [4], "cin_split_half": False}
    assert notes_about(notes, "hyper_parameters.fc_sizes")


def test_epochs_mean_epochs_unless_the_config_asks(tmp_path):
    cfg, _, _ = to_native({"runner": {"epochs": 4, "test_data_dir": "t"}}, tmp_path / "dnn")
    assert cfg.train.epochs == 4 and cfg.data.split == [1.0, 0.0, 0.0]
    assert (cfg.train.early_stopping_patience, cfg.train.lr_decay_factor) == (0, 1.0)
    asked = {"runner": {"epochs": 4}, "data": {"split": [0.8, 0.2, 0.0]},
             "train": {"early_stopping_patience": 2, "lr_decay_factor": 0.5}}
    cfg, _, _ = to_native(asked, tmp_path / "dnn")
    assert cfg.data.split == [0.8, 0.2, 0.0]
    assert (cfg.train.early_stopping_patience, cfg.train.lr_decay_factor) == (2, 0.5)


def test_paddlerec_run_says_what_it_uses_and_that_test_is_train(paddle_wide_deep, tmp_path, capsys):
    config = paddle_wide_deep.read_text().replace("epochs: 1", "epochs: 3").replace("infer_end_epoch: 1",
                                                                                     "infer_end_epoch: 3")
    paddle_wide_deep.write_text(config)
    # lr 0: nothing improves, so early stopping (were it on) would end the run after 2 epochs
    assert main(["train", "-m", str(paddle_wide_deep), "--quiet", "--set", "train.threads=1", "--set", "train.lr=0",
                 "--set", "data.split=[0.7, 0.3, 0.0]"]) == 0
    out = capsys.readouterr().out
    assert "epochs: 3; validation: " in out and "early stopping: off; lr decay: off" in out
    auc_line = next(ln for ln in out.splitlines() if ln.startswith("test AUC"))
    assert "WARNING: the test data IS the training data" in auc_line
    summary = json.loads((tmp_path / "work" / "output_model_wide_deep" / "summary.json").read_text())
    assert summary["epochs_run"] == 3 and not summary["stopped_early"] and summary["test_is_training_data"] is True
    assert summary["schedule"]["early_stopping"] == "off"
    assert main(["eval", "-m", str(paddle_wide_deep), "--set", "train.threads=1"]) == 0
    assert "WARNING: the test data IS the training data" in capsys.readouterr().out


def test_paddlerec_run_without_validation(paddle_wide_deep, tmp_path, capsys):
    assert main(["train", "-m", str(paddle_wide_deep), "--quiet", "--set", "train.threads=1"]) == 0
    assert "epochs: 1; validation: none; early stopping: off; lr decay: off" in capsys.readouterr().out


SEQUENCE_SHARES = {
    "din": [("hist_item_id", "item_id"), ("hist_cate_id", "cate_id")],
    "dien": [("hist_item_id", "item_id"), ("hist_cate_id", "cate_id")],
    "bst": [("history", "target"), ("cate", "target_cate"), ("position", "target_position")],
}


@pytest.mark.parametrize("model", ["din", "dien", "bst"])
def test_paddlerec_sequence_configs_train_unchanged(model, tmp_path, monkeypatch, capsys):
    """PaddleRec's din / dien folders (config.yaml + sample data, unchanged) train with
    `ctrlab train -m`: their reader's layout becomes a schema whose histories share the target
    item's and category's vocabularies; the SGD learning rate is theirs."""
    from ctrlab.data.store import Store

    source = RANK / model
    if not (source / "config.yaml").is_file():
        pytest.skip(f"{source} is not available")
    shutil.copytree(source, tmp_path / model)
    monkeypatch.chdir(tmp_path)
    assert main(["train", "-m", str(tmp_path / model / "config.yaml"), "--quiet", "--set", "train.threads=1",
                 "--set", "train.epochs=1"]) == 0  # (one epoch of the config's; bst's asks for 10)
    err = capsys.readouterr().err
    assert f"PaddleRec's {model} reader layout" in err
    raw = yaml.safe_load((source / "config.yaml").read_text())
    cfg, _, _ = to_native(raw, source)
    assert cfg.model.name == model and cfg.train.optimizer == "sgd"
    optimizer = raw["hyper_parameters"]["optimizer"]
    assert cfg.train.lr == optimizer.get("learning_rate_base_lr", optimizer.get("learning_rate"))
    assert cfg.model.params["embedding_dim"] == raw["hyper_parameters"]["item_emb_size"]
    store = Store(tmp_path / raw["runner"]["model_save_path"] / "store")
    assert [(f.name, f.shares) for f in store.spec.lists] == SEQUENCE_SHARES[model]
    assert store.meta["splits"]["train"]["rows"] == len((source / "data" / "train_data").glob("*").__next__()
                                                          .read_text().splitlines())  # every line read
