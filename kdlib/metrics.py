"""What a compressed model costs, and how close it stays to its teacher.

Quality: :func:`accuracy`, :func:`agreement` (top-1), :func:`mean_kl`. Cost: :func:`count_params`,
:func:`size_bytes` (dense or CSR), :func:`latency`, :func:`compare_latency`, :func:`macs`.
:func:`pareto_front` keeps the rows no other row beats on both size and accuracy.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import validate as V
from .train import predict

__all__ = [
    "accuracy", "agreement", "mean_kl", "count_params", "size_bytes", "latency", "compare_latency",
    "macs", "input_shape_of", "pareto_front"
]  # fmt: skip


def _logits(model_or_logits, X: torch.Tensor | None) -> torch.Tensor:
    if isinstance(model_or_logits, nn.Module):
        if X is None:
            raise ValueError("pass the inputs X when giving a model instead of logits")
        return predict(model_or_logits, X)
    return model_or_logits


def _pair(student, teacher, X: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Student and teacher logits, both on the student's device."""
    s = _logits(student, X)
    t = _logits(teacher, X).to(s.device)
    if s.shape != t.shape:
        raise ValueError(f"student and teacher logits differ in shape: {s.shape} vs {t.shape}")
    return s, t


def accuracy(model_or_logits, X_or_y: torch.Tensor, y: torch.Tensor | None = None) -> float:
    """Share of correct top-1 predictions: ``accuracy(logits, y)`` or ``accuracy(model, X, y)``."""
    if y is None:
        logits, y = model_or_logits, X_or_y
    else:
        logits = _logits(model_or_logits, X_or_y)
    if logits.shape[0] != y.shape[0]:
        raise ValueError(f"{logits.shape[0]} predictions but {y.shape[0]} labels")
    return float((logits.argmax(1) == y.to(logits.device)).float().mean())


def agreement(student, teacher, X: torch.Tensor | None = None) -> float:
    """Share of inputs where student and teacher predict the same class (top-1)."""
    s, t = _pair(student, teacher, X)
    return float((s.argmax(1) == t.argmax(1)).float().mean())


def mean_kl(student, teacher, X: torch.Tensor | None = None, T: float = 1.0) -> float:
    """Mean over inputs of ``KL(p_teacher(T) ‖ p_student(T))`` in nats (no T² factor)."""
    V.number("temperature T", T, 0, open_low=True)
    s, t = _pair(student, teacher, X)
    log_p_s, log_p_t = F.log_softmax(s / T, dim=1), F.log_softmax(t / T, dim=1)
    return float(F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True))


def _effective_tensors(model: nn.Module):
    """``(name, tensor)`` per parameter as used: a pruned ``weight``, not ``weight_orig``."""
    for mod_name, mod in model.named_modules():
        for n, p in mod.named_parameters(recurse=False):
            if n.endswith("_orig"):
                n = n.removesuffix("_orig")
                p = getattr(mod, n)
            yield f"{mod_name}.{n}".lstrip("."), p


def count_params(model: nn.Module, nonzero: bool = False) -> int:
    """Number of parameters (effective weights for pruned models); ``nonzero`` counts ≠ 0."""
    tensors = [t for _, t in _effective_tensors(model)]
    return int(sum(int(torch.count_nonzero(t)) if nonzero else t.numel() for t in tensors))


def size_bytes(model: nn.Module, sparse: bool = False, index_bytes: int = 4) -> int:
    """Bytes to store the parameters (effective weights for pruned models).

    With ``sparse=True`` every weight of 2 or more dimensions counts as a CSR copy of its nonzeros:
    values, ``index_bytes`` per column index and per row pointer (as ``(shape[0], rest)``).
    """
    total = 0
    for _, t in _effective_tensors(model):
        if sparse and t.ndim >= 2:
            nnz = int(torch.count_nonzero(t))
            total += nnz * (t.element_size() + index_bytes) + (t.shape[0] + 1) * index_bytes
        else:
            total += t.numel() * t.element_size()
    return int(total)


def input_shape_of(model: nn.Module) -> tuple[int, ...]:
    """The shape of one example ``model`` takes: a :func:`kdlib.cnn`'s recorded ``input_shape``,
    or ``(in_features,)`` when the first weight layer is Linear; else ``ValueError``.
    """
    recorded = getattr(model, "input_shape", None)
    if recorded is not None:
        return tuple(int(d) for d in recorded)
    for m in model.modules():
        if isinstance(m, nn.Linear):
            return (m.in_features,)
        if isinstance(m, nn.modules.conv._ConvNd | nn.RNNBase | nn.Embedding):
            break
    raise ValueError(
        f"cannot tell the input shape of this {type(model).__name__}; pass input_shape=(C, H, W), "
        "e.g. data.input_shape"
    )


def _example(model: nn.Module, input_shape: Sequence[int] | None, batch_size: int):
    """A random batch of ``input_shape`` examples; it runs once through ``model`` here, to check
    the shape (and, inside :func:`macs`, that forward is the one counted)."""
    if input_shape is None:
        shape = input_shape_of(model)
    elif isinstance(input_shape, torch.Tensor) or not isinstance(input_shape, Sequence):
        raise TypeError(f"input_shape must be a shape such as (1, 28, 28), got {input_shape!r}")
    else:
        shape = tuple(V.integer("input_shape entries", d) for d in input_shape)
    x = torch.randn(batch_size, *shape, device=V.device_of(model, torch.device("cpu")))
    try:
        model(x)
    except (RuntimeError, ValueError) as e:
        raise ValueError(
            f"the model cannot take examples of input_shape={shape} (one example's shape, "
            f"without the batch dimension): {e}"
        ) from e
    return x


def latency(
    model: nn.Module,
    input_shape: Sequence[int] | None = None,
    batch_size: int = 256,
    *,
    min_run_time: float = 0.3,
    num_threads: int | None = None,
) -> float:
    """Median seconds of one forward pass at ``batch_size`` (eval mode, no autograd), timed by
    ``torch.utils.benchmark.Timer.blocked_autorange`` for at least ``min_run_time``.

    Compare models by ratios measured in one process. ``input_shape``: one example's shape
    (default :func:`input_shape_of`).
    """
    from torch.utils.benchmark import Timer

    with torch.no_grad(), V.eval_mode(model):
        x = _example(model, input_shape, batch_size)  # also a warm-up (first-call allocations)
        threads = num_threads or torch.get_num_threads()
        timer = Timer("model(x)", globals={"model": model, "x": x}, num_threads=threads)
        return float(timer.blocked_autorange(min_run_time=min_run_time).median)


def compare_latency(
    models: dict[str, nn.Module],
    input_shape: Sequence[int] | None = None,
    batch_size: int = 256,
    *,
    rounds: int = 5,
    min_run_time: float = 0.1,
) -> dict[str, float]:
    """Median :func:`latency` of several models timed in turns (A, B, C, A, B, C, ...), so
    machine noise falls on all alike. Returns ``{name: seconds}``."""
    if not models:
        raise ValueError("compare_latency needs at least one model")
    V.integer("rounds", rounds)
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            times[name].append(latency(model, input_shape, batch_size, min_run_time=min_run_time))
    return {name: statistics.median(ts) for name, ts in times.items()}


def macs(model: nn.Module, input_shape: Sequence[int] | None = None) -> int:
    """Multiply–accumulates of one forward pass for one example (``FlopCounterMode`` FLOPs / 2).

    Only matrix products and convolutions count; masked zeros are still multiplied (removing
    units reduces MACs, masking does not). ``input_shape`` as in :func:`latency`.
    """
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), V.eval_mode(model), FlopCounterMode(display=False) as counter:
        _example(model, input_shape, 1)
    return int(counter.get_total_flops() // 2)


def pareto_front(rows: Sequence[Mapping], x: str, y: str) -> list[Mapping]:
    r"""The rows no other row beats on both: smaller ``x`` and higher ``y``.

    Row :math:`b` dominates :math:`a` when :math:`x_b \le x_a` and :math:`y_b \ge y_a`, one of
    them strict. Ties in ``(x, y)`` are all kept.

    Args:
        rows: mappings with finite numbers under ``x`` and ``y``.
        x: the key to minimise (a cost).
        y: the key to maximise (a quality).

    Returns:
        The non-dominated rows themselves, sorted by ``x``.

    Example:
        >>> rows = [{"name": "a", "bytes": 10, "acc": 0.9}, {"name": "b", "bytes": 20, "acc": 0.8},
        ...         {"name": "c", "bytes": 30, "acc": 0.95}]
        >>> [r["name"] for r in pareto_front(rows, "bytes", "acc")]
        ['a', 'c']
    """
    for key, what in ((x, "x"), (y, "y")):
        if not isinstance(key, str):
            raise TypeError(f"{what} must be a key (str), got {type(key).__name__}")
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise TypeError(f"rows[{i}] must be a mapping (e.g. a dict), got {type(row).__name__}")
        for key in (x, y):
            if key not in row:
                raise ValueError(f"rows[{i}] has no key {key!r}; it has {sorted(map(str, row))}")
            V.number(f"rows[{i}][{key!r}]", row[key])
    # Sweep by increasing x: the best rows of each x survive if they beat every smaller x
    # (equal to a smaller x's best is dominated: that one is as good and smaller).
    front: list[Mapping] = []
    best_before = -math.inf
    for _, group in itertools.groupby(sorted(rows, key=lambda r: r[x]), key=lambda r: r[x]):
        group = list(group)
        top = max(r[y] for r in group)
        if top > best_before:
            front += [r for r in group if r[y] == top]
            best_before = top
    return front
