"""Settings are checked before any work starts (every numeric setting has a range, every error
names the key and what is allowed), and the records a run and a bundle keep say what was really
fitted: the recorded ``config.yaml`` re-creates the store's ``pipeline.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from ctrlab.cli import main
from ctrlab.config import (
    Config,
    ConfigError,
    FeaturesConfig,
    column_overrides,
    fitted_features,
    load_config,
)
from ctrlab.config import PRESET_DIR, base_config_for, paddlerec_to_native
from ctrlab.features.pipeline import CategoricalOptions, FeaturePipeline, NumericOptions
from ctrlab.models import list_models
from ctrlab.train.run import overlap_warning, run_eval, run_training, train_test_overlap

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# --------------------------------------------------------------------------------------------
# item 4: ranges, checked on loading
# --------------------------------------------------------------------------------------------

# (key, bad value, a fragment of the allowed range the error must state)
BAD_SETTINGS = [
    ("data.split", "[0, 1, 1]", "train > 0"),
    ("data.split", "[0.8, 0.2]", "three ratios"),
    ("data.split", "[0.8, -0.1, 0.3]", ">= 0"),
    ("data.seed", "-1", "in [0, 4.29497e+09]"),
    ("features.categorical.min_count", "0", ">= 1"),
    ("features.categorical.max_size", "-5", ">= 0"),
    ("features.categorical.hash_buckets", "0", ">= 1"),
    ("features.numeric.min_count", "0", ">= 1"),
    ("features.numeric.fill_value", ".inf", "a finite number"),
    ("features.columns.C1.min_count", "0", ">= 1"),
    ("features.columns.I1.min_count", "-3", ">= 1"),
    ("train.epochs", "0", ">= 1"),
    ("train.epochs", "-2", ">= 1"),
    ("train.batch_size", "0", ">= 1"),
    ("train.lr", "-0.001", ">= 0"),
    ("train.lr", ".nan", ">= 0"),
    ("train.embedding_lr", "-1", ">= 0"),
    ("train.momentum", "1.0", "in [0, 1)"),
    ("train.momentum", "-0.5", "in [0, 1)"),
    ("train.reg", "-1", ">= 0"),
    ("train.weight_decay", "-0.1", ">= 0"),
    ("train.grad_clip", "-1", "> 0 (or null)"),
    ("train.grad_clip", "0", "> 0 (or null)"),
    ("train.early_stopping_patience", "-1", ">= 0"),
    ("train.lr_decay_factor", "0", "in (0, 1]"),
    ("train.lr_decay_factor", "1.5", "in (0, 1]"),
    ("train.seed", "-7", "in [0, 4.29497e+09]"),
    ("train.threads", "0", ">= 1 (or null)"),
    ("train.log_every", "0", ">= 1"),
    ("train.log_every", "-1", ">= 1"),
    ("train.eval_batch_size", "0", ">= 1"),
    ("train.dist_timeout_s", "0", "> 0"),
    ("eval.batch_size", "0", ">= 1"),
    ("eval.epochs", "'1-3'", "START:END or N"),
]


@pytest.mark.parametrize("key, value, allowed", BAD_SETTINGS)
def test_out_of_range_settings_name_the_key_and_the_range(key, value, allowed, tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(None, [f"{key}={value}"])
    message = str(info.value)
    assert message.startswith(key) and allowed in message, message
    # the same from a YAML file
    section, *rest = key.split(".")
    node: dict[str, Any] = {}
    data = {section: node}
    for part in rest[:-1]:
        node = node.setdefault(part, {})
    node[rest[-1]] = yaml.safe_load(value)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(path)


@pytest.mark.parametrize("key", ["train.lr", "train.epochs", "train.batch_size", "train.grad_clip", "train.reg",
                                 "data.seed", "features.categorical.min_count", "features.numeric.fill_value",
                                 "eval.batch_size", "train.log_every"])
def test_text_where_a_number_is_expected_names_the_key(key):
    with pytest.raises(ConfigError, match=rf"^{key.replace('.', chr(92) + '.')}: expected .*'fast'"):
        load_config(None, [f"{key}=fast"])


def test_edge_values_that_are_allowed():
    cfg = load_config(None, ["train.grad_clip=null", "train.early_stopping_patience=0", "train.lr_decay_factor=1",
                             "train.momentum=0.9", "data.split=[1, 0, 0]", "features.categorical.max_size=0",
                             "train.lr=0"])
    assert cfg.train.grad_clip is None and cfg.train.early_stopping_patience == 0


@pytest.mark.parametrize("param, value, fragment", [
    ("dropout", 1.0, "'dropout' must be in [0, 1)"),
    ("dropout", -0.1, "'dropout' must be in [0, 1)"),
    ("embedding_dim", 0, "'embedding_dim' must be >= 1"),
    ("hidden_units", [400, 0], "'hidden_units' must be a list of sizes >= 1"),
    ("hidden_units", [400, -2], "'hidden_units' must be a list of sizes >= 1"),
    ("hidden_units", "wide", "'hidden_units' must be a list"),
])
def test_model_params_are_checked_before_any_data(param, value, fragment, tmp_path):
    cfg = load_config(None, [f"model.params.{param}={json.dumps(value)}", "model.name=deepfm",
                             f"data.store={tmp_path / 'no-store'}", f"run_dir={tmp_path / 'run'}"])
    with pytest.raises(ValueError) as info:  # no store there: the params are what fails first
        run_training(cfg, progress=False, log=lambda _: None)
    assert fragment in str(info.value)
    with pytest.raises(ValueError, match=fragment.replace("[", r"\[").replace(")", r"\)")):
        run_eval(cfg, log=lambda _: None)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv_tail, fragment", [
    (["--epochs", "0"], "train.epochs: 0 is out of range; allowed: >= 1"),
    (["--set", "train.grad_clip=-1"], "train.grad_clip: -1.0 is out of range"),
    (["--set", "train.log_every=0"], "train.log_every: 0 is out of range"),
    (["--set", "train.lr=fast"], "train.lr: expected a number, got 'fast'"),
    (["--set", "model.params.dropout=1.5"], "'dropout' must be in [0, 1)"),
])
def test_cli_train_rejects_bad_settings_before_reading_data(argv_tail, fragment, tmp_path, capsys):
    missing = tmp_path / "no-store"
    assert main(["train", "--data", str(missing), "--model", "deepfm", "--out", str(tmp_path / "run"), "--quiet",
                 *argv_tail]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ctrlab train: error:") and fragment in err and str(missing) not in err, err
    assert not (tmp_path / "run").exists()


def test_cli_eval_rejects_a_bad_epoch_range(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "run"), "--epochs", "one:two", "-c", str(PRESET_DIR / "fm.yaml")]) == 2
    assert "eval.epochs expects START:END or N" in capsys.readouterr().err


@pytest.mark.parametrize("hyper, fragment", [
    ({"optimizer": {"class": "Adam", "learning_rate": "fast"}},
     "hyper_parameters.optimizer.learning_rate (ctrlab train.lr): expected a number, got 'fast'"),
    ({"optimizer": {"learning_rate": -1}}, "hyper_parameters.optimizer.learning_rate (ctrlab train.lr): -1.0 is out"),
    ({"optimizer": {"class": "Adamm"}}, "hyper_parameters.optimizer.class (ctrlab train.optimizer)"),
    ({"reg": "lots"}, "hyper_parameters.reg (ctrlab train.reg): expected a number"),
    ({"clip_by_norm": -1}, "hyper_parameters.clip_by_norm (ctrlab train.grad_clip): -1.0 is out of range"),
    ({"sparse_feature_dim": 0}, "hyper_parameters.sparse_feature_dim (ctrlab model.params.embedding_dim)"),
    ({"fc_sizes": [512, "x"]}, "hyper_parameters.fc_sizes (ctrlab model.params.hidden_units)"),
    ({"dropout_rate": 2}, "hyper_parameters.dropout_rate (ctrlab model.params.dropout)"),
])
def test_paddlerec_hyper_parameters_are_checked_by_their_key(hyper, fragment, tmp_path):
    with pytest.raises(ConfigError) as info:
        paddlerec_to_native({"hyper_parameters": hyper}, tmp_path / "dnn")
    assert fragment in str(info.value), str(info.value)


@pytest.mark.parametrize("runner, fragment", [
    ({"epochs": 0}, "runner.epochs (ctrlab train.epochs): 0 is out of range; allowed: >= 1"),
    ({"epochs": "four"}, "runner.epochs (ctrlab train.epochs): expected an integer, got 'four'"),
    ({"train_batch_size": 0}, "runner.train_batch_size (ctrlab train.batch_size)"),
    ({"print_interval": 0}, "runner.print_interval (ctrlab train.log_every)"),
    ({"infer_batch_size": -1}, "runner.infer_batch_size (ctrlab eval.batch_size)"),
    ({"seed": -1}, "runner.seed (ctrlab train.seed)"),
    ({"infer_start_epoch": "a"}, "runner.infer_start_epoch: expected an epoch number"),
    ({"infer_start_epoch": 3, "infer_end_epoch": 2}, "runner.infer_end_epoch (2) must be after"),
])
def test_paddlerec_runner_values_are_checked_by_their_key(runner, fragment, tmp_path):
    with pytest.raises(ConfigError) as info:
        paddlerec_to_native({"runner": runner}, tmp_path / "dnn")
    assert fragment in str(info.value), str(info.value)


def test_cli_train_with_a_bad_paddlerec_value(tmp_path, capsys):
    folder = tmp_path / "dnn"
    folder.mkdir()
    (folder / "config.yaml").write_text("runner:\n  epochs: 2\nhyper_parameters:\n  optimizer:\n"
                                        "    class: Adam\n    learning_rate: fast\n")
    assert main(["train", "-m", str(folder / "config.yaml"), "--quiet"]) == 2
    assert "hyper_parameters.optimizer.learning_rate" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# item 13: test data == training data is detected (a unit check; the run's output is tested
# with PaddleRec's sample configs in test_paddlerec_config.py)
# --------------------------------------------------------------------------------------------

def test_train_test_overlap_by_path_or_content(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    meta = {"sources": {"train": [{"path": str(a), "sha256": "1"}], "test": [{"path": str(b), "sha256": "2"}]}}
    assert train_test_overlap(meta) == [] and overlap_warning([]) == ""
    meta["sources"]["test"].append({"path": str(tmp_path / "x" / ".." / "a.txt"), "sha256": "3"})  # same file
    meta["sources"]["test"].append({"path": str(tmp_path / "copy.txt"), "sha256": "1"})  # same bytes
    assert train_test_overlap(meta) == [str(tmp_path / "x" / ".." / "a.txt"), str(tmp_path / "copy.txt")]
    assert "WARNING" in overlap_warning(["f"]) and "not a held-out score" in overlap_warning(["f"])
    assert train_test_overlap({"sources": {"train": [{"path": str(a), "sha256": "1"}]}}) == []


# --------------------------------------------------------------------------------------------
# item 14: one set of feature defaults; the recorded config re-creates the fitted pipeline
# --------------------------------------------------------------------------------------------

def encoder_settings(encoder: Any) -> Any:
    """An encoder's hyperparameters (constructor settings, no learned state), nested encoders too."""
    if not hasattr(encoder, "__dict__"):
        return encoder
    return (type(encoder).__name__, {k: encoder_settings(v) for k, v in sorted(vars(encoder).items())
                                     if not k.endswith("_") and not k.startswith("_")})


def pipeline_settings(pipe: FeaturePipeline) -> dict[str, Any]:
    return {"dense": pipe.dense_inputs, "sparse": pipe.sparse_inputs,
            "encoders": {col: encoder_settings(enc) for col, enc in pipe.encoders.items()}}


def recreated_settings(features: FeaturesConfig, fitted: FeaturePipeline) -> dict[str, Any]:
    """The pipeline a features section builds for the fitted pipeline's columns (unfitted)."""
    pipe = FeaturePipeline.from_options(
        fitted.dense_inputs, fitted.sparse_inputs, features.categorical, features.numeric,
        column_overrides(features, fitted.dense_inputs, fitted.sparse_inputs))
    return pipeline_settings(pipe)


def test_ready_configs_use_the_one_set_of_feature_defaults():
    ready = [p.stem for p in PRESET_DIR.glob("*.yaml") if p.stem in list_models()]
    assert len(ready) >= 10
    for name in ready:
        assert load_config(None, [], base=base_config_for(name)).features == FeaturesConfig(), name
    assert load_config().features == FeaturesConfig()  # what `ctrlab prepare` uses without flags


@pytest.mark.parametrize("declared", [FeaturesConfig(), FeaturesConfig(
    categorical=CategoricalOptions(encoder="hash", hash_buckets=77), numeric=NumericOptions(transform="minmax"))])
def test_fitted_features_recreate_mixed_encoders(declared):
    pipe = FeaturePipeline.from_options(
        ["I1", "I2", "I3"], ["C1", "C2", "C3"], CategoricalOptions(min_count=3, max_size=50),
        NumericOptions(transform="log1p", fill_value=0.5),
        {"I2": NumericOptions(transform="log_square_bucket", min_count=4), "C3": CategoricalOptions("hash", 1, None, 99)})
    recorded = fitted_features(pipe, declared)
    assert recreated_settings(recorded, pipe) == pipeline_settings(pipe)
    assert set(recorded.columns) == {"I2", "C3"}  # the most common settings are the section defaults


@pytest.fixture
def criteo_head(shared_data, tmp_path) -> Path:
    path = tmp_path / "criteo_head.tsv"
    with open(shared_data["criteo_train"], encoding="utf-8") as fh:
        path.write_text("".join(next(fh) for _ in range(1500)))
    return path


def test_run_and_bundle_record_the_fitted_features(criteo_head, tmp_path, capsys):
    store, run, bundle = tmp_path / "store", tmp_path / "run", tmp_path / "bundle"
    # prepared with settings other than the ready config's, then trained with the ready config
    assert main(["prepare", str(criteo_head), "--out", str(store), "--quiet", "--numeric", "minmax",
                 "--min-count", "1", "--set", "features.columns.I3.transform=log_square_bucket"]) == 0
    assert main(["train", "--data", str(store), "--model", "deepfm", "--out", str(run), "--quiet", "--epochs", "1",
                 "--set", "train.threads=1", "--set", "model.params.hidden_units=[8]"]) == 0
    out = capsys.readouterr().out
    assert "was prepared with other settings than this config's features section" in out
    fitted = FeaturePipeline.load(store / "pipeline.json")
    for config_path in (run / "config.yaml", store / "config.yaml"):
        recorded = load_config(config_path).features
        assert recreated_settings(recorded, fitted) == pipeline_settings(fitted), config_path
    assert load_config(run / "config.yaml").features.numeric.transform == "minmax"
    assert main(["export", str(run), "--out", str(bundle)]) == 0
    recorded = load_config(bundle / "config.yaml").features
    assert recreated_settings(recorded, FeaturePipeline.load(bundle / "pipeline.json")) == pipeline_settings(fitted)


def test_a_run_that_prepares_its_store_records_the_defaults(criteo_head, tmp_path):
    cfg = load_config(None, [f"data.train=[{json.dumps(str(criteo_head))}]", f"run_dir={json.dumps(str(tmp_path / 'r'))}",
                             "train.epochs=1", "train.threads=1", "model.name=lr"])
    run_training(cfg, progress=False, log=lambda _: None)
    fitted = FeaturePipeline.load(tmp_path / "r" / "store" / "pipeline.json")
    recorded = load_config(tmp_path / "r" / "config.yaml")
    assert isinstance(recorded, Config) and recorded.features == FeaturesConfig()
    assert recreated_settings(recorded.features, fitted) == pipeline_settings(fitted)


def test_override_values_keep_their_text_and_numbers():
    """`--set` and sweep grids share one value parser: 1e-3 is a number, 3:1 an epoch range (not
    YAML 1.1's base-60 number 181)."""
    from ctrlab.config import parse_value

    cfg = load_config(None, ["train.lr=1e-3", "eval.epochs=3:1"])
    assert cfg.train.lr == 0.001 and cfg.eval.epochs == "3:1"
    assert parse_value("[400, 400]") == [400, 400] and parse_value("2:4") == "2:4" and parse_value("7") == 7
