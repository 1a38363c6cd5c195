"""kdlib.params: inheritance strategies, the stop rule, the teacher untouched, bad input."""

import copy

import pytest
import torch
from torch import nn

import kdlib
from kdlib.params import (
    STRATEGIES,
    distill_params,
    inherit,
    layer_map,
    low_rank,
    param_change,
)


@pytest.fixture(scope="module")
def small():
    return kdlib.load("mnist-5k").subset(768, 300)


def _trained_mlp(data, hidden, seed=0, epochs=4):
    torch.manual_seed(seed)
    net = kdlib.mlp(784, hidden, 10)
    kdlib.fit(net, data, epochs=epochs, lr=2e-3, seed=seed, progress=False)
    return net.eval()


@pytest.fixture(scope="module")
def wide(small):
    return _trained_mlp(small, [128, 128])


@pytest.fixture(scope="module")
def deep(small):
    return _trained_mlp(small, [64, 64, 64, 64])


def _student_for(strategy):
    torch.manual_seed(1)
    return kdlib.mlp(784, [64, 64] if strategy == "every-other-layer" else [48, 48], 10)


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_every_strategy_starts_closer_to_the_teacher_than_random_init(small, wide, deep, strategy):
    teacher = deep if strategy == "every-other-layer" else wide
    random_init = _student_for(strategy)
    inherited = inherit(_student_for(strategy), teacher, strategy)
    X = small.X_test
    assert kdlib.agreement(inherited, teacher, X) > kdlib.agreement(random_init, teacher, X) + 0.3
    assert kdlib.mean_kl(inherited, teacher, X) < kdlib.mean_kl(random_init, teacher, X)
    # Before any training, inherited weights already classify far above a random init.
    random_acc = kdlib.accuracy(random_init, X, small.y_test)
    assert kdlib.accuracy(inherited, X, small.y_test) > random_acc + 0.2


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_inherit_leaves_the_teacher_untouched(wide, deep, strategy):
    teacher = deep if strategy == "every-other-layer" else wide
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    flags = [p.requires_grad for p in teacher.parameters()]
    student = inherit(_student_for(strategy), teacher, strategy)
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k])
    assert [p.requires_grad for p in teacher.parameters()] == flags
    assert not any(
        p.data_ptr() == q.data_ptr() for p in student.parameters() for q in teacher.parameters()
    )


def test_top_units_copies_the_hand_picked_sub_blocks():
    teacher = kdlib.mlp(3, [4], 2)
    with torch.no_grad():
        teacher.fc1.weight.copy_(torch.tensor([[1.0, 0, 0], [0, 3, 0], [0, 0, 0.1], [2, 2, 0]]))
        teacher.fc1.bias.copy_(torch.tensor([0.1, 0.2, 0.3, 0.4]))
        teacher.fc2.weight.copy_(torch.tensor([[1.0, 1, 9, 1], [1, 1, 9, 1]]))
        teacher.fc2.bias.copy_(torch.tensor([0.5, -0.5]))
    student = inherit(kdlib.mlp(3, [2], 2), teacher, "top-units")
    # in-norm × out-norm: unit 0 → 1·√2, unit 1 → 3·√2, unit 2 → 0.1·9√2, unit 3 → √8·√2
    keep = [1, 3]
    torch.testing.assert_close(student.fc1.weight, teacher.fc1.weight[keep])
    torch.testing.assert_close(student.fc1.bias, teacher.fc1.bias[keep])
    torch.testing.assert_close(student.fc2.weight, teacher.fc2.weight[:, keep])
    torch.testing.assert_close(student.fc2.bias, teacher.fc2.bias)


def test_low_rank_is_the_truncated_svd_with_a_linear_bottleneck():
    torch.manual_seed(0)
    teacher = kdlib.mlp(12, [10], 3)
    student = low_rank(teacher, 2, layers=["fc1"])
    W = teacher.fc1.weight.detach()
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    W2 = U[:, :2] @ torch.diag(S[:2]) @ Vh[:2]  # the best rank-2 approximation
    down, up = student.fc1.down.weight, student.fc1.up.weight
    assert down.shape == (2, 12) and up.shape == (10, 2)
    torch.testing.assert_close(up @ down, W2)
    torch.testing.assert_close(student.fc1.up.bias, teacher.fc1.bias)
    # Eckart–Young: the error is exactly the dropped singular values
    torch.testing.assert_close(torch.linalg.norm(W - up @ down), S[2:].norm())
    # the factors share the singular values evenly
    torch.testing.assert_close(down.norm(dim=1), up.norm(dim=0))
    x = torch.randn(5, 12)
    hidden = torch.relu(x @ W2.T + teacher.fc1.bias)  # what the rank-2 teacher computes
    torch.testing.assert_close(student(x), teacher.fc2(hidden))


def test_low_rank_is_not_a_selection_of_units():
    # Keeping k rows of a rank-k approximation is, at widths where k reaches the matrix's
    # rank, keeping k of the teacher's own rows: a selection of units in disguise. A
    # factorisation keeps every unit and inserts a bottleneck instead.
    torch.manual_seed(0)
    teacher = kdlib.mlp(784, [120, 120], 10)  # the notebook's shapes, scaled down 10×
    student = low_rank(teacher, 26)
    assert [n for n, m in student.named_modules() if isinstance(m, nn.Linear)] == [
        "fc1.down", "fc1.up", "fc2.down", "fc2.up", "fc3",
    ]  # fmt: skip
    assert student.fc1.up.out_features == 120  # every unit kept
    picked = inherit(kdlib.mlp(784, [26, 26], 10), teacher, "top-units")
    x = torch.randn(64, 784)
    assert (student(x) - picked(x)).abs().max() > 1e-2
    assert kdlib.count_params(student) < kdlib.count_params(teacher)
    # at the rank of a full matrix the factorisation would be the teacher itself
    full = low_rank(kdlib.mlp(30, [20], 10), 6, layers=["fc1"])  # 6 < 30·20/50 = 12
    assert torch.linalg.matrix_rank(full.fc1.up.weight @ full.fc1.down.weight) == 6


def test_low_rank_leaves_the_teacher_untouched_and_trains(small, wide):
    before = {k: v.clone() for k, v in wide.state_dict().items()}
    student = low_rank(wide, 16)
    for k, v in wide.state_dict().items():
        assert torch.equal(v, before[k])
    assert all(p.requires_grad for p in student.parameters())
    assert not any(
        p.data_ptr() == q.data_ptr() for p in student.parameters() for q in wide.parameters()
    )
    X = small.X_test
    assert kdlib.agreement(student, wide, X) > 0.5  # a rank-16 copy already agrees
    hist = distill_params(student, wide, small, None, epochs=2, seed=0, progress=False)
    assert hist.last("kl_teacher") < hist.info["init_kl"]


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"rank": 0}, "rank must be a positive integer, got 0"),
        ({"rank": 2.5}, "rank must be a positive integer"),
        ({"rank": True}, "rank must be a positive integer"),
        ({"rank": 4, "layers": ["fc9"]}, "no layer named 'fc9'"),
        ({"rank": 4, "layers": ["act1"]}, "factorises nn.Linear layers; 'act1' is .*ReLU"),
        ({"rank": 10, "layers": ["fc3"]}, r"would not make layer 'fc3' \(128→10\) smaller"),
        ({"rank": 500}, "makes none of the teacher's Linear layers smaller"),
    ],
)
def test_low_rank_bad_input(wide, kwargs, error):
    with pytest.raises(ValueError, match=error):
        low_rank(wide, **kwargs)


def test_a_student_as_wide_as_its_teacher_is_the_teacher(small, wide):
    student = inherit(kdlib.mlp(784, [128, 128], 10), wide, "top-units")
    torch.testing.assert_close(
        kdlib.predict(student, small.X_test), kdlib.predict(wide, small.X_test), atol=1e-4, rtol=0
    )


def test_every_other_layer_copies_layers_0_2_4_without_folding(deep):
    student = inherit(kdlib.mlp(784, [64, 64], 10), deep, "every-other-layer", fold=False)
    for s_name, t_name in (("fc1", "fc1"), ("fc2", "fc3"), ("fc3", "fc5")):
        assert torch.equal(getattr(student, s_name).weight, getattr(deep, t_name).weight)
        assert torch.equal(getattr(student, s_name).bias, getattr(deep, t_name).bias)


def test_every_other_layer_folds_the_dropped_layers_in(small, deep):
    student = inherit(kdlib.mlp(784, [64, 64], 10), deep, "every-other-layer")
    assert torch.equal(student.fc1.weight, deep.fc1.weight)
    # Folding fc2 into fc3 is fc3(fc2(h)) without the ReLU between them.
    h = torch.randn(7, 64)
    torch.testing.assert_close(student.fc2(h), deep.fc3(deep.fc2(h)))
    torch.testing.assert_close(student.fc3(h), deep.fc5(deep.fc4(h)))
    # Copying without folding starts about as far from the teacher as random weights.
    X = small.X_test
    unfolded = inherit(kdlib.mlp(784, [64, 64], 10), deep, "every-other-layer", fold=False)
    assert kdlib.agreement(student, deep, X) > kdlib.agreement(unfolded, deep, X) + 0.3


def test_layer_map():
    assert layer_map(3, 5) == [0, 2, 4]
    assert layer_map(2, 5) == [0, 4]
    assert layer_map(3, 3) == [0, 1, 2]
    assert layer_map(1, 4) == [3]


def test_param_change_is_relative_norm():
    net = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[3.0, 4.0]]))
    before = net.weight.detach().flatten().clone()
    with torch.no_grad():
        net.weight.add_(torch.tensor([[0.3, 0.4]]))
    assert param_change(before, net) == pytest.approx(0.1)


def test_distill_params_stops_when_still_and_says_so(small, wide):
    teacher_before = copy.deepcopy(wide.state_dict())
    hist = distill_params(_student_for("top-units"), wide, small, "top-units", epochs=10,
                          lr=1e-2, tol=3e-2, seed=0, progress=False)  # fmt: skip
    assert hist.stop_reason.startswith("converged: parameter change")
    assert hist.epochs < 10
    changes = hist["param_change"]
    assert changes[-1] < 3e-2 <= min(changes[:-1])  # stopped at the first epoch below tol
    assert hist.info["strategy"] == "top-units" and hist.info["teacher_logits"] == "cached"
    assert hist.info["init_acc"] > 0.3 and "agreement" in hist.keys()  # chance is 0.1
    for k, v in wide.state_dict().items():
        assert torch.equal(v, teacher_before[k])


def test_distill_params_runs_to_max_epochs_when_tol_is_tiny(small, wide):
    hist = distill_params(_student_for("top-units"), wide, small, "top-units", epochs=2, tol=1e-9,
                          progress=False)  # fmt: skip
    assert hist.stop_reason == "max_epochs" and hist.epochs == 2
    assert len(hist["param_change"]) == 2


def test_distill_params_keeps_or_improves_the_inherited_student(small, wide):
    hist = distill_params(_student_for("top-units"), wide, small, "top-units", epochs=2,
                          seed=0, progress=False)  # fmt: skip
    assert hist.last("kl_teacher") < hist.info["init_kl"]


# --------------------------------------------------------------------------------------------
# Bad input gets a clear error
def test_unknown_strategy(wide):
    with pytest.raises(ValueError, match="unknown strategy 'random'.*top-units"):
        inherit(_student_for("top-units"), wide, "random")


def test_student_wider_than_teacher_names_the_layers(wide):
    with pytest.raises(
        ValueError, match="student layer 'fc2' has 200 units but teacher layer 'fc2'"
    ):
        inherit(kdlib.mlp(784, [64, 200], 10), wide, "top-units")


def test_depth_mismatch_names_the_layers(wide, deep):
    with pytest.raises(ValueError, match=r"student has 5 Linear layers \(fc1, .*fc5\)"):
        inherit(kdlib.mlp(784, [32] * 4, 10), wide, "top-units")
    with pytest.raises(ValueError, match="at least as deep as the student"):
        inherit(kdlib.mlp(784, [32] * 6, 10), deep, "every-other-layer")


def test_every_other_layer_shape_mismatch_names_the_layers(deep):
    with pytest.raises(
        ValueError,
        match=r"teacher layers 'fc2'…'fc3' \(64→64\) into student layer 'fc2' \(64→32\)",
    ):
        inherit(kdlib.mlp(784, [64, 32], 10), deep, "every-other-layer")


def test_input_and_class_mismatch(wide):
    with pytest.raises(
        ValueError, match="'fc1' takes 100 inputs but teacher layer 'fc1' takes 784"
    ):
        inherit(kdlib.mlp(100, [32, 32], 10), wide, "top-units")
    with pytest.raises(ValueError, match="'fc3' has 5 outputs but teacher layer 'fc3' has 10"):
        inherit(kdlib.mlp(784, [32, 32], 5), wide, "top-units")


def test_non_mlp_is_refused(wide):
    with pytest.raises(TypeError, match="MLPs only.*'stage1.conv' is a Conv2d"):
        inherit(kdlib.model("cnn-thin"), wide, "top-units")
    with pytest.raises(ValueError, match="same object as the student"):
        inherit(wide, wide, "top-units")


def test_bad_tol(small, wide):
    with pytest.raises(ValueError, match="tol must be a number > 0"):
        distill_params(_student_for("top-units"), wide, small, "top-units", tol=0)
