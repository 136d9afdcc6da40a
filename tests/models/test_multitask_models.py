"""Contract-style tests of the multi-task models (shared_bottom, mmoe, ple, esmm, aitm):
``forward(dense, sparse) -> logits float32 [B, num_tasks]``, column t = task t.

Shapes, gradients, determinism, learning a planted 2-task signal, ONNX export parity at batch
1 and 1000, MMoE beating chance on two correlated tasks, ESMM's pCTCVR <= pCTR and its CVR
tower, AITM's calibration loss.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ctrlab.export.onnx_export import export_onnx, onnx_parity
from ctrlab.fields import FeatureSpec, ListField
from ctrlab.metrics import roc_auc
from ctrlab.models import build_model, describe_model, get_model_class, hyperparameter_defaults, list_models

MULTI_TASK = ["shared_bottom", "mmoe", "ple", "esmm", "aitm"]
TWO_TASKS_ONLY = {"esmm", "aitm"}

SMALL = {
    "embedding_dim": 4,
    "hidden_units": (16, 16),
    "expert_units": (16, 8),
    "tower_units": (8,),
    "num_experts": 2,
    "num_shared_experts": 2,
}

VARIANTS = [
    ("ple", {"num_levels": 1}),
    ("ple", {"num_levels": 3, "num_tasks": 3}),
    ("mmoe", {"num_tasks": 3}),
    ("shared_bottom", {"num_tasks": 1}),
]
CASES = [pytest.param(name, {}, id=name) for name in MULTI_TASK] + [
    pytest.param(name, extra, id=f"{name}-{'-'.join(f'{k}={v}' for k, v in extra.items())}")
    for name, extra in VARIANTS
]

CRITEO = FeatureSpec.criteo_like([3 + (37 * j) % 120 for j in range(26)])
FRAPPE = FeatureSpec((), tuple(f"C{j + 1}" for j in range(10)), tuple(2 + (13 * j) % 40 for j in range(10)))
# dense_width > n_dense: a weighted list field's weights follow the numeric columns
WEIGHTED = FeatureSpec(("I1", "I2"), ("C1", "C2"), (9, 5), (ListField("tags", 3, 6, kind="multi", weighted=True),))
PLANTED = FeatureSpec(("I1", "I2", "I3"), tuple(f"C{j + 1}" for j in range(5)), (12, 7, 30, 5, 20))
SPECS = {"criteo": CRITEO, "frappe": FRAPPE, "weighted": WEIGHTED}


def params(name: str, extra: dict | None = None) -> dict:
    valid = hyperparameter_defaults(name)
    return {**{k: v for k, v in SMALL.items() if k in valid}, **(extra or {})}


def make(name: str, spec: FeatureSpec, extra: dict | None = None, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(name, spec, params(name, extra))


def num_tasks(model) -> int:
    return model.num_tasks


def make_batch(spec: FeatureSpec, batch: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    dense = torch.rand(batch, spec.dense_width, generator=generator)
    sparse = torch.stack([torch.randint(0, v, (batch,), generator=generator) for v in spec.vocab_sizes], dim=1)
    for field in spec.lists:
        lengths = torch.randint(0, field.length + 1, (batch, 1), generator=generator)
        ids = torch.randint(1, field.vocab_size, (batch, field.length), generator=generator)
        sparse = torch.cat([sparse, torch.where(torch.arange(field.length) < lengths, ids, 0)], dim=1)
    return dense, sparse


def planted_two_tasks(spec: FeatureSpec, rows: int = 256, seed: int = 7, correlation: float = 0.0):
    """Two label columns from additive functions of ids and dense values: click = score0 > median,
    conversion = click and score1 > median (conversion implies click: valid for esmm/aitm too).
    ``correlation`` mixes score0 into score1."""
    generator = torch.Generator().manual_seed(seed)
    dense, sparse = make_batch(spec, rows, seed)
    scores = []
    for _ in range(2):
        score = torch.zeros(rows)
        for j, size in enumerate(spec.vocab_sizes):
            score += torch.randn(size, generator=generator)[sparse[:, j]]
        if spec.n_dense:
            score += dense[:, : spec.n_dense] @ torch.randn(spec.n_dense, generator=generator)
        scores.append(score)
    scores[1] = correlation * scores[0] + (1 - correlation) * scores[1]
    click = scores[0] > scores[0].median()
    conversion = click & (scores[1] > scores[1][click].median())
    return dense, sparse, torch.stack([click, conversion], dim=1).float()


def task_loss(model, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
    if hasattr(model, "calibration_loss"):
        loss = loss + model.calibration_loss(logits)
    return loss


def train_steps(model, dense, sparse, labels, steps: int, lr: float = 0.01) -> list[float]:
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(dense, sparse), labels)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def labels_for(model, rows: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    click = torch.rand(rows, 1, generator=generator) > 0.5
    more = torch.rand(rows, num_tasks(model) - 1, generator=generator) > 0.5
    return torch.cat([click, more & click], dim=1).float()  # later tasks imply task 0 (esmm/aitm)


# --------------------------------------------------------------------------- registry and docs


@pytest.mark.parametrize("name", MULTI_TASK)
def test_registered_and_described(name):
    assert name in list_models()
    cls = get_model_class(name)
    assert cls.multi_task is True
    defaults = hyperparameter_defaults(name)
    assert defaults["num_tasks"] == 2
    info = describe_model(name)
    assert info["summary"] and info["paper"] and info["dense_features"]
    assert all(h["help"] for h in info["hyperparameters"].values()), info["hyperparameters"]
    assert "-> logits float32 [B, num_tasks]" in " ".join(cls.__doc__.split())


@pytest.mark.parametrize("name", sorted(TWO_TASKS_ONLY))
def test_two_task_models_reject_other_task_counts(name):
    for tasks in (1, 3):
        with pytest.raises(ValueError, match="exactly 2 tasks"):
            build_model(name, PLANTED, {"num_tasks": tasks})


def test_bad_structure_is_rejected():
    with pytest.raises(ValueError, match="num_levels"):
        build_model("ple", PLANTED, {"num_levels": 0})
    with pytest.raises(ValueError, match="num_tasks"):
        build_model("mmoe", PLANTED, {"num_tasks": 0})


# --------------------------------------------------------------------------- shapes and gradients


@pytest.mark.parametrize("spec_name", list(SPECS))
@pytest.mark.parametrize("name,extra", CASES)
def test_forward_returns_logits_batch_by_tasks(name, extra, spec_name):
    spec = SPECS[spec_name]
    model = make(name, spec, extra)
    tasks = extra.get("num_tasks", 2)
    dense, sparse = make_batch(spec, 9, seed=1)
    logits = model(dense, sparse)
    assert logits.shape == (9, tasks) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    model.eval()
    assert model(dense[:1], sparse[:1]).shape == (1, tasks)
    # rows are independent in eval mode: row i alone gives row i of the batch
    with torch.no_grad():
        full = model(dense, sparse)
        for i in (0, 4, 8):
            assert torch.allclose(model(dense[i : i + 1], sparse[i : i + 1])[0], full[i], atol=1e-5)


@pytest.mark.parametrize("spec_name", ["criteo", "frappe"])
@pytest.mark.parametrize("name,extra", CASES)
def test_gradients_reach_every_parameter(name, extra, spec_name):
    spec = SPECS[spec_name]
    model = make(name, spec, {**extra, "batch_norm": True})
    dense, sparse = make_batch(spec, 64, seed=2)
    labels = labels_for(model, 64, seed=3)
    task_loss(model, model(dense, sparse), labels).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient: {missing}"
    non_finite = [n for n, p in model.named_parameters() if not torch.isfinite(p.grad).all()]
    assert not non_finite, f"non-finite gradient: {non_finite}"
    all_zero = [n for n, p in model.named_parameters() if not p.grad.abs().gt(0).any()]
    assert not all_zero, f"all-zero gradient: {all_zero}"


@pytest.mark.parametrize("name", MULTI_TASK)
def test_every_task_has_its_own_gradient_path(name):
    """Each task's loss alone reaches the shared embedding, and the towers are task specific."""
    model = make(name, CRITEO)
    dense, sparse = make_batch(CRITEO, 32, seed=4)
    for t in range(2):
        model.zero_grad()
        model(dense, sparse)[:, t].sum().backward()
        assert model.inputs.embedding.sparse.weight.grad.abs().gt(0).any()
        if name == "aitm":  # task 0's head never sees task 1's loss; task 1 reads task 0's tower
            assert (model.heads[0].weight.grad.abs().gt(0).any()) == (t == 0)
        elif name == "esmm":  # pCTCVR = pCTR x pCVR: the CVR tower learns from task 1 only
            assert (model.cvr_tower.layers[-1].weight.grad.abs().gt(0).any()) == (t == 1)
        else:
            grads = [tower.layers[-1].weight.grad for tower in model.towers.towers]
            assert [g is not None and bool(g.abs().gt(0).any()) for g in grads] == [u == t for u in range(2)]


@pytest.mark.parametrize("name", MULTI_TASK)
def test_dense_features_are_used(name):
    for spec in (CRITEO, WEIGHTED):
        dense, sparse = make_batch(spec, 16, seed=4)
        model = make(name, spec).eval()
        with torch.no_grad():
            shifted = dense.clone()
            shifted[:, : spec.n_dense] += 1.0
            assert not torch.allclose(model(dense, sparse), model(shifted, sparse))


# --------------------------------------------------------------------------- learning and determinism


@pytest.mark.parametrize("name,extra", CASES[: len(MULTI_TASK)])
def test_deterministic_under_seed(name, extra):
    dense, sparse, labels = planted_two_tasks(PLANTED, rows=64)
    runs = []
    for _ in range(2):
        model = make(name, PLANTED, extra, seed=123)
        initial = {key: value.clone() for key, value in model.state_dict().items()}
        train_steps(model, dense, sparse, labels, steps=3)
        runs.append((initial, model.state_dict(), model.eval()(dense, sparse).detach()))
    (init_a, state_a, out_a), (init_b, state_b, out_b) = runs
    for key in init_a:
        assert torch.equal(init_a[key], init_b[key]), key
        assert torch.equal(state_a[key], state_b[key]), key
    assert torch.equal(out_a, out_b)
    other = make(name, PLANTED, extra, seed=124)
    assert any(not torch.equal(init_a[k], v) for k, v in other.state_dict().items())


@pytest.mark.parametrize("name", MULTI_TASK)
def test_overfits_planted_two_task_signal(name, one_torch_thread):
    dense, sparse, labels = planted_two_tasks(PLANTED)
    model = make(name, PLANTED)
    losses = train_steps(model, dense, sparse, labels, steps=300)
    assert losses[-1] < 0.5 * losses[0], f"{name}: loss {losses[0]:.3f} -> {losses[-1]:.3f}"
    model.eval()
    with torch.no_grad():
        scores = model(dense, sparse).numpy()
    for t in range(2):
        assert roc_auc(labels[:, t].numpy(), scores[:, t]) > 0.9, (name, t)


def test_mmoe_learns_two_correlated_tasks_on_held_out_rows(one_torch_thread):
    spec = FeatureSpec(("I1", "I2"), tuple(f"C{j + 1}" for j in range(4)), (8, 6, 10, 5))
    dense, sparse, labels = planted_two_tasks(spec, rows=3000, seed=11, correlation=0.6)
    train, test = slice(0, 2000), slice(2000, 3000)
    model = make("mmoe", spec)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    generator = torch.Generator().manual_seed(0)
    for _ in range(5):  # epochs of mini-batches
        order = torch.randperm(2000, generator=generator)
        for start in range(0, 2000, 100):
            rows = order[start : start + 100]
            optimizer.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(dense[rows], sparse[rows]),
                                                                        labels[train][rows])
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        scores = model(dense[test], sparse[test]).numpy()
    aucs = [roc_auc(labels[test, t].numpy(), scores[:, t]) for t in range(2)]
    assert min(aucs) > 0.7, aucs


# --------------------------------------------------------------------------- ESMM and AITM


def test_esmm_ctcvr_never_exceeds_ctr_and_factorises():
    model = make("esmm", CRITEO).eval()
    dense, sparse = make_batch(CRITEO, 500, seed=8)
    with torch.no_grad():
        logits = model(dense, sparse)
        cvr = model.cvr_logits(dense, sparse)
        assert cvr.shape == (500,) and cvr.dtype == torch.float32
        p = torch.sigmoid(logits.double())
        assert (p[:, 1] <= p[:, 0]).all() and (logits[:, 1] <= logits[:, 0]).all()
        assert torch.allclose(p[:, 1], p[:, 0] * torch.sigmoid(cvr.double()), atol=1e-6)
        # extreme towers: still finite and ordered
        for bias in (-200.0, -30.0, 30.0, 200.0):
            for tower in (model.ctr_tower, model.cvr_tower):
                tower.layers[-1].bias.fill_(bias)
            logits = model(dense, sparse)
            assert torch.isfinite(logits).all() and (logits[:, 1] <= logits[:, 0]).all()
            assert (torch.sigmoid(logits[:, 1]) <= torch.sigmoid(logits[:, 0])).all()


def test_esmm_cvr_tower_learns_conversion_given_click(one_torch_thread):
    """Trained on all impressions (click, click and conversion), the CVR tower ranks clicked rows
    by conversion: the entire-space objective ESMM is for."""
    dense, sparse, labels = planted_two_tasks(PLANTED, rows=512, seed=3)
    model = make("esmm", PLANTED)
    train_steps(model, dense, sparse, labels, steps=300)
    model.eval()
    clicked = labels[:, 0] > 0
    with torch.no_grad():
        cvr = model.cvr_logits(dense[clicked], sparse[clicked]).numpy()
        logits = model(dense, sparse)
    assert roc_auc(labels[clicked, 1].numpy(), cvr) > 0.8
    assert (logits[:, 1] <= logits[:, 0]).all()


def test_aitm_calibration_loss_against_loop():
    model = make("aitm", PLANTED)
    logits = torch.randn(50, 2) * 3
    loss = model.calibration_loss(logits)
    expected = 0.0
    for row in logits.tolist():
        expected += max(1 / (1 + math.exp(-row[1])) - 1 / (1 + math.exp(-row[0])), 0.0)
    assert float(loss) == pytest.approx(model.calibrator_weight * expected / 50, rel=1e-5)
    assert float(model.calibration_loss(torch.tensor([[2.0, -1.0], [0.0, 0.0]]))) == 0.0
    assert build_model("aitm", PLANTED, {"calibrator_weight": 0.1}).calibrator_weight == 0.1


# --------------------------------------------------------------------------- ONNX


@pytest.mark.parametrize("spec_name", list(SPECS))
@pytest.mark.parametrize("name,extra", CASES)
def test_onnx_export_parity_with_dynamic_batch(name, extra, spec_name, tmp_path):
    """export_onnx / onnx_parity on [B, T] logits: outputs logits and probabilities
    [batch, T], parity with eager at batch 1 and 1000 (eval mode, after BatchNorm moved)."""
    spec = SPECS[spec_name]
    model = make(name, spec, {**extra, "dropout": 0.1, "batch_norm": True})
    tasks = extra.get("num_tasks", 2)
    dense, sparse = make_batch(spec, 64, seed=5)
    train_steps(model, dense, sparse, labels_for(model, 64, seed=6), steps=2)
    path = export_onnx(model, spec, tmp_path / f"{name}.onnx")
    assert model.training

    import onnx

    graph = onnx.load(str(path)).graph
    assert [value.name for value in graph.input] == ["dense", "sparse"]
    assert [value.name for value in graph.output] == ["logits", "probabilities"]
    for value in graph.output:
        dims = value.type.tensor_type.shape.dim
        # the task axis may be left symbolic by the exporter (e.g. "Concatlogits_dim_1"): onnx_parity
        # checks the actual shapes against eager's [batch, T]
        assert len(dims) == 2 and dims[0].dim_param == "batch" and dims[1].dim_value in (0, tasks)
    for batch in (1, 1000):
        dense, sparse = make_batch(spec, batch, seed=batch)
        assert onnx_parity(model, path, dense, sparse) <= 1e-5


def test_onnx_esmm_extreme_logits_stay_finite(tmp_path):
    model = make("esmm", PLANTED)
    with torch.no_grad():
        model.ctr_tower.layers[-1].bias.fill_(150.0)
        model.cvr_tower.layers[-1].bias.fill_(150.0)
    path = export_onnx(model, PLANTED, tmp_path / "esmm.onnx")
    dense, sparse = make_batch(PLANTED, 20, seed=0)

    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits, probabilities = session.run(None, {"dense": dense.numpy(), "sparse": sparse.numpy()})
    assert np.isfinite(logits).all() and (logits[:, 1] <= logits[:, 0]).all()
    assert onnx_parity(model, path, dense, sparse) <= 1e-4


@pytest.mark.parametrize("name", ["shared_bottom", "mmoe", "ple"])
def test_numeric_features_alone(name):
    """PaddleRec's census configs feed 499 numeric features and no categorical field."""
    spec = FeatureSpec(tuple(f"x{i}" for i in range(7)), (), ())
    torch.manual_seed(0)
    model = build_model(name, spec, {"num_tasks": 2})
    dense = torch.randn(5, 7)
    logits = model(dense, torch.zeros(5, 0, dtype=torch.int64))
    assert logits.shape == (5, 2) and torch.isfinite(logits).all()
    logits.sum().backward()
    changed = dense.clone()
    changed[:, 3] += 1.0
    assert not torch.equal(model(changed, torch.zeros(5, 0, dtype=torch.int64)), logits)
