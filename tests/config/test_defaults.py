"""Defaults that hold (issue 12): the ready configs let early stopping decide, models that embed
dense values warn about unscaled columns, and the quality benchmark's noise estimate is right."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from ctrlab.config import load_config
from ctrlab.config import PRESET_DIR, base_config_for
from ctrlab.data.prepare import PrepareOptions, prepare
from ctrlab.data.synth import write_synthetic
from ctrlab.features.pipeline import FeaturePipeline, NumericOptions
from ctrlab.fields import FeatureSpec, ListField
from ctrlab.models import build_model, flat_models, list_models, needs_sequence
from ctrlab.train.run import run_training
from ctrlab.train.trainer import dense_scale_warning

ROOT = Path(__file__).resolve().parents[2]
#: the models whose dense columns enter feature interactions as value * vector
EMBED_DENSE = {"autoint", "autoint_plus", "deepfefm", "deepfm", "ffm", "fibinet", "finalmlp", "fm", "xdeepfm"}
SPEC = FeatureSpec.criteo_like([5] * 26)


def pipeline_for(transform: str) -> FeaturePipeline:
    return FeaturePipeline.from_options(list(SPEC.dense_names), list(SPEC.sparse_names),
                                        numeric=NumericOptions(transform=transform))


@pytest.mark.parametrize("transform", ["log1p", "passthrough"])
def test_unscaled_dense_columns_warn_for_exactly_the_models_that_embed_them(transform):
    warned = {name for name in flat_models() if dense_scale_warning(build_model(name, SPEC), pipeline_for(transform))}
    assert warned == EMBED_DENSE
    message = dense_scale_warning(build_model("deepfm", SPEC), pipeline_for(transform))
    assert f"13 dense column(s) are not scaled ({transform}: I1, I2, I3, I4, I5, ...)" in message
    assert "model deepfm embeds dense values" in message and "log1p_standardize" in message


@pytest.mark.parametrize("transform", ["log1p_standardize", "minmax", "log_square_bucket"])
def test_scaled_or_bucketized_dense_columns_do_not_warn(transform):
    assert [n for n in flat_models() if dense_scale_warning(build_model(n, SPEC), pipeline_for(transform))] == []


def test_a_run_on_unscaled_counts_says_why_in_its_summary(tmp_path):
    raw = tmp_path / "synth.tsv"
    write_synthetic(raw, 600, seed=3, progress=False)
    store = tmp_path / "store"
    prepare(PrepareOptions(train=[str(raw)], numeric=NumericOptions(transform="log1p")), store,
            progress=False, log=lambda _: None)
    summaries = {}
    for model in ("deepfm", "dnn"):
        cfg = load_config(None, [f"data.store={json.dumps(str(store))}", f"run_dir={json.dumps(str(tmp_path / model))}",
                                 f"model.name={model}", "model.params.embedding_dim=4", "model.params.hidden_units=[8]",
                                 "train.threads=1", "train.epochs=1", "train.batch_size=256"])
        logs: list[str] = []
        summaries[model] = run_training(cfg, progress=False, log=logs.append)
        assert json.loads((tmp_path / model / "summary.json").read_text())["warnings"] == summaries[model]["warnings"]
    assert any("embeds dense values" in w for w in summaries["deepfm"]["warnings"])
    assert not any("embeds dense values" in w for w in summaries["dnn"]["warnings"])


def spec_for(name: str) -> FeatureSpec:
    """SPEC, with a history sharing C1's table for the sequence models (din, dien, bst)."""
    if not needs_sequence(name):
        return SPEC
    return FeatureSpec(SPEC.dense_names, SPEC.sparse_names, SPEC.vocab_sizes,
                       lists=[ListField("history", 5, SPEC.vocab_sizes[0], shares="C1")])


def ready_config_names() -> list[str]:
    """Every model's ready config but lr's (the linear baseline trains to convergence its own way)."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml") if p.stem in list_models() and p.stem != "lr")


@pytest.mark.parametrize("name", ready_config_names())
def test_ready_configs_let_early_stopping_decide(name):
    """No ready config may end at a cap a careful manual run (30 epochs) would pass."""
    cfg = load_config(PRESET_DIR / f"{name}.yaml")
    train = cfg.train
    assert cfg.model.name == name
    build_model(name, spec_for(name), cfg.model.params)  # the params are valid for the model
    assert train.epochs >= 50 and 1 <= train.early_stopping_patience <= 3 and train.min_epochs <= train.epochs


def test_ready_configs_cover_every_model_but_lr():
    assert set(list_models()) - set(ready_config_names()) <= {"lr"}
    assert base_config_for("deepfm")["train"]["epochs"] >= 50


def load_quality_benchmark():
    spec = importlib.util.spec_from_file_location("quality_bench", ROOT / "benchmarks" / "quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_hanley_mcneil_standard_error_matches_the_spread_of_sampled_aucs():
    quality = load_quality_benchmark()
    rng = np.random.default_rng(0)
    positives, negatives = 60, 240
    labels = np.r_[np.ones(positives), np.zeros(negatives)]
    aucs = [roc_auc_score(labels, np.r_[rng.normal(1.0, 1, positives), rng.normal(0.0, 1, negatives)])
            for _ in range(400)]
    predicted = quality.auc_standard_error(float(np.mean(aucs)), positives, negatives)
    assert predicted == pytest.approx(np.std(aucs), rel=0.15)
    # fewer test rows, more noise
    assert quality.auc_standard_error(0.75, 30, 120) > predicted


def test_quality_protocols_share_everything_but_the_config():
    quality = load_quality_benchmark()
    params, train = quality.protocol_sections("deepfm", "criteo", "manual")
    assert params["embedding_dim"] == 10 and params["hidden_units"] == [400, 400, 400] and params["dropout"] == 0.2
    assert (train["epochs"], train["batch_size"], train["lr"], train["early_stopping_patience"]) == (30, 1024, 0.001, 2)
    ready_params, ready_train = quality.protocol_sections("deepfm", "criteo", "ready")
    assert ready_params == base_config_for("deepfm")["model"]["params"]
    assert {k: v for k, v in ready_train.items() if k != "threads"} == base_config_for("deepfm")["train"]
