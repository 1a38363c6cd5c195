"""Bad input to the public API: a clear error naming the argument, and nothing half-done.

Every case either raises an error whose message names the argument and the problem, or is
accepted with the documented result (e.g. float64 inputs become float32). An operation that
fails leaves its model exactly as it was: same state_dict, same modules, same train/eval mode.
"""

import copy
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

import kdlib
from kdlib import losses as L
from kdlib.data import Dataset


@pytest.fixture(scope="module")
def data():
    return kdlib.load("digits").subset(200, 60)


@pytest.fixture(scope="module")
def teacher(data):
    torch.manual_seed(0)
    net = kdlib.mlp(data.in_features, [32], data.num_classes)
    kdlib.fit(net, data, epochs=2, lr=3e-3, seed=0, progress=False)
    return net


def _student(data, seed=1):
    torch.manual_seed(seed)
    return kdlib.mlp(data.in_features, [8], data.num_classes)


def _snapshot(model: nn.Module):
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return state, [(n, type(m)) for n, m in model.named_modules()], model.training


def _assert_unchanged(model: nn.Module, snap) -> None:
    state, modules, training = snap
    now = model.state_dict()
    assert now.keys() == state.keys(), "the failed call added or removed tensors"
    for k, v in state.items():
        assert torch.equal(now[k], v), f"the failed call changed {k}"
    assert [(n, type(m)) for n, m in model.named_modules()] == modules
    assert model.training == training


def _logits(n=4, c=5, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, c, generator=g).to(dtype), torch.randn(n, c, generator=g).to(dtype)


# ============================================================================================
# Losses: dtypes, shapes, empty batches, non-finite values, bad hyper-parameters
SOFT_LOSSES = {
    "soft_target_kl": lambda s, t: L.soft_target_kl(s, t, T=2.0),
    "soft_target_ce": lambda s, t: L.soft_target_ce(s, t, T=2.0),
    "kd_loss": lambda s, t: L.kd_loss(s, t, torch.zeros(len(s), dtype=torch.long)),
    "mse_logits": lambda s, t: L.mse_logits(s, t),
    "mse_kd_loss": lambda s, t: L.mse_kd_loss(s, t, torch.zeros(len(s), dtype=torch.long)),
}


@pytest.mark.parametrize("fn", SOFT_LOSSES.values(), ids=SOFT_LOSSES.keys())
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool])
def test_integer_logits_are_refused(fn, dtype):
    s, t = _logits()
    with pytest.raises(TypeError, match="student_logits must be a floating-point tensor"):
        fn((s * 3).to(dtype), t)
    with pytest.raises(TypeError, match="teacher_logits must be a floating-point tensor"):
        fn(s, (t * 3).to(dtype))


def test_integer_logits_are_refused_by_soften():
    with pytest.raises(TypeError, match="logits must be a floating-point tensor"):
        L.soften(torch.tensor([[1, 2, 3]]), T=2.0)


@pytest.mark.parametrize("fn", SOFT_LOSSES.values(), ids=SOFT_LOSSES.keys())
def test_empty_batch_is_refused_not_nan(fn):
    s, t = torch.zeros(0, 5), torch.zeros(0, 5)
    with pytest.raises(ValueError, match="student_logits is an empty batch"):
        fn(s, t)


@pytest.mark.parametrize(
    "fn",
    [
        lambda f_s, f_t: L.hint_loss(f_s, f_t),
        lambda f_s, f_t: L.cosine_feature_loss(f_s, f_t),
        lambda f_s, f_t: L.attention_transfer_loss(f_s, f_t),
    ],
    ids=["hint", "cosine", "attention"],
)
def test_empty_feature_batch_is_refused(fn):
    with pytest.raises(ValueError, match="f_s must be a non-empty batch"):
        fn(torch.zeros(0, 3, 4, 4), torch.zeros(0, 3, 4, 4))


@pytest.mark.parametrize("name", ["hint_loss", "cosine_feature_loss", "attention_transfer_loss"])
def test_integer_features_are_refused(name):
    f = torch.ones(2, 3, 4, 4)
    with pytest.raises(TypeError, match="f_s must be a floating-point tensor"):
        getattr(L, name)(f.long(), f)


@pytest.mark.parametrize("shape", [(4,), (4, 5, 2), ()])
def test_logits_of_the_wrong_rank(shape):
    with pytest.raises(ValueError, match=r"student_logits must have shape \(N, C\)"):
        L.soft_target_kl(torch.zeros(shape), torch.zeros(shape))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_logits_name_the_rows(bad):
    s, t = _logits()
    t[2, 1] = bad
    with pytest.raises(ValueError, match=r"teacher_logits contains NaN or inf .*\[2\]"):
        L.soft_target_kl(s, t)


def test_non_finite_features_are_refused():
    f = torch.ones(2, 4)
    with pytest.raises(ValueError, match="f_t contains NaN or inf"):
        L.hint_loss(f, f * float("nan"))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"T": float("inf")}, "temperature T must be a finite number"),
        ({"T": float("nan")}, "temperature T must be a finite number"),
        ({"T": True}, "temperature T must be a number > 0"),
        ({"alpha": float("nan")}, "alpha must be a finite number"),
        ({"alpha": "0.5"}, "alpha must be a number"),
    ],
)
def test_non_finite_or_wrongly_typed_hyper_parameters(kwargs, match):
    s, t = _logits()
    with pytest.raises(ValueError, match=match):
        L.kd_loss(s, t, torch.zeros(4, dtype=torch.long), **kwargs)


@pytest.mark.parametrize("y", [torch.zeros(4), torch.zeros(4, dtype=torch.bool)])
def test_labels_must_be_integers(y):
    s, t = _logits()
    with pytest.raises(TypeError, match="labels y must be an integer tensor"):
        L.kd_loss(s, t, y)


def test_labels_of_the_wrong_shape():
    s, t = _logits()
    with pytest.raises(ValueError, match=r"labels y must have shape \(4,\)"):
        L.kd_loss(s, t, torch.zeros(4, 1, dtype=torch.long))


def test_mse_kd_lam_must_be_finite():
    s, t = _logits()
    with pytest.raises(ValueError, match="lam must be a finite number"):
        L.mse_kd_loss(s, t, torch.zeros(4, dtype=torch.long), lam=float("inf"))


# ============================================================================================
# Dataset.from_tensors: conversions that are safe, refusals that name the argument
def _arrays(n_train=20, n_test=8, d=6, classes=3):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n_train + n_test, d))
    y = np.arange(n_train + n_test) % classes
    return X[:n_train], y[:n_train], X[n_train:], y[n_train:]


def test_from_tensors_converts_float64_and_int32():
    X_tr, y_tr, X_te, y_te = _arrays()
    data = Dataset.from_tensors(X_tr, y_tr.astype(np.int32), X_te, y_te.astype(np.int32))
    assert data.X_train.dtype == torch.float32 and data.y_train.dtype == torch.int64
    assert data.num_classes == 3 and data.input_shape == (6,)
    torch.testing.assert_close(data.X_train, torch.from_numpy(X_tr).float())
    assert torch.equal(data.y_test, torch.from_numpy(y_te).long())


def test_from_tensors_accepts_tensors_and_whole_float_labels():
    X_tr, y_tr, X_te, y_te = (torch.from_numpy(a) for a in _arrays())
    data = Dataset.from_tensors(X_tr.float(), y_tr.double(), X_te, y_te, num_classes=5)
    assert data.y_train.dtype == torch.int64 and data.num_classes == 5
    assert data.classes == ["0", "1", "2", "3", "4"]


def test_from_tensors_data_trains():
    X_tr, y_tr, X_te, y_te = _arrays(60, 20)
    data = Dataset.from_tensors(X_tr, y_tr, X_te, y_te, name="mine")
    net = kdlib.mlp(6, [4], 3)
    hist = kdlib.fit(net, data, epochs=1, seed=0, progress=False)
    assert np.isfinite(hist.last("loss"))


def _with(i, value):
    arrays = list(_arrays())
    arrays[i] = value
    return arrays


X_tr, y_tr, X_te, y_te = _arrays()
FROM_TENSORS_BAD = [
    (_with(1, y_tr + 0.5), ValueError, "y_train holds fractional"),
    (
        _with(3, np.where(y_te == 0, np.nan, y_te)),
        ValueError,
        "y_test holds fractional or non-finite",
    ),
    (_with(0, np.where(X_tr > 1, np.nan, X_tr)), ValueError, "X_train contains NaN or inf"),
    (_with(2, np.full_like(X_te, np.inf)), ValueError, "X_test contains NaN or inf"),
    (_with(1, y_tr[:-1]), ValueError, "X_train has 20 rows but y_train has 19"),
    (_with(2, X_te[:-2]), ValueError, "X_test has 6 rows but y_test has 8"),
    (_with(0, X_tr[:, 0]), ValueError, "X_train must be .* at least 2-D"),
    (_with(1, y_tr[:, None]), ValueError, "y_train must be 1-D"),
    (_with(0, X_tr[:0]), ValueError, "X_train is empty"),
    (_with(3, y_te[:0]), ValueError, "y_test is empty"),
    (_with(2, X_te[:, :3]), ValueError, "both splits need the same input shape"),
    (_with(0, (X_tr * 255).astype(np.uint8)), TypeError, "X_train has dtype torch.uint8"),
    (_with(1, y_tr > 0), TypeError, "y_train has dtype torch.bool"),
    (_with(1, -y_tr), ValueError, "y_train holds negative values"),
    (_with(0, X_tr.tolist()), TypeError, "X_train must be a torch.Tensor or a NumPy array"),
    (_with(1, np.array(["a"] * 20, dtype=object)), TypeError, "y_train is a NumPy array of"),
]


@pytest.mark.parametrize("arrays, error, match", FROM_TENSORS_BAD)
def test_from_tensors_refuses(arrays, error, match):
    with pytest.raises(error, match=match):
        Dataset.from_tensors(*arrays)


def test_from_tensors_checks_num_classes_and_names():
    with pytest.raises(ValueError, match=r"num_classes must be an integer >= 3"):
        Dataset.from_tensors(*_arrays(), num_classes=2)
    with pytest.raises(ValueError, match="classes has 2 names but there are 3 classes"):
        Dataset.from_tensors(*_arrays(), classes=["a", "b"])


# ============================================================================================
# fit: non-finite inputs, wrong outputs, bad options; the model is left as it was
def _nan_data(data, split="X_train"):
    X = getattr(data, split).clone()
    X[3, 0, 0, 0] = float("nan")
    return Dataset(**{**data.__dict__, split: X})


@pytest.mark.parametrize("split", ["X_train", "X_test"])
def test_fit_refuses_nan_inputs_and_leaves_the_model(data, split):
    net = _student(data)
    snap = _snapshot(net)
    with pytest.raises(ValueError, match=rf"data.{split} contains NaN or inf \(rows \[3\]\)"):
        kdlib.fit(net, _nan_data(data, split), epochs=1, progress=False)
    _assert_unchanged(net, snap)


def test_fit_refuses_labels_out_of_range(data):
    bad = Dataset(**{**data.__dict__, "y_train": data.y_train + 5})
    with pytest.raises(ValueError, match=r"train labels out of range.*\[0, 9\]"):
        kdlib.fit(_student(data), bad, epochs=1, progress=False)


def test_fit_refuses_a_model_with_the_wrong_number_of_outputs(data):
    net = kdlib.mlp(data.in_features, [8], 3)
    snap = _snapshot(net)
    with pytest.raises(ValueError, match=r"model outputs shape \(2, 3\) but 'digits' has 10"):
        kdlib.fit(net, data, epochs=1, progress=False)
    _assert_unchanged(net, snap)


def test_fit_refuses_a_model_that_returns_a_tuple(data):
    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = _student(data)

        def forward(self, x):
            return self.net(x), x

    with pytest.raises(ValueError, match="model outputs shape tuple"):
        kdlib.fit(Pair(), data, epochs=1, progress=False)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"epochs": True}, ValueError, "epochs must be a positive integer"),
        ({"lr": float("nan")}, ValueError, "lr must be a finite number"),
        ({"batch_size": 0}, ValueError, "batch_size must be a positive integer"),
        ({"batch_size": 2.5}, ValueError, "batch_size must be a positive integer"),
        ({"weight_decay": -1.0}, ValueError, "weight_decay must be a number >= 0"),
        ({"evaluate_every": -1}, ValueError, "evaluate_every must be an integer >= 0"),
        ({"augment": "shift"}, TypeError, "augment must be a function"),
        ({"momentum": 0.9}, TypeError, r"fit\(\) got unknown option\(s\) \['momentum'\]"),
        ({"amp": "fp8"}, ValueError, "amp must be one of False, True, 'fp16' or 'bf16'"),
    ],
)
def test_fit_bad_options_leave_the_model(data, kwargs, error, match):
    net = _student(data)
    snap = _snapshot(net)
    with pytest.raises(error, match=match):
        kdlib.fit(net, data, **{"epochs": 1, "progress": False, **kwargs})
    _assert_unchanged(net, snap)


def test_fit_refuses_data_that_is_not_a_dataset(data):
    with pytest.raises(TypeError, match="data must be a kdlib Dataset"):
        kdlib.fit(_student(data), (data.X_train, data.y_train), epochs=1, progress=False)


def test_predict_refuses_empty_and_non_tensor_inputs(data):
    net = _student(data)
    with pytest.raises(ValueError, match="X is empty"):
        kdlib.predict(net, data.X_train[:0])
    with pytest.raises(TypeError, match="X must be a torch.Tensor"):
        kdlib.predict(net, data.X_train.numpy())


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_missing_device_is_named(data):
    net = _student(data)
    snap = _snapshot(net)
    with pytest.raises(RuntimeError, match="device 'cuda' was asked for, but CUDA is not"):
        kdlib.fit(net, data, epochs=1, device="cuda", progress=False)
    _assert_unchanged(net, snap)


# ============================================================================================
# distill and distill_features: teachers that return tuples, wrong architectures and devices
def test_teacher_that_returns_a_tuple(data, teacher):
    class WithFeatures(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = copy.deepcopy(teacher)

        def forward(self, x):
            return self.net(x), x.flatten(1)

    student = _student(data)
    snap = _snapshot(student)
    with pytest.raises(TypeError, match="the model returned a tuple, not a logits tensor"):
        kdlib.distill(student, WithFeatures(), data, epochs=1, progress=False)
    _assert_unchanged(student, snap)


def test_teacher_with_the_wrong_number_of_classes(data):
    wrong = kdlib.mlp(data.in_features, [8], 4)
    student = _student(data)
    snap, t_snap = _snapshot(student), _snapshot(wrong)
    with pytest.raises(ValueError, match=r"the teacher outputs shape \(2, 4\)"):
        kdlib.distill(student, wrong, data, epochs=1, progress=False)
    _assert_unchanged(student, snap)
    _assert_unchanged(wrong, t_snap)


def test_teacher_on_the_meta_device(data, teacher):
    meta = copy.deepcopy(teacher).to("meta")
    with pytest.raises(ValueError, match="the teacher is on the meta device"):
        kdlib.distill(_student(data), meta, data, epochs=1, progress=False)


def test_distill_refuses_data_that_is_not_a_dataset(data, teacher, cnns):
    pair = (data.X_train, data.y_train)
    with pytest.raises(TypeError, match="data must be a kdlib Dataset"):
        kdlib.distill(_student(data), teacher, pair, epochs=1, progress=False)
    with pytest.raises(TypeError, match="data must be a kdlib Dataset"):
        kdlib.distill_features(cnns[1], cnns[0], pair, {"stage2": "stage2"}, progress=False)


def test_teacher_that_is_not_a_module(data, teacher):
    with pytest.raises(TypeError, match="teacher must be an nn.Module"):
        kdlib.distill(_student(data), teacher.forward, data, epochs=1, progress=False)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"T": float("inf")}, "temperature T must be a finite number"),
        ({"alpha": 2}, r"alpha must be a number in \[0, 1\]"),
        ({"lam": -1}, "lam must be a number >= 0"),
        ({"loss": "kl"}, "unknown loss 'kl'"),
        ({"loss": ["kd"]}, r"unknown loss \['kd'\]; use one of 'kd'"),
        ({"loss": None}, "loss=None needs an extra_loss"),
        ({"teacher_logits": torch.zeros(3, 10)}, r"teacher_logits have shape \(3, 10\)"),
        ({"cache_teacher_logits": True, "augment": kdlib.course.random_shift(1)}, "with augment"),
    ],
)
def test_distill_bad_arguments_leave_student_and_teacher(data, teacher, kwargs, match):
    student = _student(data)
    snap, t_snap = _snapshot(student), _snapshot(teacher)
    with pytest.raises(ValueError, match=match):
        kdlib.distill(student, teacher, data, epochs=1, progress=False, **kwargs)
    _assert_unchanged(student, snap)
    _assert_unchanged(teacher, t_snap)


def test_distill_teacher_logits_with_nan(data, teacher):
    z = kdlib.predict(teacher, data.X_train)
    z[7, 2] = float("nan")
    with pytest.raises(ValueError, match=r"teacher_logits contains NaN|NaN/inf on training rows"):
        kdlib.distill(_student(data), teacher, data, teacher_logits=z, epochs=1, progress=False)


@pytest.fixture(scope="module")
def cnns():
    torch.manual_seed(0)
    return kdlib.cnn((4, 8), input_shape=(1, 8, 8)), kdlib.cnn((2, 4), input_shape=(1, 8, 8))


@pytest.mark.parametrize(
    "pairs, loss, kwargs, error, match",
    [
        ({"stage2": "head.fc1"}, "hint", {}, ValueError, "feature ranks differ"),
        ({"head.fc1": "head.fc1"}, "at", {}, ValueError, "attention transfer needs feature maps"),
        ({"stage9": "stage2"}, "hint", {}, ValueError, "student has no layer named 'stage9'"),
        ({"stage2": "stage2"}, "hint", {"beta": float("nan")}, ValueError, "beta must be a"),
        ({"stage2": "stage2"}, "hint", {"method": "fitnets", "hint_epochs": 0}, ValueError,
         "hint_epochs must be a positive integer"),
        ({"stage2": "stage2"}, 3, {}, TypeError, "loss must be a name or a callable"),
    ],
)  # fmt: skip
def test_distill_features_refuses_before_training(data, cnns, pairs, loss, kwargs, error, match):
    teacher, student = cnns
    snap = _snapshot(student)
    with pytest.raises(error, match=match):
        kdlib.distill_features(student, teacher, data, pairs, loss, 1, progress=False, **kwargs)
    _assert_unchanged(student, snap)


@pytest.mark.parametrize("shape", [(8, 16, 32), (8, 2, 3, 4, 5), (8,)])
def test_projector_on_other_feature_shapes_says_how_to_go_on(shape):
    with pytest.raises(ValueError, match=r"projectors=\{student_layer: module\}"):
        kdlib.projector(shape, (8, 32))
    with pytest.raises(ValueError, match="tap a layer whose output has one of these shapes"):
        kdlib.projector((8, 32), shape)


def test_projector_refuses_a_tensor_for_a_shape():
    with pytest.raises(TypeError, match="must be a shape such as f.shape, not a tensor"):
        kdlib.projector(torch.zeros(2, 3), (2, 3))


def test_own_regressor_for_sequence_features_works(data):
    # the way on that the projector's message suggests: a regressor of your own
    def seq(d):  # features (N, L, D) at "tokens": a sequence of 4 tokens of width d
        return nn.Sequential(
            OrderedDict(
                flatten=nn.Flatten(), embed=nn.Linear(64, 4 * d), tokens=nn.Unflatten(1, (4, d)),
                act=nn.ReLU(), merge=nn.Flatten(), head=nn.Linear(4 * d, 10),
            )
        )  # fmt: skip

    torch.manual_seed(0)
    teacher, student = seq(6), seq(3)
    pairs = {"tokens": "tokens"}
    with pytest.raises(ValueError, match="neither a vector batch"):
        kdlib.distill_features(student, teacher, data, pairs, "hint", 1, progress=False)
    regressor = {"tokens": nn.Linear(3, 6)}  # acts on the last dimension: (N, 4, 3) -> (N, 4, 6)
    hist = kdlib.distill_features(
        student, teacher, data, pairs, "hint", 1, projectors=regressor, progress=False, seed=0
    )
    assert np.isfinite(hist.last("loss"))


# ============================================================================================
# Pruning: all weights, amounts, architectures that do not fit, layers shrink cannot rebuild
@pytest.mark.parametrize(
    "amount, scope",
    [(1.0, "layer"), (1.0, "global"), (1, "layer"), ({"fc1": 0.5, "fc2": 1.0}, "layer")],
)
def test_magnitude_prune_refuses_every_weight(data, amount, scope):
    net = _student(data)
    snap = _snapshot(net)
    if amount == 1:  # a count: every weight of the smallest layer
        amount = 8 * 10
        kwargs = {"layers": ["fc2"]}
    else:
        kwargs = {}
    with pytest.raises(ValueError, match="would prune all .* remaining weights"):
        kdlib.magnitude_prune(net, amount, scope=scope, **kwargs)
    _assert_unchanged(net, snap)
    assert not any(k.endswith("_mask") for k in net.state_dict())


@pytest.mark.parametrize(
    "amount, error, match",
    [
        (1.5, ValueError, r"fraction outside \[0, 1\]"),
        (float("nan"), ValueError, r"fraction outside \[0, 1\]"),
        ("0.5", TypeError, "float fraction or an int count"),
        (True, TypeError, "float fraction or an int count"),
        ({"fc9": 0.5}, ValueError, r"unknown layer name\(s\) \['fc9'\]"),
    ],
)
def test_magnitude_prune_bad_amounts_leave_the_model(data, amount, error, match):
    net = _student(data)
    snap = _snapshot(net)
    with pytest.raises(error, match=match):
        kdlib.magnitude_prune(net, amount)
    _assert_unchanged(net, snap)


@pytest.mark.parametrize("sparsity", [1.0, -0.1, float("nan")])
def test_prune_to_sparsity_refuses(data, sparsity):
    net = _student(data)
    snap = _snapshot(net)
    with pytest.raises(ValueError, match="sparsity"):
        kdlib.prune_to_sparsity(net, sparsity)
    _assert_unchanged(net, snap)


def test_structured_prune_refuses_every_unit_and_leaves_the_model(data):
    net = _student(data)
    snap = _snapshot(net)
    with pytest.raises(ValueError, match="would prune all .* units of layer 'fc1'"):
        kdlib.structured_prune(net, 1.0)
    _assert_unchanged(net, snap)


def _saved(tmp_path, model, name="net.pt"):
    return kdlib.save_pruned(model, tmp_path / name)


@pytest.mark.parametrize(
    "source, target, match",
    [
        (lambda: kdlib.model("tiny"), lambda: kdlib.model("cnn-thin"), "another architecture"),
        (lambda: kdlib.model("cnn-student"), lambda: kdlib.model("cnn-teacher"),
         "another architecture"),
        (lambda: kdlib.mlp(784, [64, 64], 10), lambda: kdlib.mlp(784, [32, 32], 10),
         "larger than the model's"),
        (lambda: kdlib.mlp(784, [32, 16], 10), lambda: kdlib.model("tiny"),
         "another architecture"),
    ],
)  # fmt: skip
def test_load_pruned_into_another_architecture(tmp_path, source, target, match):
    torch.manual_seed(0)
    src = kdlib.magnitude_prune(source(), 0.5)
    path = _saved(tmp_path, src)
    net = target()
    snap = _snapshot(net)
    with pytest.raises(ValueError, match=match):
        kdlib.load_pruned(net, path)
    _assert_unchanged(net, snap)


def test_load_pruned_without_layer_types_still_refuses_before_touching(tmp_path):
    # a file as older versions wrote it (no layer types): the tensors must still fit
    src = kdlib.magnitude_prune(kdlib.mlp(784, [32, 16], 10), 0.5)
    state = {k: v.detach() for k, v in src.state_dict().items()}
    torch.save({"format": "kdlib-pruned-1", "state_dict": state}, tmp_path / "old.pt")
    net = kdlib.magnitude_prune(kdlib.model("tiny"), 0.3)
    snap = _snapshot(net)
    with pytest.raises(ValueError, match="does not fit this model: the model lacks 'fc3"):
        kdlib.load_pruned(net, tmp_path / "old.pt")
    _assert_unchanged(net, snap)


def test_load_pruned_refuses_a_file_of_another_kind(tmp_path):
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    net = kdlib.model("tiny")
    snap = _snapshot(net)
    with pytest.raises(ValueError, match="not a file written by kdlib.save_pruned"):
        kdlib.load_pruned(net, tmp_path / "other.pt")
    _assert_unchanged(net, snap)


def test_load_pruned_refuses_a_smaller_layer_it_cannot_rebuild(tmp_path):
    # an Embedding saved smaller: refused by its type (it has no bias to ask about)
    path = _saved(tmp_path, nn.Sequential(nn.Embedding(5, 4), nn.Flatten(), nn.Linear(8, 2)))
    net = nn.Sequential(nn.Embedding(10, 4), nn.Flatten(), nn.Linear(8, 2))
    snap = _snapshot(net)
    with pytest.raises(ValueError, match="cannot resize a Embedding layer"):
        kdlib.load_pruned(net, path)
    _assert_unchanged(net, snap)


def test_load_pruned_of_a_shrunk_model_still_works(tmp_path):
    torch.manual_seed(0)
    small = kdlib.shrink(kdlib.structured_prune(kdlib.model("tiny"), 0.5))
    net = kdlib.load_pruned(kdlib.model("tiny"), _saved(tmp_path, small))
    assert net.fc1.out_features == 16
    x = torch.randn(3, 1, 28, 28)
    torch.testing.assert_close(net.eval()(x), small.eval()(x))


def test_shrink_refuses_a_layer_type_it_cannot_rebuild():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv1d(2, 6, 3), nn.ReLU(), nn.Conv1d(6, 4, 3), nn.Flatten(), nn.Linear(4 * 4, 3)
    )
    with torch.no_grad():
        net[0].weight[2].zero_()
    before = _snapshot(net)
    with pytest.raises(ValueError, match=r"layer '0' \(Conv1d\) has zero units"):
        kdlib.shrink(net)
    _assert_unchanged(net, before)


def test_shrink_refuses_an_untraceable_layer_by_name():
    net = nn.Sequential(nn.Linear(6, 8), nn.Sigmoid(), nn.Linear(8, 3))
    with torch.no_grad():
        net[0].weight[1].zero_()
        net[0].bias[1] = 0
    with pytest.raises(ValueError, match=r"'1' \(Sigmoid\)"):
        kdlib.shrink(net)


def test_shrink_refuses_models_that_are_not_sequential():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return x + self.fc(x)

    with pytest.raises(ValueError, match="follows nn.Sequential models only; .*Residual"):
        kdlib.shrink(Residual())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"target_sparsity": 1.0}, r"target_sparsity must be a number in \[0, 1\)"),
        ({"target_sparsity": 0.5, "steps": 0}, "steps must be a positive integer"),
        ({"target_sparsity": 0.5, "lr_scale": 0}, "lr_scale must be"),
        ({"target_sparsity": 0.5, "schedule": "exp"}, "schedule must be 'cubic' or 'linear'"),
    ],
)
def test_iterative_prune_refuses_before_pruning(data, kwargs, match):
    net = _student(data)
    snap = _snapshot(net)
    with pytest.raises(ValueError, match=match):
        kdlib.iterative_prune(net, data, progress=False, **kwargs)
    _assert_unchanged(net, snap)


@pytest.mark.parametrize("amounts", [[], [0.9, 0.5], [0.0, 0.5], [1.5]])
def test_sensitivity_scan_refuses_bad_amounts(data, amounts):
    net = _student(data)
    snap = _snapshot(net)
    with pytest.raises(ValueError, match="amounts must be increasing fractions"):
        kdlib.sensitivity_scan(net, data, amounts=amounts)
    _assert_unchanged(net, snap)


# ============================================================================================
# Metrics: wrong input shapes, models without a recorded shape
@pytest.mark.parametrize("fn", [kdlib.macs, lambda m, s: kdlib.latency(m, s, 4, min_run_time=0)])
@pytest.mark.parametrize("shape", [(1, 28, 28), (10,), (3, 8, 8)])
def test_wrong_input_shape_is_named(data, fn, shape):
    net = _student(data)  # takes (1, 8, 8) = 64 inputs
    snap = _snapshot(net)
    with pytest.raises(ValueError, match=r"cannot take examples of input_shape="):
        fn(net, shape)
    _assert_unchanged(net, snap)


@pytest.mark.parametrize(
    "shape, error, match",
    [
        ((1, -8, 8), ValueError, "input_shape entries must be a positive integer"),
        ((1, 8.5, 8), ValueError, "input_shape entries must be a positive integer"),
        (64, TypeError, "input_shape must be a shape such as"),
        (torch.Size([1, 8, 8]).numel(), TypeError, "input_shape must be a shape"),
    ],
)
def test_malformed_input_shape(data, shape, error, match):
    with pytest.raises(error, match=match):
        kdlib.macs(_student(data), shape)


def test_macs_without_a_known_input_shape_asks_for_one():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten())
    with pytest.raises(ValueError, match="pass input_shape=.C, H, W."):
        kdlib.macs(net)


def test_agreement_of_logits_that_differ_in_shape():
    s, t = _logits()
    with pytest.raises(ValueError, match="differ in shape"):
        kdlib.agreement(s, t[:, :3])


# ============================================================================================
# Parameter distillation: architectures that do not fit
def test_inherit_refuses_a_cnn_and_leaves_the_student(data):
    student = kdlib.model("tiny")
    snap = _snapshot(student)
    with pytest.raises(TypeError, match="MLPs only"):
        kdlib.inherit(student, kdlib.model("cnn-thin"), "top-units")
    _assert_unchanged(student, snap)


def test_inherit_refuses_a_wider_student_and_leaves_it():
    teacher, student = kdlib.mlp(784, [16], 10), kdlib.mlp(784, [32], 10)
    snap = _snapshot(student)
    with pytest.raises(ValueError, match="cannot inherit more units than the teacher has"):
        kdlib.inherit(student, teacher, "top-units")
    _assert_unchanged(student, snap)


@pytest.mark.parametrize("rank", [0, 2.5, True, 10_000])
def test_low_rank_bad_rank_leaves_the_teacher(rank):
    teacher = kdlib.model("tiny")
    snap = _snapshot(teacher)
    with pytest.raises(ValueError, match="rank"):
        kdlib.low_rank(teacher, rank)
    _assert_unchanged(teacher, snap)


def test_low_rank_of_a_conv_layer_names_its_type():
    with pytest.raises(ValueError, match="factorises nn.Linear layers; 'stage1.conv'"):
        kdlib.low_rank(kdlib.model("cnn-thin"), 2, layers=["stage1.conv"])


def test_distill_params_tol_must_be_finite(data, teacher):
    student = _student(data)
    with pytest.raises(ValueError, match="tol must be a"):
        kdlib.distill_params(student, teacher, data, None, tol=float("nan"), progress=False)
