"""kdlib.quant against torchao's own quantization: the same integers, scales, fake-quantized
values and gradients, the same accuracy after conversion, the sizes on disk; bad input."""

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torchao.quantization.qat import IntxFakeQuantizeConfig, IntxFakeQuantizer
from torchao.quantization.quant_primitives import (
    MappingType,
    choose_qparams_affine,
    quantize_affine,
)

import kdlib
from kdlib import quant


def _cnn(seed=0):
    torch.manual_seed(seed)
    return kdlib.cnn(channels=(4, 8), hidden=16).eval()


def _mlp(seed=0):
    torch.manual_seed(seed)
    return kdlib.mlp(784, [32, 16], 10).eval()


def _library(x, bits, symmetric, per_channel):
    """torchao's scale, zero-point and integers for the same range (qmin, qmax)."""
    qmin, qmax = quant.qrange(bits, symmetric)
    block = (1, *x.shape[1:]) if per_channel else tuple(x.shape)
    dtype = torch.int8 if symmetric else torch.uint8
    mapping = MappingType.SYMMETRIC if symmetric else MappingType.ASYMMETRIC
    s, z = choose_qparams_affine(x, mapping, block, dtype, qmin, qmax)
    return s, z, quantize_affine(x, block, s, z, dtype, qmin, qmax)


# --------------------------------------------------------------------------------------------
# by hand == torchao
@pytest.mark.parametrize("bits", [8, 4, 2])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("per_channel", [True, False])
def test_integers_match_torchao(bits, symmetric, per_channel):
    w = torch.randn(6, 3, 3, 3, generator=torch.Generator().manual_seed(bits))
    s, z = quant.qparams(w, bits, symmetric=symmetric, per_channel=per_channel)
    S, Z, Q = _library(w, bits, symmetric, per_channel)
    assert torch.equal(s.flatten(), S.flatten())
    assert torch.equal(z.flatten(), Z.flatten().to(torch.int32))
    assert torch.equal(quant.quantize(w, s, z, bits, symmetric=symmetric), Q)


def test_hand_computed_values():
    x = torch.tensor([-1.0, 0.5, 2.0])
    s, z = quant.qparams(x, 8, symmetric=False)
    assert float(s) == pytest.approx(3 / 255) and int(z) == 85
    q = quant.quantize(x, s, z, 8, symmetric=False)
    assert q.tolist() == [0, 127, 255]  # 0.5 / s = 42.5 rounds to even: 42, + 85
    s, z = quant.qparams(x, 8)  # symmetric: max|x| / 127.5
    assert float(s) == pytest.approx(2 / 127.5) and int(z) == 0
    assert quant.quantize(x, s, z).tolist() == [-64, 32, 127]  # 127.5 rounds to 128: clamped
    assert quant.qrange(4) == (-8, 7) and quant.qrange(4, symmetric=False) == (0, 15)


@pytest.mark.parametrize("reduce_range, bits", [(True, 7), (False, 8)])
def test_dynamic_int8_weights_are_the_hand_quantized_ones(reduce_range, bits):
    net = _mlp()
    q = quant.dynamic_int8(net, reduce_range=reduce_range)
    for name in ("fc1", "fc2", "fc3"):
        w, lib = getattr(net, name).weight.detach(), getattr(q, name).weight
        s, z = quant.qparams(w, bits, per_channel=True)
        assert torch.equal(quant.quantize(w, s, z, bits), lib.qdata)
        assert torch.equal(s.flatten(), lib.scale.flatten())
    assert isinstance(net.fc1.weight, nn.Parameter) and net.fc1.weight.dtype == torch.float32
    if reduce_range:  # full 8-bit codes overflow 16-bit sums on CPUs without VNNI (AVX2)
        x = torch.randn(8, 1, 28, 28)
        with torch.no_grad():
            torch.testing.assert_close(q(x), net(x), atol=0.05, rtol=0.05)


@pytest.mark.parametrize("bits", [4, 8])
def test_fake_quantize_matches_torchao_values_and_gradient(bits):
    w = 2 * torch.randn(12, 40, generator=torch.Generator().manual_seed(0))
    fq = IntxFakeQuantizer(IntxFakeQuantizeConfig(getattr(torch, f"int{bits}"), "per_channel"))
    x1, x2 = w.clone().requires_grad_(True), w.clone().requires_grad_(True)
    y1 = fq(x1)
    y2 = quant.fake_quantize(x2, fq.scale, fq.zero_point, bits)
    g = torch.randn_like(w)
    y1.backward(g), y2.backward(g)
    assert torch.equal(y1, y2)
    assert torch.equal(x1.grad, x2.grad)


def test_straight_through_gradient_is_one_inside_zero_outside():
    x = torch.tensor([-9.0, -0.3, 0.0, 0.26, 3.1, 9.0], requires_grad=True)
    y = quant.fake_quantize(x, torch.tensor(0.5), torch.tensor(0), 4)
    assert y.tolist() == [-4.0, -0.5, 0.0, 0.5, 3.0, 3.5]
    (grad,) = torch.autograd.grad(y.sum(), x)
    assert grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 0.0]


def test_a_code_exactly_on_the_edge_gets_torch_clamps_own_gradient():
    # 3.4 / 0.5 = 6.8 rounds to 7 = qmax: inside the range, but PyTorch's clamp gives a value
    # exactly at its bound gradient 1 before torch 2.14 and 0 from 2.14 on; so does torchao
    x = torch.tensor([3.4], requires_grad=True)
    (grad,) = torch.autograd.grad(quant.fake_quantize(x, 0.5, 0, 4).sum(), x)
    edge = torch.tensor([7.0], requires_grad=True)
    (clamp_grad,) = torch.autograd.grad(torch.clamp(edge, -8, 7).sum(), edge)
    assert torch.equal(grad, clamp_grad)


@settings(max_examples=40, deadline=None)
@given(
    bits=st.integers(2, 8),
    symmetric=st.booleans(),
    seed=st.integers(0, 2**16),
    spread=st.floats(1e-3, 1e3),
)
def test_round_trip_error_is_at_most_half_a_step(bits, symmetric, seed, spread):
    x = spread * torch.randn(5, 7, generator=torch.Generator().manual_seed(seed))
    s, z = quant.qparams(x, bits, symmetric=symmetric, per_channel=True)
    q = quant.quantize(x, s, z, bits, symmetric=symmetric)
    qmin, qmax = quant.qrange(bits, symmetric)
    assert int(q.min()) >= qmin and int(q.max()) <= qmax
    err = (quant.dequantize(q, s, z) - x).abs()
    # half a step; the clamped top code (x / s = 2^(b-1) - 1/2) sits exactly there
    assert bool((err <= 0.5 * s * (1 + 1e-4) + 1e-12).all())
    # zero is exactly representable
    assert torch.equal(quant.dequantize(quant.quantize(torch.zeros(5, 1), s, z, bits,
                       symmetric=symmetric), s, z), torch.zeros(5, 1))  # fmt: skip


def test_more_bits_less_error():
    net = _cnn()
    errs = []
    for bits in (2, 4, 8):
        q = quant.quantize_weights(net, bits)
        errs.append(float((q.stage2.conv.weight - net.stage2.conv.weight).detach().abs().max()))
    assert errs[0] > errs[1] > errs[2] > 0


def test_quantize_weights_per_channel_beats_per_tensor():
    w = torch.randn(8, 16) * torch.logspace(-2, 0, 8).unsqueeze(1)  # channels of many scales
    layer = nn.Linear(16, 8)
    with torch.no_grad():
        layer.weight.copy_(w)
    net = nn.Sequential(layer)
    e_channel = (quant.quantize_weights(net, 4)[0].weight - w).pow(2).sum()
    e_tensor = (quant.quantize_weights(net, 4, per_channel=False)[0].weight - w).pow(2).sum()
    assert e_channel < e_tensor


# --------------------------------------------------------------------------------------------
# the library's models
def test_static_int8_keeps_accuracy_and_is_four_times_smaller():
    data = kdlib.load("mnist-5k").subset(600, 300)
    net = _cnn()
    kdlib.fit(net, data, epochs=2, lr=3e-3, seed=0, progress=False)
    q = quant.static_int8(net, data.X_train[:256])
    a_float, a_int8 = (kdlib.evaluate(m, data)["accuracy"] for m in (net, q))
    assert abs(a_float - a_int8) <= 0.02
    int8 = [t for t in q.state_dict().values() if t.dtype == torch.int8]
    assert sum(t.numel() for t in int8) == sum(
        m.weight.numel() for m in net.modules() if isinstance(m, (nn.Linear, nn.Conv2d))
    )
    assert quant.saved_bytes(net) / quant.saved_bytes(q) > 2.5  # small model: headers count
    assert q(data.X_test[:3]).shape == (3, 10)  # any batch size


def test_qat_convert_computes_what_the_fake_quantized_model_did():
    net = _mlp()
    qat = quant.prepare_qat(net, bits=4)
    x = torch.randn(5, 1, 28, 28)
    with torch.no_grad():
        before = qat(x)
    real = quant.convert_qat(qat, bits=4)
    with torch.no_grad():
        torch.testing.assert_close(real(x), before)
    assert not any(isinstance(m, type(qat.fc1)) for m in net.modules())  # net untouched


def test_saved_bytes_is_the_size_of_torch_save():
    net = _mlp()
    assert (
        4 * kdlib.count_params(net) < quant.saved_bytes(net) < 4 * kdlib.count_params(net) + 4096
    )


# --------------------------------------------------------------------------------------------
# bad input
@pytest.mark.parametrize("bits", [1, 9, 0, 4.0, True, "8"])
def test_bits_outside_the_range_are_refused(bits):
    with pytest.raises(ValueError, match="bits must be an integer from 2 to 8"):
        quant.qparams(torch.ones(3), bits)
    with pytest.raises(ValueError, match="bits"):
        quant.quantize_weights(_mlp(), bits)
    with pytest.raises(ValueError, match="bits"):
        quant.prepare_qat(_mlp(), bits)


def test_unsupported_layer_type_is_refused_by_name():
    net = _cnn()
    with pytest.raises(TypeError, match=r"'stage1.bn' is a BatchNorm2d"):
        quant.quantize_weights(net, 8, layers=["stage1.conv", "stage1.bn"])
    with pytest.raises(ValueError, match="no layer 'nope'"):
        quant.quantize_weights(net, 8, layers="nope")
    with pytest.raises(TypeError, match="no nn.Linear"):
        quant.dynamic_int8(nn.Sequential(nn.Conv2d(1, 2, 3)))


def test_model_on_an_unsupported_device_is_refused():
    net = _mlp().to("meta")
    for fn in (quant.dynamic_int8, quant.prepare_qat):
        with pytest.raises(ValueError, match=r"model is on meta.*model.cpu\(\)"):
            fn(net)
    with pytest.raises(ValueError, match="model is on meta"):
        quant.static_int8(net, torch.randn(4, 1, 28, 28))


def test_a_failed_call_leaves_the_model_as_it_was():
    net = _cnn()
    before = copy.deepcopy(net.state_dict())
    with pytest.raises(TypeError):
        quant.quantize_weights(net, 4, layers=["head.fc1", "stage1.bn"])
    with pytest.raises(ValueError):
        quant.static_int8(net, torch.randn(0, 1, 28, 28))
    quant.quantize_weights(net, 2)  # a successful call does not touch it either
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_bad_scales_shapes_and_flags_are_refused_by_name():
    x = torch.tensor([-1.0, 0.5, 2.0])
    for scale in (0.0, -1.0, float("nan"), float("inf"), torch.tensor([0.1, 0.0, 0.1])):
        for fn in (quant.quantize, quant.fake_quantize):
            with pytest.raises(ValueError, match="scale must be positive and finite"):
                fn(x, scale, 0)
    with pytest.raises(ValueError, match="must broadcast against x"):
        quant.quantize(x, torch.tensor([0.1, 0.1]), 0)
    with pytest.raises(TypeError, match="x must be a floating-point tensor"):
        quant.quantize(torch.tensor([1, 2, 3]), 0.1, 0)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        quant.qparams([1.0, 2.0])
    with pytest.raises(ValueError, match="x is empty"):
        quant.qparams(torch.empty(0))
    with pytest.raises(ValueError, match="x contains NaN"):
        quant.qparams(torch.tensor([1.0, float("nan")]))
    with pytest.raises(TypeError, match="symmetric must be True or False"):
        quant.qparams(x, 8, symmetric="yes")
    with pytest.raises(TypeError, match="per_channel must be True or False"):
        quant.qparams(x[None], 8, per_channel=1)


def test_static_int8_and_convert_qat_refuse_bad_input_and_leave_the_model_alone():
    net = kdlib.mlp(784, [16], 10)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    X = torch.randn(8, 1, 28, 28)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        quant.static_int8(net, X, batch_size=0)
    with pytest.raises(ValueError, match="at least 2 calibration inputs"):
        quant.static_int8(net, X[:1])
    with pytest.raises(TypeError, match="X must be a floating-point tensor"):
        quant.static_int8(net, X.to(torch.uint8))
    with pytest.raises(TypeError, match="reduce_range must be True or False"):
        quant.dynamic_int8(net, reduce_range=None)
    with pytest.raises(TypeError, match="no fake-quantized layer; prepare it with prepare_qat"):
        quant.convert_qat(net)
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
