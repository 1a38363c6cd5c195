"""kdlib.models: layer widths, names the course relies on, presets."""

import pytest
import torch
from torch import nn

import kdlib


def _linear_shapes(net):
    return [(m.in_features, m.out_features) for m in net.modules() if isinstance(m, nn.Linear)]


def test_mlp_widths_and_names():
    net = kdlib.mlp(784, [800, 800], 10)
    assert _linear_shapes(net) == [(784, 800), (800, 800), (800, 10)]
    assert [n for n, _ in net.named_children()] == [
        "flatten", "fc1", "act1", "fc2", "act2", "fc3",
    ]  # fmt: skip
    assert net(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    # 784·800 + 800 + 800·800 + 800 + 800·10 + 10 parameters, counted by hand.
    assert kdlib.count_params(net) == 784 * 800 + 800 + 800 * 800 + 800 + 800 * 10 + 10


@pytest.mark.parametrize(
    "name, widths",
    [
        ("hinton-teacher", [(784, 1200), (1200, 1200), (1200, 10)]),
        ("hinton-student", [(784, 800), (800, 800), (800, 10)]),
        ("lenet-300-100", [(784, 300), (300, 100), (100, 10)]),
        ("tiny", [(784, 32), (32, 10)]),
    ],
)
def test_mlp_presets(name, widths):
    assert _linear_shapes(kdlib.model(name)) == widths


def test_cnn_stages_are_named_and_halve_the_image():
    net = kdlib.model("cnn-teacher")
    assert [n for n, _ in net.named_children()] == ["stage1", "stage2", "head"]
    x = torch.zeros(2, 1, 28, 28)
    f1 = net.stage1(x)
    f2 = net.stage2(f1)
    assert f1.shape == (2, 16, 14, 14) and f2.shape == (2, 32, 7, 7)
    assert net(x).shape == (2, 10)
    assert isinstance(net.stage1.bn, nn.BatchNorm2d)


def test_cnn_students_are_smaller_than_teacher():
    teacher = kdlib.count_params(kdlib.model("cnn-teacher"))
    for name in ("cnn-student", "cnn-thin"):
        assert kdlib.count_params(kdlib.model(name)) < teacher / 5


def test_presets_follow_input_shape_and_classes():
    net = kdlib.model("cnn-thin", input_shape=(1, 8, 8), num_classes=3)
    assert net(torch.zeros(1, 1, 8, 8)).shape == (1, 3)
    assert kdlib.model("tiny", input_shape=(1, 8, 8))(torch.zeros(1, 64)).shape == (1, 10)


def test_seed_gives_same_weights():
    a, b = kdlib.model("tiny", seed=1), kdlib.model("tiny", seed=1)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_unknown_preset_lists_known():
    with pytest.raises(ValueError, match=r"unknown model preset 'resnet'.*hinton-student"):
        kdlib.model("resnet")


def test_bad_widths():
    with pytest.raises(ValueError, match="widths must be positive"):
        kdlib.mlp(784, [0], 10)
