"""Contract tests run over every registered model (``list_models()``): a new model file
in ctrlab/models/ is picked up here with no other change.

Models are built with small dimensions: SMALL_OVERRIDES is filtered to the
hyperparameters each model actually has, so any model using the common names gets small
sizes; a model with other names runs with its defaults.
"""

from __future__ import annotations

import inspect
import pkgutil

import numpy as np
import pytest
import torch

import ctrlab.models as models_package
from ctrlab.export.onnx_export import export_onnx, onnx_parity
from ctrlab.fields import FeatureSpec, ListField
from ctrlab.models import (
    build_model,
    describe_model,
    format_model_detail,
    format_model_table,
    get_model_class,
    hyperparameter_defaults,
    list_models,
    register,
    single_task_models,
)

MODELS = single_task_models()  # (the multi-task models: tests/models/test_multitask_models.py)

SMALL_OVERRIDES = {
    "embedding_dim": 4,
    "hidden_units": (16, 16),
    "cross_layers": 2,
    "low_rank": 4,
    "num_experts": 2,
    "cin_layer_units": (6, 4),
    "attention_layers": 2,
    "attention_heads": 2,
    "attention_dim": 4,
    "bottom_mlp_units": (16,),
    "top_mlp_units": (16,),
    "mlp1_hidden_units": (16, 16),
    "mlp2_hidden_units": (16,),
    "fs_hidden_units": (8,),
    "fusion_heads": 2,
    "attention_units": (8,),
    "auxiliary_units": (8,),
}

#: Non-default options worth running through the same checks (skipped if the model is gone).
VARIANTS = [
    ("dcn_v2", {"use_low_rank_mixture": True}),
    ("dcn_v2", {"structure": "stacked"}),
    ("gatenet", {"embedding_gate_type": "bit", "hidden_gate_activation": "sigmoid"}),
    ("fibinet", {"bilinear_type": "field_each"}),
    ("fibinet", {"bilinear_type": "field_all"}),
    ("finalmlp", {"fs1_context": ("C1",), "fs2_context": ("C2", "C3")}),
    ("xdeepfm", {"cin_split_half": False}),
    ("din", {"activation": "relu", "attention_activation": "relu", "attention_softmax": True}),
    ("dien", {"gate": "agru"}),
    ("dien", {"gate": "gru"}),
    ("bst", {"sequence_output": "target", "positional": False}),
]

CASES = [pytest.param(name, {}, id=name) for name in MODELS] + [
    pytest.param(name, extra, id=f"{name}-{'-'.join(f'{k}={v}' for k, v in extra.items())}")
    for name, extra in VARIANTS
    if name in MODELS
]

# Specs: Criteo-like (13 dense, 26 sparse, uneven vocab sizes, so offsets matter),
# Frappe-like (no dense, 10 sparse), and a small mixed one for the overfit test.
CRITEO = FeatureSpec.criteo_like([3 + (37 * j) % 120 for j in range(26)])
FRAPPE = FeatureSpec((), tuple(f"C{j + 1}" for j in range(10)), tuple(2 + (13 * j) % 40 for j in range(10)))
SMALL = FeatureSpec(("I1", "I2", "I3"), tuple(f"C{j + 1}" for j in range(5)), (12, 7, 30, 5, 20))
MANY_FIELDS = FeatureSpec(("I1",), tuple(f"C{j + 1}" for j in range(60)), tuple([6] * 60))
SPECS = {"criteo": CRITEO, "frappe": FRAPPE}


def small_params(name: str, extra: dict | None = None) -> dict:
    valid = hyperparameter_defaults(name)
    params = {key: value for key, value in SMALL_OVERRIDES.items() if key in valid}
    params.update(extra or {})
    return params


def make_model(name: str, spec: FeatureSpec, extra: dict | None = None, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(name, spec, small_params(name, extra))


def make_batch(spec: FeatureSpec, batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    dense = torch.randn(batch, spec.n_dense, generator=generator)
    sparse = torch.stack(
        [torch.randint(0, size, (batch,), generator=generator) for size in spec.vocab_sizes], dim=1
    )
    for field in spec.lists:  # a prefix of valid ids (>= 1, in the table it reads), then padding 0
        vocab = spec.vocab_sizes[spec.sparse_names.index(field.shares)] if field.shares in spec.sparse_names \
            else field.vocab_size
        lengths = torch.randint(0, field.length + 1, (batch, 1), generator=generator)
        ids = torch.randint(1, max(vocab, 2), (batch, field.length), generator=generator)
        sparse = torch.cat([sparse, torch.where(torch.arange(field.length) < lengths, ids, 0)], dim=1)
    return dense, sparse


def spec_for(name: str, spec: FeatureSpec) -> FeatureSpec:
    """The spec model ``name`` is tested on: ``spec`` itself, or for a model that needs a
    behaviour sequence (class attribute ``needs_sequence = True``: din, dien, bst) ``spec``
    plus one sequence field of length 5 sharing the table of its sparse field with the most ids
    (the target; the first such field), so histories vary."""
    if not getattr(get_model_class(name), "needs_sequence", False):
        return spec
    j = spec.vocab_sizes.index(max(spec.vocab_sizes))
    target = spec.sparse_names[j]
    history = ListField(f"{target}_history", 5, spec.vocab_sizes[j], shares=target)
    return FeatureSpec(spec.dense_names, spec.sparse_names, spec.vocab_sizes, (history,))


def planted_dataset(spec: FeatureSpec, rows: int = 256, seed: int = 7):
    """Rows whose label is a fixed additive function of ids and dense values (balanced)."""
    generator = torch.Generator().manual_seed(seed)
    dense, sparse = make_batch(spec, rows, seed)
    score = torch.zeros(rows)
    for j, size in enumerate(spec.vocab_sizes):
        score += torch.randn(size, generator=generator)[sparse[:, j]]
    if spec.n_dense:
        score += dense @ torch.randn(spec.n_dense, generator=generator)
    labels = (score > score.median()).float()
    return dense, sparse, labels


def train_steps(model, dense, sparse, labels, steps: int, lr: float = 0.01) -> list[float]:
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    losses = []
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        loss = loss_fn(model(dense, sparse), labels)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


# --------------------------------------------------------------------------- registry


def test_zoo_has_the_planned_models():
    planned = {"lr", "fm", "ffm", "dnn", "wide_deep", "deepfm", "dcn", "dcn_v2", "gatenet", "deepfefm", "dlrm",
               "xdeepfm", "autoint", "autoint_plus", "fibinet", "finalmlp"}  # fmt: skip
    assert planned <= set(MODELS)


def test_every_model_module_registers_a_model():
    """Discovery imports every file in ctrlab/models/, and each file contributes a model."""
    registered_modules = {get_model_class(name).__module__ for name in list_models()}
    for module in pkgutil.iter_modules(models_package.__path__):
        if module.name == "registry" or module.name.startswith("_"):
            continue
        assert f"ctrlab.models.{module.name}" in registered_modules, module.name


@pytest.mark.parametrize("name", MODELS)
def test_constructor_follows_contract(name):
    params = list(inspect.signature(get_model_class(name).__init__).parameters.values())
    assert params[1].name == "spec"
    for param in params[2:]:
        assert param.kind is inspect.Parameter.KEYWORD_ONLY and param.default is not inspect.Parameter.empty
    assert not {"device", "loss", "optimizer"} & {param.name for param in params}


@pytest.mark.parametrize("name", MODELS)
def test_describe_model(name):
    info = describe_model(name)
    assert info["name"] == name
    assert info["summary"] and info["paper"] and info["dense_features"]
    assert list(info["hyperparameters"]) == list(hyperparameter_defaults(name))
    for hyper in info["hyperparameters"].values():
        assert hyper["help"], f"{name}: hyperparameter without help text"
    detail = format_model_detail(name)
    assert name in detail and "paper:" in detail
    assert name in format_model_table()


@pytest.mark.parametrize("name", MODELS)
def test_unknown_params_are_rejected_with_valid_names(name):
    valid = list(hyperparameter_defaults(name))
    with pytest.raises(ValueError) as error:
        build_model(name, SMALL, {"not_a_param": 1})
    message = str(error.value)
    assert "not_a_param" in message and name in message
    for key in valid:
        assert key in message
    # Passing it straight to the constructor fails too (no **kwargs swallowing it).
    with pytest.raises(TypeError):
        get_model_class(name)(SMALL, not_a_param=1)


def test_misspelled_param_gets_a_suggestion():
    with pytest.raises(ValueError, match=r"'embeding_dim' \(did you mean 'embedding_dim'\?\)"):
        build_model("deepfm", SMALL, {"embeding_dim": 4})
    with pytest.raises(ValueError, match=r"'hidden_units' must be a list"):
        build_model("deepfm", SMALL, {"hidden_units": 16})
    with pytest.raises(ValueError, match=r"'embedding_dim' must be an integer"):
        build_model("deepfm", SMALL, {"embedding_dim": 4.5})
    model = build_model("deepfm", SMALL, {"hidden_units": [8, 8]})  # YAML lists are fine
    assert model(*make_batch(SMALL, 3, 0)).shape == (3,)


def test_unknown_model_lists_registered_names():
    with pytest.raises(ValueError, match=r"Did you mean 'deepfm'\?.*Registered models: .*xdeepfm"):
        build_model("deepfmm", SMALL, {})


def test_register_enforces_the_constructor_contract():
    with pytest.raises(TypeError, match="keyword-only"):

        @register("bad_kwargs_model")
        class BadKwargs(torch.nn.Module):
            def __init__(self, spec, **kwargs):
                super().__init__()

    with pytest.raises(TypeError, match="needs a default"):

        @register("bad_default_model")
        class NoDefault(torch.nn.Module):
            def __init__(self, spec, *, width: int):
                super().__init__()

    with pytest.raises(ValueError, match="already registered"):

        @register("deepfm")
        class Duplicate(torch.nn.Module):
            def __init__(self, spec):
                super().__init__()

    assert "bad_kwargs_model" not in list_models() and "bad_default_model" not in list_models()


# --------------------------------------------------------------------------- shapes and gradients


@pytest.mark.parametrize("spec_name", ["criteo", "frappe", "many_fields"])
@pytest.mark.parametrize("name,extra", CASES)
def test_forward_returns_logits_of_shape_batch(name, extra, spec_name):
    spec = spec_for(name, {"criteo": CRITEO, "frappe": FRAPPE, "many_fields": MANY_FIELDS}[spec_name])
    model = make_model(name, spec, extra)
    dense, sparse = make_batch(spec, 9, seed=1)
    logits = model(dense, sparse)
    assert logits.shape == (9,) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    model.eval()
    assert model(dense[:1], sparse[:1]).shape == (1,)


@pytest.mark.parametrize("spec_name", list(SPECS))
@pytest.mark.parametrize("name,extra", CASES)
def test_gradients_reach_every_parameter(name, extra, spec_name):
    """Every parameter gets a finite gradient with at least one nonzero entry from one
    batch (64 rows cover every embedding table; rows not looked up are zero, which is
    fine since the check is per parameter tensor)."""
    spec = spec_for(name, SPECS[spec_name])
    model = make_model(name, spec, extra)
    dense, sparse = make_batch(spec, 64, seed=2)
    labels = (torch.rand(64, generator=torch.Generator().manual_seed(3)) > 0.5).float()
    loss = torch.nn.functional.binary_cross_entropy_with_logits(model(dense, sparse), labels)
    if hasattr(model, "auxiliary_loss"):  # (DIEN: its auxiliary network learns from this loss only)
        loss = loss + model.auxiliary_loss(dense, sparse)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient: {missing}"
    non_finite = [n for n, p in model.named_parameters() if not torch.isfinite(p.grad).all()]
    assert not non_finite, f"non-finite gradient: {non_finite}"
    all_zero = [n for n, p in model.named_parameters() if not p.grad.abs().gt(0).any()]
    assert not all_zero, f"all-zero gradient: {all_zero}"


def test_dense_features_are_used():
    """Changing only the dense values changes the output of every model (spec with dense)."""
    for name in MODELS:
        spec = spec_for(name, CRITEO)
        dense, sparse = make_batch(spec, 16, seed=4)
        model = make_model(name, spec).eval()
        with torch.no_grad():
            assert not torch.allclose(model(dense, sparse), model(dense + 1.0, sparse)), name


# --------------------------------------------------------------------------- learning and determinism


@pytest.mark.parametrize("name", MODELS)
def test_overfits_planted_signal(name):
    spec = spec_for(name, SMALL)
    dense, sparse, labels = planted_dataset(spec)
    model = make_model(name, spec)
    losses = train_steps(model, dense, sparse, labels, steps=300)
    assert losses[-1] < 0.5 * losses[0], f"{name}: loss {losses[0]:.3f} -> {losses[-1]:.3f}"


@pytest.mark.parametrize("name", MODELS)
def test_deterministic_under_seed(name):
    spec = spec_for(name, SMALL)
    dense, sparse, labels = planted_dataset(spec, rows=64)
    runs = []
    for _ in range(2):
        model = make_model(name, spec, seed=123)
        initial = {key: value.clone() for key, value in model.state_dict().items()}
        train_steps(model, dense, sparse, labels, steps=3)
        runs.append((initial, model.state_dict(), model.eval()(dense, sparse).detach()))
    (init_a, state_a, out_a), (init_b, state_b, out_b) = runs
    for key in init_a:
        assert torch.equal(init_a[key], init_b[key]), key
        assert torch.equal(state_a[key], state_b[key]), key
    assert torch.equal(out_a, out_b)
    # A different seed gives a different model.
    other = make_model(name, spec, seed=124)
    assert any(not torch.equal(init_a[k], v) for k, v in other.state_dict().items())


# --------------------------------------------------------------------------- ONNX


@pytest.mark.parametrize("spec_name", list(SPECS))
@pytest.mark.parametrize("name,extra", CASES)
def test_onnx_export_parity_with_dynamic_batch(name, extra, spec_name, tmp_path):
    """Export once, then check onnxruntime against eager at batch 1 and 1000 (eval mode).

    Dropout and BatchNorm are switched on where the model has them, and a few training
    steps move the BatchNorm running statistics, so eval-mode export is really tested.
    """
    spec = spec_for(name, SPECS[spec_name])
    valid = hyperparameter_defaults(name)
    train_mode_options = {key: value for key, value in {"dropout": 0.1, "batch_norm": True}.items() if key in valid}
    model = make_model(name, spec, {**extra, **train_mode_options})
    dense, sparse = make_batch(spec, 64, seed=5)
    train_steps(model, dense, sparse, (torch.rand(64) > 0.5).float(), steps=2)
    path = export_onnx(model, spec, tmp_path / f"{name}.onnx")
    assert model.training, "export must restore the model's mode"

    import onnx

    graph = onnx.load(str(path)).graph
    assert [value.name for value in graph.input] == ["dense", "sparse"]
    assert [value.name for value in graph.output] == ["logits", "probabilities"]
    for value in graph.input:
        assert value.type.tensor_type.shape.dim[0].dim_param == "batch"
    for batch in (1, 1000):
        dense, sparse = make_batch(spec, batch, seed=batch)
        assert onnx_parity(model, path, dense, sparse) <= 1e-5


def test_onnx_parity_accepts_numpy_and_reports_differences(tmp_path):
    model = make_model("fm", FRAPPE)
    path = export_onnx(model, FRAPPE, tmp_path / "fm.onnx")
    dense, sparse = make_batch(FRAPPE, 5, seed=0)
    assert onnx_parity(model, path, dense.numpy(), sparse.numpy()) <= 1e-5
    with torch.no_grad():
        model.linear.bias += 1.0  # eager now differs from the exported graph by exactly 1 logit
    assert onnx_parity(model, path, dense, sparse) == pytest.approx(1.0, abs=1e-5)
    assert np.isfinite(onnx_parity(model, path, dense[:0], sparse[:0]))
