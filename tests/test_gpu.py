"""The core paths on a GPU give what they give on the CPU: train, distill, feature distill,
prune, shrink.

Every test here is marked ``gpu`` and skipped, with the reason shown, where there is no CUDA
device. ``KDLIB_TEST_DEVICE`` picks another device to compare with the CPU (e.g. ``mps``;
``cpu`` checks the tests themselves on a machine without a GPU).

Tolerance: one epoch (8 SGD steps) on the same batches from the same weights must agree within
``atol=1e-4, rtol=1e-3`` on every parameter and buffer, with TF32 turned off so that float32
means float32 on both sides. Training amplifies rounding differences only mildly over so few
steps; plain SGD keeps them proportional (Adam's first steps are ``lr·sign(g)``, which turns a
rounding difference of a tiny gradient into a full step). Masks from magnitude pruning must be
identical, and a shrunk model must give the masked model's outputs within ``1e-5``.
"""

import copy
import os

import pytest
import torch

import kdlib
from kdlib.prune import magnitude_prune, shrink, structured_prune

DEVICE = torch.device(os.environ.get("KDLIB_TEST_DEVICE", "cuda"))
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        DEVICE.type == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA GPU"
    ),
]
TOL = {"atol": 1e-4, "rtol": 1e-3}
RUN = {"epochs": 1, "lr": 0.05, "optimizer": "sgd", "batch_size": 64, "seed": 0}


@pytest.fixture(autouse=True)
def full_float32():
    """No TF32 (10-bit mantissa matmuls on Ampere and later) while comparing with the CPU."""
    if DEVICE.type != "cuda":
        yield
        return
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@pytest.fixture(scope="module")
def small():
    return kdlib.load("mnist-5k").subset(512, 256)


def _same(cpu_model, dev_model, tol=TOL):
    a, b = cpu_model.state_dict(), dev_model.state_dict()
    assert a.keys() == b.keys()
    for key, value in a.items():
        assert b[key].device.type == DEVICE.type, key  # stayed on the device
        torch.testing.assert_close(b[key].cpu(), value, **tol, msg=key)


def _pair(name, seed=0):
    return kdlib.model(name, seed=seed), kdlib.model(name, seed=seed).to(DEVICE)


def test_fit_matches_cpu_with_batch_norm(small):
    cpu, dev = _pair("cnn-thin")  # convolutions and batch norm
    h_cpu = kdlib.fit(cpu, small, device="cpu", progress=False, **RUN)
    h_dev = kdlib.fit(dev, small, device=DEVICE, progress=False, **RUN)
    _same(cpu, dev)
    assert h_dev.last("loss") == pytest.approx(h_cpu.last("loss"), rel=1e-3)
    assert abs(h_dev.last("test_acc") - h_cpu.last("test_acc")) <= 2 / 256


@pytest.mark.skipif(DEVICE.type != "cuda", reason="float16 autocast with a scaler is for CUDA")
def test_mixed_precision_trains_close_to_float32(small):
    ref, _ = _pair("cnn-thin")
    h_ref = kdlib.fit(ref, small, device="cpu", progress=False, **{**RUN, "epochs": 3})
    for amp, label in ((True, "fp16"), ("bf16", "bf16")):
        net = kdlib.model("cnn-thin", seed=0)
        hist = kdlib.fit(
            net, small, device=DEVICE, amp=amp, progress=False, **{**RUN, "epochs": 3}
        )
        assert hist.info["amp"] == label
        assert hist["loss"][-1] < hist["loss"][0]
        assert abs(hist.last("test_acc") - h_ref.last("test_acc")) <= 0.05  # 16-bit rounding


def test_distill_matches_cpu_and_leaves_the_teacher_alone(small):
    teacher = kdlib.model("lenet-300-100", seed=1)
    kdlib.fit(teacher, small, epochs=1, lr=1e-3, seed=0, device="cpu", progress=False)
    t_dev = copy.deepcopy(teacher).to(DEVICE)
    before = {k: v.clone() for k, v in t_dev.state_dict().items()}
    cpu, dev = _pair("tiny")
    h_cpu = kdlib.distill(cpu, teacher, small, "kd", device="cpu", progress=False, **RUN)
    h_dev = kdlib.distill(dev, t_dev, small, "kd", device=DEVICE, progress=False, **RUN)
    assert h_dev.info["teacher_logits"] == "cached"  # cached on the device, looked up by row
    _same(cpu, dev)
    assert abs(h_dev.last("agreement") - h_cpu.last("agreement")) <= 2 / 256
    for key, value in t_dev.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_feature_distillation_matches_cpu(small):
    teacher = kdlib.model("cnn-student", seed=1)
    t_dev = copy.deepcopy(teacher).to(DEVICE)
    runs = []
    for device, t in (("cpu", teacher), (DEVICE, t_dev)):
        student, projectors = kdlib.model("cnn-thin", seed=0).to(device), {}
        hist = kdlib.distill_features(
            student, t, small, {"stage2": "stage2"}, "hint", epochs=1, lr=0.05,
            method="fitnets", hint_epochs=1, optimizer="sgd", batch_size=64, seed=0,
            device=device, progress=False, projectors=projectors,
        )  # fmt: skip
        runs.append((student, projectors["stage2"], hist))
    (s_cpu, p_cpu, h_cpu), (s_dev, p_dev, h_dev) = runs
    assert [r["stage"] for r in h_dev.rows] == ["hint", "kd"]
    assert h_dev.last("loss") == pytest.approx(h_cpu.last("loss"), rel=1e-3)
    _same(s_cpu, s_dev)
    _same(p_cpu, p_dev)


def test_magnitude_pruning_masks_match_cpu():
    cpu, dev = _pair("lenet-300-100")
    magnitude_prune(cpu, 0.8, scope="global")
    magnitude_prune(dev, 0.8, scope="global")
    for (name, m_cpu), (_, m_dev) in zip(cpu.named_buffers(), dev.named_buffers(), strict=True):
        assert name.endswith("weight_mask") and m_dev.device.type == DEVICE.type
        assert torch.equal(m_cpu, m_dev.cpu()), name  # the same weights go
    assert kdlib.count_params(dev, nonzero=True) == kdlib.count_params(cpu, nonzero=True)


def test_structured_prune_and_shrink_match_cpu(small):
    cpu, dev = _pair("cnn-student")  # Conv → BatchNorm → Conv → Flatten → Linear
    for net in (cpu, dev):
        structured_prune(net, 0.5)
    small_cpu, small_dev = shrink(cpu), shrink(dev)
    shapes = [tuple(p.shape) for p in small_cpu.parameters()]
    assert shapes == [tuple(p.shape) for p in small_dev.parameters()]
    assert all(p.device.type == DEVICE.type for p in small_dev.parameters())
    X = small.X_test
    out_dev = kdlib.predict(small_dev, X).cpu()
    torch.testing.assert_close(out_dev, kdlib.predict(small_cpu, X), atol=1e-4, rtol=1e-4)
    # on the device, shrinking changes nothing but the size
    torch.testing.assert_close(out_dev, kdlib.predict(dev, X).cpu(), atol=1e-5, rtol=1e-5)
