"""kdlib.features: hook capture, projectors and the feature-distillation loop."""

import copy
from collections import OrderedDict

import matplotlib.pyplot as plt
import pytest
import torch
from torch import nn

import kdlib
from kdlib.features import (
    FeatureCapture,
    attention_maps,
    distill_features,
    get_features,
    layer_names,
    projector,
)

PAIR = {"stage2": "stage2"}


@pytest.fixture(scope="module")
def small():
    return kdlib.load("mnist-5k").subset(256, 128)


@pytest.fixture
def net():
    return kdlib.model("cnn-thin", seed=0)


def n_hooks(module: nn.Module) -> int:
    return len(module._forward_hooks) + len(module._forward_pre_hooks)


# ---------------------------------------------------------------------------- capture
def test_captured_tensors_equal_the_modules_outputs(net, small):
    X = small.X_test[:16]
    net.eval()
    with FeatureCapture(net, ["stage1", "stage2", "head.fc1"]) as cap:
        logits = net(X)
    f1 = net.stage1(X)
    torch.testing.assert_close(cap.features["stage1"], f1, rtol=0, atol=0)
    torch.testing.assert_close(cap.features["stage2"], net.stage2(f1), rtol=0, atol=0)
    torch.testing.assert_close(cap.features["head.fc1"], logits, rtol=0, atol=0)
    assert list(cap.features) == ["stage1", "stage2", "head.fc1"]  # forward order


def test_hooks_are_removed_after_success(net, small):
    watched = [net, net.stage1, net.stage2]
    before = [n_hooks(m) for m in watched]
    with FeatureCapture(net, ["stage1", "stage2"]) as cap:
        assert cap.active and [n_hooks(m) for m in watched] == [b + 1 for b in before]
        net(small.X_test[:4])
    assert not cap.active and [n_hooks(m) for m in watched] == before


def test_hooks_are_removed_after_an_exception(net):
    before = n_hooks(net) + n_hooks(net.stage2)
    with pytest.raises(RuntimeError), FeatureCapture(net, ["stage2"]):
        net(torch.zeros(2, 3, 28, 28))  # wrong channel count: the forward raises
    assert n_hooks(net) + n_hooks(net.stage2) == before
    with pytest.raises(KeyError), FeatureCapture(net, ["stage2"]):
        raise KeyError("raised by the user's code inside the block")
    assert n_hooks(net) + n_hooks(net.stage2) == before


def test_unknown_layer_names_list_the_closest_names(net):
    with pytest.raises(ValueError, match=r"no layer named 'stage3'; closest names: stage\d"):
        FeatureCapture(net, ["stage3"])
    with pytest.raises(ValueError, match=r"closest names: .*head\.fc1"):
        FeatureCapture(net, ["head.fc"])
    with pytest.raises(ValueError, match="names is empty"):
        FeatureCapture(net, [])
    assert "stage2.conv" in layer_names(net) and "" not in layer_names(net)


def test_a_name_listed_twice_is_captured_once(net):
    with FeatureCapture(net, ["stage2", "stage2"]) as cap:
        assert n_hooks(net.stage2) == 1
        net(torch.zeros(2, 1, 28, 28))
    assert list(cap.features) == ["stage2"]


class _Aliased(nn.Module):
    """One Linear registered as both ``a`` and ``alias``; the forward calls it once."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.alias = self.a

    def forward(self, x):
        return torch.relu(self.a(x))


def test_one_module_under_two_paths_fills_both_names():
    model = _Aliased()
    with FeatureCapture(model, ["a", "alias"]) as cap:
        assert n_hooks(model.a) == 1
        model(torch.ones(1, 4))
    assert cap.features["a"] is cap.features["alias"]


def _reused_block():
    block = nn.Linear(3, 3)
    return block, nn.Sequential(OrderedDict(first=block, act=nn.ReLU(), second=block))


def test_a_module_used_twice_in_one_forward_is_an_error_by_default():
    _, model = _reused_block()
    with pytest.raises(RuntimeError, match=r"'first' ran twice in one forward.*on_reuse"):
        with FeatureCapture(model, ["first"]):
            model(torch.ones(2, 3))
    assert n_hooks(model.first) == 0


def test_on_reuse_last_and_all_keep_the_documented_outputs():
    block, model = _reused_block()
    X = torch.randn(2, 3)
    first_out = block(X)
    second_out = block(torch.relu(first_out))
    with FeatureCapture(model, ["first"], on_reuse="last") as last:
        model(X)
    with FeatureCapture(model, ["first"], on_reuse="all") as every:
        model(X)
        model(X)  # a new forward starts a new list
    torch.testing.assert_close(last.features["first"], second_out)
    assert len(every.features["first"]) == 2
    torch.testing.assert_close(every.features["first"][0], first_out)
    torch.testing.assert_close(every.features["first"][1], second_out)
    with pytest.raises(ValueError, match="on_reuse must be one of"):
        FeatureCapture(model, ["first"], on_reuse="first")


def test_two_captures_can_be_active_at_once(net):
    with FeatureCapture(net, ["stage1"]) as a, FeatureCapture(net, ["stage1", "stage2"]) as b:
        net(torch.zeros(1, 1, 28, 28))
    assert torch.equal(a.features["stage1"], b.features["stage1"]) and "stage2" in b.features
    assert n_hooks(net.stage1) == 0


def test_get_features_restores_the_mode_and_detaches(net, small):
    net.train()
    feats = get_features(net, small.X_test[:10], ["stage1", "stage2"], batch_size=4)
    assert net.training and all(m.training for m in net.modules())
    assert feats["stage2"].shape == (10, 8, 7, 7) and not feats["stage2"].requires_grad
    assert n_hooks(net) == 0
    net.eval()
    torch.testing.assert_close(feats["stage1"], net.stage1(small.X_test[:10]))


def test_attention_maps_are_the_normalised_channel_mean_of_squares(net, small):
    X = small.X_test[:5]
    maps = attention_maps(net, X, "stage2")
    net.eval()
    f = net.stage2(net.stage1(X))  # (5, 8, 7, 7)
    v = f.pow(2).mean(1)  # (5, 7, 7)
    by_hand = v / v.flatten(1).norm(dim=1).view(5, 1, 1)
    torch.testing.assert_close(maps, by_hand)
    with pytest.raises(ValueError, match="not feature maps"):
        attention_maps(net, X, "head.fc1")


def test_attention_grid_draws_one_row_per_image_and_one_column_per_map(net, small):
    X, y = small.X_test[:3], small.y_test[:3]
    maps = {"before": attention_maps(net, X, "stage2"), "stage1": attention_maps(net, X, "stage1")}
    fig = kdlib.course.viz.attention_grid(X, maps, data=small, labels=y)
    assert len(fig.axes) == 3 * 3
    assert [ax.get_title() for ax in fig.axes[:3]] == ["input", "before", "stage1"]
    assert fig.axes[4].images[0].get_array().shape == (7, 7)
    plt.close(fig)
    with pytest.raises(ValueError, match="maps is empty"):
        kdlib.course.viz.attention_grid(X, {})
    with pytest.raises(ValueError, match=r"maps\['x'\] must have shape \(3, h, w\)"):
        kdlib.course.viz.attention_grid(X, {"x": torch.zeros(2, 7, 7)})


# ---------------------------------------------------------------------------- projectors
@pytest.mark.parametrize(
    "f_s_shape, f_t_shape, kind",
    [
        ((5, 16), (5, 64), nn.Linear),  # vectors
        ((5, 8, 7, 7), (5, 32, 7, 7), nn.Conv2d),  # maps of the same size
        ((5, 4, 14, 14), (5, 32, 7, 7), nn.Sequential),  # student map larger: pool down
        ((5, 4, 3, 3), (5, 16, 7, 7), nn.Sequential),  # student map smaller
    ],
)
def test_projector_output_matches_the_teachers_shape(f_s_shape, f_t_shape, kind):
    r = projector(f_s_shape, f_t_shape)
    assert isinstance(r, kind)
    out = r(torch.randn(3, *f_s_shape[1:]))
    assert out.shape == (3, *f_t_shape[1:])
    if kind is nn.Sequential:
        assert isinstance(r[0], nn.AdaptiveAvgPool2d) and r[1].kernel_size == (1, 1)


def test_projector_same_size_map_is_a_1x1_conv_per_position():
    r = projector((1, 2, 3, 3), (1, 4, 3, 3))
    f = torch.randn(1, 2, 3, 3)
    by_hand = torch.einsum("oc,nchw->nohw", r.weight[:, :, 0, 0], f)
    torch.testing.assert_close(r(f), by_hand + r.bias.view(1, -1, 1, 1))


def test_projector_refuses_features_of_different_ranks():
    with pytest.raises(ValueError, match=r"ranks differ.*\(8, 16\) is a vector.*map"):
        projector((8, 16), (8, 32, 7, 7))
    with pytest.raises(ValueError, match="neither a vector batch"):
        projector((8, 16, 3), (8, 16, 3))
    with pytest.raises(TypeError, match="must be a shape"):
        projector(torch.zeros(2, 3), (2, 3))


# ---------------------------------------------------------------------------- the loop
@pytest.fixture(scope="module")
def teacher(small):
    # A briefly trained teacher with batch norm, put in train mode so that any forgotten
    # eval() or no_grad() would show up as changed running statistics or flags.
    t, _ = kdlib.course.train_preset("cnn-teacher", small, seed=1, epochs=2, progress=False)
    t.stage1.conv.weight.requires_grad_(False)  # a flag distillation must restore as it was
    for p in t.parameters():
        p.grad = None  # left over from its own training
    return t.train()


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_teacher_untouched(teacher, state, flags):
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, state[k]), f"teacher's {k} changed"
    assert [p.requires_grad for p in teacher.parameters()] == flags
    assert teacher.training and all(m.training for m in teacher.modules())
    assert all(p.grad is None for p in teacher.parameters())


@pytest.mark.parametrize(
    "loss, method", [("hint", "fitnets"), ("at", "joint"), ("cosine", "joint")]
)
def test_teacher_is_untouched_and_the_student_keeps_its_parameters(
    small, teacher, net, loss, method
):
    state, flags = _state(teacher), [p.requires_grad for p in teacher.parameters()]
    keys, n_params = list(net.state_dict()), kdlib.count_params(net)
    before = _state(net)
    projectors = {}
    extra = {"hint_epochs": 1} if method == "fitnets" else {}
    hist = distill_features(
        net, teacher, small, PAIR, loss, epochs=1, lr=3e-3, method=method,
        projectors=projectors, seed=0, progress=False, **extra,
    )  # fmt: skip
    _assert_teacher_untouched(teacher, state, flags)
    # The exported student: same entries and parameter count, no projector in it.
    assert list(net.state_dict()) == keys and kdlib.count_params(net) == n_params
    assert not any(torch.equal(before[k], v) for k, v in net.state_dict().items() if "weight" in k)
    if loss == "at":
        assert projectors == {} and hist.info["projector_params"] == 0
    else:
        r = projectors["stage2"]
        assert isinstance(r, nn.Conv2d) and r.weight.grad is not None
        assert hist.info["projector_params"] == sum(p.numel() for p in r.parameters())
        ids = {id(p) for p in net.parameters()}
        assert not any(id(p) in ids for p in r.parameters())
    assert hist.info["teacher_features"] == "cached" and hist.info["method"] == method
    assert "agreement" in hist.keys()


def test_teacher_is_untouched_when_its_features_are_captured_per_batch(small, teacher, net):
    state, flags = _state(teacher), [p.requires_grad for p in teacher.parameters()]
    hist = distill_features(
        net, teacher, small, PAIR, "hint", epochs=1, lr=3e-3,
        cache_teacher_features=False, seed=0, progress=False,
    )  # fmt: skip
    _assert_teacher_untouched(teacher, state, flags)
    assert hist.info["teacher_features"] == "per-batch" and n_hooks(teacher.stage2) == 0
    assert n_hooks(net.stage2) == 0 and n_hooks(net) == 0


def test_cached_and_per_batch_teacher_features_give_the_same_run(small, teacher):
    runs = []
    for cache in (True, False):
        student = kdlib.model("cnn-thin", seed=0)
        hist = distill_features(
            student, teacher, small, PAIR, "at", epochs=1, lr=3e-3,
            cache_teacher_features=cache, seed=0, progress=False,
        )  # fmt: skip
        runs.append((hist["loss"], student.state_dict()))
    assert runs[0][0] == pytest.approx(runs[1][0], rel=1e-4)
    for k, v in runs[0][1].items():
        torch.testing.assert_close(v, runs[1][1][k], rtol=1e-3, atol=1e-4)


def test_beta_zero_is_plain_distillation(small, teacher):
    a, b = kdlib.model("cnn-thin", seed=0), kdlib.model("cnn-thin", seed=0)
    h_a = kdlib.distill(a, teacher, small, "kd", 2, 3e-3, seed=0, progress=False)
    h_b = distill_features(b, teacher, small, PAIR, "hint", 2, 3e-3, beta=0.0, seed=0,
                           progress=False)  # fmt: skip
    assert h_a["loss"] == pytest.approx(h_b["loss"], rel=1e-5)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q)


def test_the_joint_loss_is_kd_plus_beta_times_the_feature_loss(small, teacher):
    """One batch by hand: KD loss + β·hint loss, against the first recorded training loss."""
    student = kdlib.model("cnn-thin", seed=0)
    big = small.subset(128, 128)  # exactly one batch per epoch
    start = copy.deepcopy(student)
    projectors = {}
    hist = distill_features(
        student, teacher, big, PAIR, "hint", epochs=1, lr=1e-9, beta=0.5, T=3.0, alpha=0.7,
        projectors=projectors, seed=0, progress=False,
    )  # fmt: skip
    r = projectors["stage2"]
    X, y = big.X_train, big.y_train
    gen = kdlib.seed_everything(0)
    idx = torch.randperm(len(X), generator=gen)  # the same shuffle as the loop's
    X, y = X[idx], y[idx]
    start.train()
    with torch.no_grad():
        f_s = start.stage1(X)
        f_s = start.stage2(f_s)
        z_s = start.head(f_s)
        t = copy.deepcopy(teacher).eval()
        f_t = t.stage2(t.stage1(X))
        z_t = t.head(f_t)
        expected = (
            kdlib.kd_loss(z_s, z_t, y, T=3.0, alpha=0.7) + 0.5 * ((r(f_s) - f_t) ** 2).mean()
        )
    assert hist["loss"][0] == pytest.approx(float(expected), rel=1e-4)


def test_fitnets_hint_stage_trains_only_the_layers_up_to_the_guided_one(small, teacher):
    student = kdlib.model("cnn-thin", seed=0)
    start = _state(student)
    after_hint = {}

    def snapshot(model, history):
        if history.epochs == 1:
            after_hint.update(_state(model))

    hist = distill_features(
        student, teacher, small, {"stage1": "stage1"}, "hint", epochs=1, lr=3e-3,
        method="fitnets", hint_epochs=1, seed=0, progress=False, callbacks=[snapshot],
    )  # fmt: skip
    assert [row["stage"] for row in hist.rows] == ["hint", "kd"]
    assert hist.info["hint_params"] == sum(p.numel() for p in student.stage1.parameters())
    assert not torch.equal(after_hint["stage1.conv.weight"], start["stage1.conv.weight"])
    for k in ("stage2.conv.weight", "stage2.bn.weight", "head.fc1.weight", "head.fc1.bias"):
        assert torch.equal(after_hint[k], start[k]), k
    assert not torch.equal(student.state_dict()["head.fc1.weight"], start["head.fc1.weight"])


def test_pair_names_may_carry_student_and_teacher_prefixes(small, teacher, net):
    hist = distill_features(
        net, teacher, small, {"student.stage2": "teacher.stage2"}, "at", epochs=1, lr=3e-3,
        progress=False,
    )  # fmt: skip
    assert hist.info["pairs"] == {"stage2": "stage2"}


def test_a_loss_module_is_trained_with_the_student(small, teacher, net):
    loss = kdlib.losses.HintLoss(projector((1, 8, 7, 7), (1, 32, 7, 7)))
    w0 = loss.regressor.weight.detach().clone()
    distill_features(net, teacher, small, PAIR, loss, epochs=1, lr=3e-3, progress=False)
    assert not torch.equal(loss.regressor.weight, w0)


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "pairs, loss, kwargs, error, match",
    [
        ({}, "hint", {}, ValueError, "pairs is empty"),
        ({"stage9": "stage2"}, "hint", {}, ValueError, "student has no layer named 'stage9'"),
        ({"stage2": "stage"}, "hint", {}, ValueError, "teacher has no layer named 'stage'"),
        ({"stage2": "head.fc1"}, "hint", {}, ValueError, "ranks differ"),
        ({"head.fc1": "head.fc1"}, "at", {}, ValueError, "attention transfer needs feature map"),
        ({"stage1": "stage2"}, "at", {}, ValueError, "same height and width"),
        (PAIR, "hint", {"beta": -0.1}, ValueError, "beta must be a number >= 0"),
        (PAIR, "l1", {}, ValueError, "unknown feature loss 'l1'"),
        (PAIR, "hint", {"method": "two-stage"}, ValueError, "method must be 'joint'"),
        (PAIR, "hint", {"hint_epochs": 2}, ValueError, "hint_epochs is for method='fitnets'"),
        (["stage2"], "hint", {}, TypeError, "pairs must be a dict"),
    ],
)
def test_bad_input_is_refused_before_training(small, teacher, net, pairs, loss, kwargs, error,
                                              match):  # fmt: skip
    before = _state(net)
    with pytest.raises(error, match=match):
        distill_features(net, teacher, small, pairs, loss, epochs=1, progress=False, **kwargs)
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    assert n_hooks(net) == 0 and n_hooks(net.stage2) == 0


def test_the_teacher_cannot_be_the_student(small, teacher):
    with pytest.raises(ValueError, match="same object as the student"):
        distill_features(teacher, teacher, small, PAIR, "hint", epochs=1, progress=False)
