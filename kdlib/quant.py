"""Quantization, by hand and through PyTorch's quantization library (``torchao``).

Affine quantization stores a float tensor ``x`` as integers ``q = clamp(round(x / s) + z,
q_min, q_max)`` and reads it back as ``x̂ = s · (q − z)``; :func:`qparams`, :func:`quantize`,
:func:`dequantize` and :func:`fake_quantize` (with its straight-through gradient) write this out
in a few lines each, with torchao's conventions so that both give the same integers. The rest
calls torchao on a copy of the model, on the CPU: :func:`dynamic_int8` (int8 weights and
activations for every ``nn.Linear``), :func:`static_int8` (int8 convolutions and linears with
activation ranges calibrated on data, through ``torch.export``), :func:`prepare_qat` and
:func:`convert_qat` (low-bit weights trained with fake quantization), and
:func:`saved_bytes`, the size of the saved state. The input model is never modified.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import warnings

import torch
from torch import nn

from . import validate as V

__all__ = [
    "BITS",
    "compiled",
    "convert_qat",
    "dequantize",
    "dynamic_int8",
    "fake_quantize",
    "prepare_qat",
    "qparams",
    "qrange",
    "quantize",
    "quantize_weights",
    "saved_bytes",
    "static_int8",
]

BITS = range(2, 9)  # supported bit widths: 2 to 8
_LAYERS = (nn.Linear, nn.Conv2d)  # the layers whose weights kdlib.quant quantizes


def _check_bits(bits) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in BITS:
        raise ValueError(f"bits must be an integer from {BITS[0]} to {BITS[-1]}, got {bits!r}")
    return bits


def _check_qparams(x, scale, zero_point) -> None:
    V.tensor("x", x, floating=True)
    s = torch.as_tensor(scale)
    if not s.is_floating_point() or not bool(torch.isfinite(s).all() and (s > 0).all()):
        raise ValueError(f"scale must be positive and finite, got {scale!r}")
    try:
        torch.broadcast_shapes(x.shape, s.shape, torch.as_tensor(zero_point).shape)
    except RuntimeError:
        raise ValueError(
            f"scale {tuple(s.shape)} and zero_point must broadcast against x {tuple(x.shape)}"
        ) from None


def _check_cpu(model: nn.Module, name: str = "model") -> None:
    for t in (*model.parameters(), *model.buffers()):
        if t.device.type != "cpu":
            raise ValueError(
                f"{name} is on {t.device}; kdlib.quant's int8 kernels are the CPU's: "
                f"move it with {name}.cpu() first"
            )


@contextlib.contextmanager
def _quiet():
    # torchao logs missing GPU kernels and torch its own deprecations while importing and
    # tracing; none concerns a CPU user, so they are kept out of the notebooks' output.
    loggers = [logging.getLogger(n) for n in ("torchao", "torch.utils._pytree", "torch._inductor")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


with _quiet():  # once, here, so that a later `import torchao` prints nothing either
    import torchao.quantization  # noqa: F401


def qrange(bits: int = 8, symmetric: bool = True) -> tuple[int, int]:
    """The integers a ``bits``-bit code can hold: ``[−2^(b−1), 2^(b−1) − 1]`` when
    ``symmetric`` (signed), else ``[0, 2^b − 1]`` (unsigned)."""
    b = _check_bits(bits)
    return (-(2 ** (b - 1)), 2 ** (b - 1) - 1) if symmetric else (0, 2**b - 1)


def qparams(
    x: torch.Tensor, bits: int = 8, *, symmetric: bool = True, per_channel: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Scale and zero-point that map the range of ``x`` onto ``bits``-bit integers.

    With :math:`m = \min(x, 0)` and :math:`M = \max(x, 0)` (zero is always representable):

    - symmetric: :math:`z = 0`, :math:`s = \max(|m|, M) / ((q_{max} - q_{min}) / 2)`;
    - asymmetric: :math:`s = (M - m) / (q_{max} - q_{min})`, :math:`z = q_{min} - round(m / s)`.

    The symmetric scale divides by 127.5 at 8 bits (torchao's choice, which uses the code
    −128 too); the textbook's ``max|x| / 127`` leaves it unused.

    Args:
        x: the tensor, e.g. a weight.
        bits: bit width, 2 to 8 (:data:`BITS`).
        symmetric: signed codes around zero, or unsigned codes over ``[m, M]``.
        per_channel: one scale per slice ``x[c]`` (output channel of a weight), else one.

    Shape:
        x: ``(C, ...)``; scale and zero-point: ``(C, 1, ..., 1)`` per channel, else ``()``.

    Example:
        >>> s, z = qparams(torch.tensor([-1.0, 0.5, 2.0]), 8, symmetric=False)
        >>> round(float(s) * 255, 6), int(z)
        (3.0, 85)
    """
    V.tensor("x", x, floating=True, finite=True)
    if x.numel() == 0:
        raise ValueError("x is empty: nothing to take a range from")
    qmin, qmax = qrange(bits, V.flag("symmetric", symmetric))
    dims = (
        tuple(range(1, x.dim())) if V.flag("per_channel", per_channel) else tuple(range(x.dim()))
    )
    if per_channel and x.dim() < 1:
        raise ValueError("per_channel needs a tensor with a channel dimension (x.dim() >= 1)")
    x = x.detach()
    lo = x.amin(dim=dims, keepdim=per_channel).clamp(max=0)
    hi = x.amax(dim=dims, keepdim=per_channel).clamp(min=0)
    tiny = torch.finfo(x.dtype).smallest_normal  # an all-zero tensor gets a tiny scale
    if symmetric:
        scale = (torch.maximum(-lo, hi) / ((qmax - qmin) / 2)).clamp(min=tiny)
        return scale, torch.zeros_like(scale, dtype=torch.int32)
    scale = ((hi - lo) / (qmax - qmin)).clamp(min=tiny)
    zero_point = (qmin - torch.round(lo / scale)).clamp(qmin, qmax)
    return scale, zero_point.to(torch.int32)


def quantize(
    x: torch.Tensor, scale, zero_point, bits: int = 8, *, symmetric: bool = True
) -> torch.Tensor:
    r""":math:`q = clamp(round(x / s) + z, q_{min}, q_{max})` as integers (int8 when
    ``symmetric``, else uint8): without the clamp, values beyond the range would wrap around.

    ``x / s`` is computed as ``x * (1 / s)``, as torchao does, so both round the same way.

    Args:
        x: float tensor to quantize.
        scale, zero_point: from :func:`qparams` (tensors or numbers).
        bits: bit width, 2 to 8; symmetric: signed codes (int8) or unsigned ones (uint8).

    Shape:
        x: any; scale and zero-point broadcast against it; output: like ``x``.

    Example:
        >>> quantize(torch.tensor([-1.0, 0.5, 2.0]), 2 / 127.5, 0).tolist()
        [-64, 32, 127]
    """
    _check_qparams(x, scale, zero_point)
    qmin, qmax = qrange(bits, V.flag("symmetric", symmetric))
    q = torch.clamp(torch.round(x * (1.0 / scale)) + zero_point, qmin, qmax)
    return q.to(torch.int8 if symmetric else torch.uint8)


def dequantize(q: torch.Tensor, scale, zero_point) -> torch.Tensor:
    r""":math:`\hat x = s \cdot (q - z)`: the float value each integer code stands for.

    Args:
        q: integer codes (from :func:`quantize`); scale, zero_point: those that made them.

    Shape:
        q: any; scale and zero-point broadcast against it; output: float32, like ``q``.

    Example:
        >>> dequantize(torch.tensor([-64, 32, 127]), 2 / 127.5, 0).tolist()[1]
        0.501960813999176
    """
    q = q.to(torch.float32) if torch.is_tensor(q) else q
    _check_qparams(q, scale, zero_point)
    return (q - zero_point) * scale


def fake_quantize(
    x: torch.Tensor, scale, zero_point, bits: int = 8, *, symmetric: bool = True
) -> torch.Tensor:
    r"""Quantize then dequantize in float, with the straight-through gradient.

    Forward: :math:`\hat x = s \cdot (clamp(round(x / s) + z, q_{min}, q_{max}) - z)`.
    Backward: ``round`` has gradient 0 almost everywhere, which would stop training, so the
    straight-through estimator passes the gradient as if rounding were the identity:
    :math:`\partial \hat x / \partial x = 1` where :math:`round(x/s) + z` lies in
    :math:`[q_{min}, q_{max}]`, and 0 where the clamp cuts it off. A code that lands exactly
    on :math:`q_{min}` or :math:`q_{max}` gets the gradient ``torch.clamp`` gives at its bound:
    1 before torch 2.14, 0 from 2.14 on (torchao's fake quantization does the same).

    Shape:
        x: any; scale and zero-point broadcast against it; output: like ``x``.

    Example:
        >>> x = torch.tensor([0.26, 9.0], requires_grad=True)
        >>> y = fake_quantize(x, torch.tensor(0.5), torch.tensor(0), 4)
        >>> y.tolist(), torch.autograd.grad(y.sum(), x)[0].tolist()
        ([0.5, 3.5], [1.0, 0.0])
    """
    _check_qparams(x, scale, zero_point)
    qmin, qmax = qrange(bits, V.flag("symmetric", symmetric))
    r = x * (1.0 / scale)
    r = r + (torch.round(r) - r).detach()  # round, but with gradient 1: straight through
    q = torch.clamp(r + zero_point, qmin, qmax)  # gradient 0 where the clamp cuts
    return (q - zero_point) * scale


def _layers(model: nn.Module, layers) -> dict[str, nn.Module]:
    named = dict(model.named_modules())
    if layers is None:
        return {n: m for n, m in named.items() if isinstance(m, _LAYERS)}
    chosen = {}
    for name in [layers] if isinstance(layers, str) else layers:
        if name not in named:
            raise ValueError(f"layers: the model has no layer {name!r}")
        if not isinstance(named[name], _LAYERS):
            raise TypeError(
                f"layers: {name!r} is a {type(named[name]).__name__}; kdlib.quant quantizes "
                "the weights of Linear and Conv2d layers only"
            )
        chosen[name] = named[name]
    return chosen


def quantize_weights(
    model: nn.Module,
    bits: int = 8,
    *,
    symmetric: bool = True,
    per_channel: bool = True,
    layers=None,
) -> nn.Module:
    """A copy of ``model`` whose Linear and Conv2d weights are replaced by their quantized
    values ``x̂`` (simulated quantization: the accuracy cost of ``bits``-bit weights).

    Args:
        layers: names of the layers to quantize (default: every Linear and Conv2d); any other
            layer type is refused by name.
    """
    _check_bits(bits)
    _layers(model, layers)  # refuse bad names before copying anything
    net = copy.deepcopy(model)
    with torch.no_grad():
        for layer in _layers(net, layers).values():
            w = layer.weight
            s, z = qparams(w, bits, symmetric=symmetric, per_channel=per_channel)
            w.copy_(dequantize(quantize(w, s, z, bits, symmetric=symmetric), s, z))
    return net


def saved_bytes(model: nn.Module) -> int:
    """Bytes of ``torch.save(model.state_dict())``: what the model takes on disk."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def dynamic_int8(model: nn.Module, reduce_range: bool = True) -> nn.Module:
    """A copy of ``model`` with torchao's dynamic int8 quantization of every ``nn.Linear``:
    weights stored as int8 (one scale per output unit), activations quantized to int8 on the
    fly, per example. Other layers stay float.

    Args:
        reduce_range: use 7-bit codes (−64 to 63) in the int8 storage. CPUs without VNNI
            instructions (and the course, which pins AVX2) multiply int8 pairs into 16-bit
            sums that can overflow at full range; halving the range avoids it. Pass False on
            a CPU with VNNI for full 8-bit codes.
    """
    _check_cpu(model)
    V.flag("reduce_range", reduce_range)
    if not any(isinstance(m, nn.Linear) for m in model.modules()):
        raise TypeError(f"model: a {type(model).__name__} with no nn.Linear layer to quantize")
    with _quiet():
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

        net = copy.deepcopy(model).eval()
        quantize_(net, Int8DynamicActivationInt8WeightConfig(reduce_range=reduce_range))
    return net


def static_int8(model: nn.Module, X: torch.Tensor, batch_size: int = 256) -> nn.Module:
    """Static int8 post-training quantization of a copy of ``model`` (convolutions included).

    ``torch.export`` captures the model as a graph; torchao's x86 quantizer (PyTorch's CPU
    backend, oneDNN) marks where tensors become int8; running the calibration images ``X``
    records each activation's range, which fixes its scale and zero-point; ``convert_pt2e``
    stores the weights as int8 (one scale per output channel) and folds BatchNorm into the
    convolution before it. In eager mode the graph simulates the integer arithmetic; for int8
    kernels compile it (:func:`compiled`).

    Shape:
        X: ``(N, *input_shape)``, a few hundred training images are enough.
    """
    _check_cpu(model)
    if not torch.is_tensor(X) or X.dim() < 2 or len(X) < 2:
        raise ValueError(
            "X must be a batch of at least 2 calibration inputs, shape (N, *input_shape)"
        )
    V.tensor("X", X, floating=True, finite=True)
    if X.device.type != "cpu":
        raise ValueError(f"X is on {X.device.type}: calibrate on the CPU (X.cpu())")
    V.integer("batch_size", batch_size)
    with _quiet():
        import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as x86
        from torchao.quantization.pt2e import allow_exported_model_train_eval
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        net = copy.deepcopy(model).eval()
        batch = {0: torch.export.Dim("batch")}  # any batch size, not just the example's
        graph = torch.export.export(net, (X[:2],), dynamic_shapes=(batch,)).module()
        quantizer = x86.X86InductorQuantizer()
        quantizer.set_global(x86.get_default_x86_inductor_quantization_config())
        graph = prepare_pt2e(graph, quantizer)
        with torch.no_grad():
            for i in range(0, len(X), batch_size):
                graph(X[i : i + batch_size])  # observers record the ranges
        graph = convert_pt2e(graph)
    used = {n.target for n in graph.graph.nodes if n.op == "get_attr"}
    for name, _ in [*graph.named_parameters(), *graph.named_buffers()]:
        if name not in used:  # the float weights and BatchNorm statistics now folded away
            owner, _, attr = name.rpartition(".")
            delattr(graph.get_submodule(owner), attr)
    allow_exported_model_train_eval(graph)
    graph.input_shape = tuple(X.shape[1:])  # read by kdlib.latency and kdlib.macs
    return graph


def compiled(model: nn.Module, X: torch.Tensor) -> nn.Module:
    """``torch.compile`` for inference, warmed up on ``X``: for a :func:`static_int8` graph,
    inductor replaces the simulated arithmetic with oneDNN's int8 kernels (needs a C++
    compiler; takes a few seconds)."""
    _check_cpu(model)
    with _quiet():
        from torch._inductor import config

        net = torch.compile(model)
        with config.patch(freezing=True), torch.no_grad():
            net(X)
            net(X[:1])
    net.input_shape = tuple(X.shape[1:])
    return net


def _qat_config(bits: int, step: str):
    from torchao.quantization import IntxWeightOnlyConfig, PerAxis
    from torchao.quantization.qat import QATConfig

    dtype = getattr(torch, f"int{_check_bits(bits)}")
    base = IntxWeightOnlyConfig(weight_dtype=dtype, granularity=PerAxis(0))
    return QATConfig(base, step=step)


def prepare_qat(model: nn.Module, bits: int = 4) -> nn.Module:
    """A copy of ``model`` ready for quantization-aware training: every ``nn.Linear`` becomes
    torchao's ``FakeQuantizedLinear``, whose forward uses the weight fake-quantized to ``bits``
    bits (symmetric, one scale per output unit, recomputed every step) with the
    straight-through gradient. Train it with ``kdlib.fit`` or ``kdlib.distill``, then
    :func:`convert_qat`."""
    _check_cpu(model)
    _check_bits(bits)
    if not any(isinstance(m, nn.Linear) for m in model.modules()):
        raise TypeError(f"model: a {type(model).__name__} with no nn.Linear layer to quantize")
    with _quiet():
        from torchao.quantization import quantize_

        net = copy.deepcopy(model)
        quantize_(net, _qat_config(bits, "prepare"))
    return net


def convert_qat(model: nn.Module, bits: int = 4) -> nn.Module:
    """A copy of a :func:`prepare_qat` model with real ``bits``-bit weights (one int8 byte
    each, unpacked) that compute what the fake-quantized forward did."""
    _check_cpu(model)
    if not any("FakeQuantized" in type(m).__name__ for m in model.modules()):
        raise TypeError(
            f"model: a {type(model).__name__} with no fake-quantized layer; "
            "prepare it with prepare_qat(model, bits) and train it first"
        )
    with _quiet():
        from torchao.quantization import quantize_

        net = copy.deepcopy(model).eval()
        quantize_(net, _qat_config(bits, "convert"))
    return net
