"""What a compressed model costs and how close it stays to its teacher.

Quality: :func:`accuracy`, :func:`agreement` (top-1 agreement between two models) and
:func:`mean_kl` (mean KL divergence from one model's predictions to another's).
Cost: :func:`count_params` (all or nonzero), :func:`size_bytes` (dense, or what a CSR copy of
each weight matrix would take), :func:`latency` (warm-up, then the median of repeated timings,
with ``torch.utils.benchmark.Timer``; :func:`compare_latency` times several models in turns)
and :func:`macs` (multiply–accumulates counted by
``torch.utils.flop_counter.FlopCounterMode``).
Trade-offs: :func:`pareto_front` picks, from rows of (size, accuracy), the ones no other row
beats on both.
"""

from __future__ import annotations

import math
import numbers
import statistics
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .train import predict

__all__ = [
    "accuracy",
    "agreement",
    "mean_kl",
    "count_params",
    "size_bytes",
    "latency",
    "compare_latency",
    "macs",
    "input_shape_of",
    "pareto_front",
]


def _logits(model_or_logits, X: torch.Tensor | None) -> torch.Tensor:
    if isinstance(model_or_logits, nn.Module):
        if X is None:
            raise ValueError("pass the inputs X when giving a model instead of logits")
        return predict(model_or_logits, X)
    return model_or_logits


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
    """Share of inputs on which student and teacher predict the same class (top-1).

    ``student`` and ``teacher`` are models (then ``X`` is required) or logits ``(N, C)``.
    """
    s, t = _logits(student, X), _logits(teacher, X)
    if s.shape != t.shape:
        raise ValueError(f"student and teacher logits differ in shape: {s.shape} vs {t.shape}")
    return float((s.argmax(1) == t.argmax(1).to(s.device)).float().mean())


def mean_kl(student, teacher, X: torch.Tensor | None = None, T: float = 1.0) -> float:
    """Mean over inputs of ``KL(p_teacher(T) ‖ p_student(T))`` in nats (no T² factor).

    0 means the student reproduces the teacher's predicted distribution exactly.
    """
    if not T > 0:
        raise ValueError(f"temperature T must be > 0, got {T}")
    s = _logits(student, X)
    t = _logits(teacher, X).to(s.device)
    if s.shape != t.shape:
        raise ValueError(f"student and teacher logits differ in shape: {s.shape} vs {t.shape}")
    log_p_s = F.log_softmax(s / T, dim=1)
    log_p_t = F.log_softmax(t / T, dim=1)
    return float(F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True))


def _effective_tensors(model: nn.Module):
    """(name, tensor) for every parameter and buffer as the model computes with it.

    For a model pruned with ``torch.nn.utils.prune`` this yields ``weight`` (= orig × mask),
    not ``weight_orig`` and ``weight_mask``, which are bookkeeping.
    """
    seen = set()
    for mod_name, mod in model.named_modules():
        pruned = {
            n[: -len("_orig")]
            for n, _ in mod.named_parameters(recurse=False)
            if n.endswith("_orig")
        }
        for n, p in mod.named_parameters(recurse=False):
            if n.endswith("_orig") and n[: -len("_orig")] in pruned:
                continue
            seen.add(id(p))
            yield f"{mod_name}.{n}".lstrip("."), p
        for n in pruned:
            yield f"{mod_name}.{n}".lstrip("."), getattr(mod, n)


def count_params(model: nn.Module, nonzero: bool = False) -> int:
    """Number of parameters (effective weights for pruned models); ``nonzero`` counts ≠ 0."""
    tensors = (t for _, t in _effective_tensors(model))
    if nonzero:
        return int(sum(int(torch.count_nonzero(t)) for t in tensors))
    return int(sum(t.numel() for t in tensors))


def size_bytes(model: nn.Module, sparse: bool = False, index_bytes: int = 4) -> int:
    """Bytes to store the parameters.

    Args:
        model: any module; pruned models are measured on their effective weights.
        sparse: if True, every 2-D or larger weight is counted as a CSR copy of its nonzeros
            (values + ``index_bytes`` per column index + ``index_bytes`` per row pointer, the
            matrix viewed as ``(shape[0], rest)``); 1-D tensors stay dense.
        index_bytes: bytes per stored index (4 for int32).
    """
    total = 0
    for _, t in _effective_tensors(model):
        item = t.element_size()
        if sparse and t.ndim >= 2:
            rows = t.shape[0]
            nnz = int(torch.count_nonzero(t))
            total += nnz * (item + index_bytes) + (rows + 1) * index_bytes
        else:
            total += t.numel() * item
    return int(total)


def input_shape_of(model: nn.Module) -> tuple[int, ...]:
    """The shape of one example that ``model`` takes, as far as the model itself tells.

    A CNN from :func:`kdlib.cnn` (every convolutional preset) records its ``input_shape``; a
    model whose first weight layer is an ``nn.Linear`` takes ``(in_features,)`` (a leading
    ``nn.Flatten`` accepts that too).

    Raises:
        ValueError: anything else, e.g. a convolution built by hand, whose height and width
            the model does not record: pass ``input_shape`` (e.g. ``data.input_shape``).
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
        f"cannot tell the input shape of this {type(model).__name__}: it does not record one "
        "and does not start with nn.Linear; pass input_shape=(C, H, W), e.g. data.input_shape"
    )


def _example_input(model: nn.Module, input_shape: Sequence[int] | None, batch_size: int):
    shape = input_shape_of(model) if input_shape is None else tuple(input_shape)
    p = next(iter(model.parameters()), None)
    device = p.device if p is not None else torch.device("cpu")
    return torch.randn(batch_size, *shape, device=device)


def latency(
    model: nn.Module,
    input_shape: Sequence[int] | None = None,
    batch_size: int = 256,
    *,
    min_run_time: float = 0.3,
    num_threads: int | None = None,
) -> float:
    """Median seconds of one forward pass at ``batch_size`` (eval mode, no autograd).

    Uses ``torch.utils.benchmark.Timer.blocked_autorange``, which warms up, then times blocks
    of runs for at least ``min_run_time`` seconds, and reports the median per run. Compare
    two models by a ratio measured in the same process, not by absolute numbers.
    ``input_shape`` is the shape of one example; by default the model's own
    (:func:`input_shape_of`).
    """
    from torch.utils.benchmark import Timer

    x = _example_input(model, input_shape, batch_size)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x)  # warm-up outside the timer too (first-call allocations)
            timer = Timer(
                stmt="model(x)",
                globals={"model": model, "x": x},
                num_threads=num_threads or torch.get_num_threads(),
                setup="import torch",
            )
            with torch.no_grad():
                m = timer.blocked_autorange(min_run_time=min_run_time)
    finally:
        model.train(was_training)
    return float(m.median)


def compare_latency(
    models: dict[str, nn.Module],
    input_shape: Sequence[int] | None = None,
    batch_size: int = 256,
    *,
    rounds: int = 5,
    min_run_time: float = 0.1,
) -> dict[str, float]:
    """Median :func:`latency` of several models, measured in turns (A, B, C, A, B, C, ...).

    Taking turns spreads machine noise (other processes, clock changes) over every model
    alike, so the ratios between the returned medians are fairer than separate runs.

    Returns:
        ``{name: median seconds per forward pass at batch_size}``.
    """
    if not models:
        raise ValueError("compare_latency needs at least one model")
    if not isinstance(rounds, int) or rounds <= 0:
        raise ValueError(f"rounds must be a positive integer, got {rounds!r}")
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            t = latency(model, input_shape, batch_size, min_run_time=min_run_time)
            times[name].append(t)
    return {name: statistics.median(ts) for name, ts in times.items()}


def macs(model: nn.Module, input_shape: Sequence[int] | None = None) -> int:
    """Multiply–accumulate operations of one forward pass for a single example.

    ``input_shape`` is the shape of one example; by default the model's own
    (:func:`input_shape_of`).

    Counted with ``torch.utils.flop_counter.FlopCounterMode`` (which counts 2 FLOPs per MAC),
    so only matrix products and convolutions are included. Zeros in masked weights are still
    multiplied: masking does not reduce MACs, removing units does.
    """
    from torch.utils.flop_counter import FlopCounterMode

    x = _example_input(model, input_shape, 1)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops() // 2)


def pareto_front(rows: Sequence[Mapping], x: str, y: str) -> list[Mapping]:
    r"""The rows no other row beats on both counts: smaller ``x`` and higher ``y``.

    Row :math:`b` *dominates* row :math:`a` when :math:`x_b \le x_a` and :math:`y_b \ge y_a`,
    with at least one of the two strict. The front is every row that no row dominates: for
    ``x="bytes"`` and ``y="accuracy"``, the models for which nothing in ``rows`` is both at
    most as large and at least as accurate. Rows with identical ``(x, y)`` are all kept.
    Pure Python on numbers, so a widget or a plot can call it on stored results.

    Args:
        rows: mappings (e.g. dicts) holding at least the keys ``x`` and ``y``, with real,
            finite values.
        x: the key to minimise (a cost: parameters, bytes, MACs, latency).
        y: the key to maximise (a quality: accuracy).

    Returns:
        The non-dominated rows themselves (not copies), sorted by ``x`` increasing (rows with
        the same ``x`` keep their input order). Empty for empty ``rows``.

    Raises:
        TypeError: ``x`` or ``y`` is not a string, or a row is not a mapping.
        ValueError: a row lacks ``x`` or ``y``, or holds a value that is not a finite number
            (the message names the row and the key).

    Example:
        >>> rows = [{"name": "a", "bytes": 10, "acc": 0.90},
        ...         {"name": "b", "bytes": 20, "acc": 0.85},
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
            v = row[key]
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
                raise ValueError(f"rows[{i}][{key!r}] must be a finite number, got {v!r}")
    # Sweep by increasing x: a row survives when it is the best of its x and beats every
    # smaller one (equal to a smaller x's best is dominated: that one is as good and smaller).
    order = sorted(range(len(rows)), key=lambda i: rows[i][x])
    front: list[Mapping] = []
    best_before = -math.inf
    start = 0
    while start < len(order):
        stop = start
        while stop < len(order) and rows[order[stop]][x] == rows[order[start]][x]:
            stop += 1
        group = [rows[i] for i in order[start:stop]]
        top = max(r[y] for r in group)
        if top > best_before:
            front += [r for r in group if r[y] == top]
            best_before = top
        start = stop
    return front
