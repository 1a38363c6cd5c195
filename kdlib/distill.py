"""Distillation on :func:`kdlib.train.fit`: :func:`distill` supplies ``fit``'s ``loss_fn`` (the KD
step) and ``metrics`` (agreement and KL to the teacher), so there is no second loop. The teacher
runs inside :func:`frozen` and is never changed; with fixed inputs its logits are computed once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import losses as L
from . import validate as V
from .data import Dataset
from .metrics import agreement, mean_kl
from .train import History, fit, get_device, on_device, predict

__all__ = [
    "distill", "frozen", "DistillBatch", "LOSS_NAMES", "resolve_loss"
]  # fmt: skip

# name -> (what it computes, for the history and error messages)
LOSS_NAMES: dict[str, str] = {
    "kd": "alpha·T²·KL(p_t(T)‖p_s(T)) + (1−alpha)·CE(labels)   (Hinton et al. 2015)",
    "soft": "T²·KL(p_t(T)‖p_s(T)) only (alpha = 1)",
    "soft-ce": "alpha·(−T²·Σ p_t log p_s) + (1−alpha)·CE(labels)",
    "mse": "mean((z_s − z_t)²) on logits only   (Ba & Caruana 2014)",
    "mse+ce": "CE(labels) + lam·mean((z_s − z_t)²)",
    "ce": "CE(labels) only: the teacher is ignored (a scratch baseline in the same loop)",
}

LogitLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class DistillBatch:
    """What an ``extra_loss`` hook sees for one batch, after the student's forward."""

    student: nn.Module  # the model being trained (train mode)
    teacher: nn.Module  # the frozen teacher (eval mode, requires_grad off)
    X: torch.Tensor  # (B, *input_shape) the batch, after augmentation
    y: torch.Tensor  # (B,) labels
    idx: torch.Tensor  # (B,) row indices into data.X_train
    student_logits: torch.Tensor  # (B, C) with autograd
    teacher_logits: torch.Tensor  # (B, C) constants
    teacher_ran: bool  # whether the teacher's forward ran on this batch
    epoch: int  # 1-based epoch number
    batch: int  # 0-based batch number within the epoch


@contextmanager
def frozen(teacher: nn.Module):
    """Eval mode and ``requires_grad=False`` for ``teacher`` inside the block; every mode and flag
    is restored on exit, even after an exception. Run the forward under ``torch.no_grad()`` too.

    Example:
        >>> with frozen(teacher), torch.no_grad():
        ...     teacher_logits = teacher(X)
    """
    flags = [(p, p.requires_grad) for p in teacher.parameters()]
    with V.eval_mode(teacher):
        for p, _ in flags:
            p.requires_grad_(False)
        try:
            yield teacher
        finally:
            for p, flag in flags:
                p.requires_grad_(flag)


def resolve_loss(
    loss: str | LogitLoss | None, T: float = 4.0, alpha: float = 0.9, lam: float = 1.0
) -> LogitLoss | None:
    """The loss named in :data:`LOSS_NAMES` as ``fn(z_s, z_t, y)``; a callable or ``None`` is
    returned as it is. ``T``, ``alpha`` and ``lam`` are checked even when unused."""
    V.number("temperature T", T, 0, open_low=True)
    V.number("alpha", alpha, 0, 1)
    V.number("lam", lam, 0)
    if loss is None or (callable(loss) and not isinstance(loss, str)):
        return loss
    named = {
        "kd": lambda s, t, y: L.kd_loss(s, t, y, T, alpha),
        "soft": lambda s, t, y: L.soft_target_kl(s, t, T),
        "soft-ce": lambda s, t, y: L.kd_loss(s, t, y, T, alpha, soft="ce"),
        "mse": lambda s, t, y: L.mse_logits(s, t),
        "mse+ce": lambda s, t, y: L.mse_kd_loss(s, t, y, lam),
        "ce": lambda s, t, y: F.cross_entropy(s, y),
    }
    if not isinstance(loss, str) or loss not in named:
        raise ValueError(
            f"unknown loss {loss!r}; use one of {', '.join(map(repr, LOSS_NAMES))}, a callable "
            "(student_logits, teacher_logits, y) -> scalar, or None with an extra_loss"
        )
    return named[loss]


def distill(
    student: nn.Module,
    teacher: nn.Module,
    data: Dataset,
    loss: str | LogitLoss | None = "kd",
    epochs: int = 5,
    lr: float = 1e-3,
    *,
    T: float = 4.0,
    alpha: float = 0.9,
    lam: float = 1.0,
    cache_teacher_logits: bool | None = None,
    teacher_logits: torch.Tensor | None = None,
    extra_loss: Callable[[DistillBatch], torch.Tensor] | None = None,
    **fit_kwargs,
) -> History:
    r"""Train ``student`` to match ``teacher`` on ``data`` (the teacher is never modified).

    Each step takes the teacher's logits :math:`z_t` (cached, or a no-grad forward), the
    student's :math:`z_s`, and ``loss(z_s, z_t, y)`` plus ``extra_loss``; for ``"kd"``

    .. math::
        \alpha\, T^2\, KL(p_t(T) \,\|\, p_s(T)) + (1 - \alpha)\, CE(z_s, y)

    Args:
        student: the model to train, ``(N, *input_shape) -> (N, C)`` logits.
        teacher: the trained model to imitate, :func:`frozen` for the whole run; one on another
            device is moved to the training device and back afterwards.
        data, epochs, lr: as in :func:`kdlib.train.fit`.
        loss: a name from :data:`LOSS_NAMES` (``"kd"``, ``"soft"``, ``"soft-ce"``, ``"mse"``,
            ``"mse+ce"``, ``"ce"``), a callable ``(student_logits, teacher_logits, y) ->
            scalar``, or ``None`` (then ``extra_loss`` is the whole objective).
        T: temperature of the soft losses (> 0).
        alpha: weight of the soft part in ``"kd"`` / ``"soft-ce"``, in [0, 1].
        lam: weight of the logit-matching term in ``"mse+ce"`` (>= 0).
        cache_teacher_logits: ``True``: the teacher's logits on the training split are computed
            once and looked up by row (fixed inputs only: no ``augment``); ``False``: the
            teacher runs on every batch; ``None``: cache unless ``augment`` or ``extra_loss``.
        teacher_logits: that cache computed beforehand, ``predict(teacher, data.X_train)``, so
            several runs pay for the teacher once (its first rows are checked).
        extra_loss: ``extra_loss(batch: DistillBatch) -> scalar``, added on every batch.
        **fit_kwargs: passed on to :func:`kdlib.train.fit` (``batch_size``, ``augment``, which
            the teacher sees too, ``seed``, ``device``, ``metrics``, ``history``, ...).

    Returns:
        The :class:`~kdlib.train.History`; rows add ``agreement`` (top-1, with the teacher, on
        the test split) and ``kl_teacher`` (mean KL at T = 1, nats); ``info`` holds
        ``teacher_logits`` (``"cached"`` or ``"per-batch"``), ``cache_seconds``, ``loss``,
        ``T``, ``alpha``, ``lam`` and ``teacher_device``.

    Example:
        >>> teacher = kdlib.course.trained_teacher(data)
        >>> student = kdlib.model("hinton-student", seed=0)
        >>> hist = distill(student, teacher, data, "kd", epochs=5, T=4, alpha=0.9)
        >>> hist.info["teacher_logits"], hist.last("agreement") > 0.9
        ('cached', True)
    """
    V.pair(student, teacher)
    logit_loss = resolve_loss(loss, T, alpha, lam)
    if logit_loss is None and extra_loss is None:
        raise ValueError("loss=None needs an extra_loss: otherwise there is nothing to train")
    cache = _use_cache(cache_teacher_logits, teacher_logits, fit_kwargs.get("augment"), extra_loss)
    dev = get_device(fit_kwargs.pop("device", None))
    data = on_device(data, dev)
    metrics = fit_kwargs.pop("metrics", None)
    history = fit_kwargs.pop("history", None)
    history = History() if history is None else history
    fit_kwargs.setdefault("desc", "distill")
    step = {"epoch": 0, "batch": 0}
    with frozen(teacher), _on_device(teacher, dev) as where:
        cached, cache_seconds = _teacher_cache(teacher, data, cache, teacher_logits)
        teacher_test = predict(teacher, data.X_test)

        def kd_step(model: nn.Module, X, y, idx) -> torch.Tensor:
            epoch = len(history) + 1
            step["batch"] = step["batch"] + 1 if step["epoch"] == epoch else 0
            step["epoch"] = epoch
            if cached is not None:
                z_t = cached[idx]
            else:
                with torch.no_grad():
                    z_t = teacher(X)
            z_s = model(X)
            try:
                total = logit_loss(z_s, z_t, y) if logit_loss is not None else 0.0
                if extra_loss is not None:
                    b = DistillBatch(model, teacher, X, y, idx, z_s, z_t, cached is None, **step)
                    total = total + extra_loss(b)
            except ValueError as e:
                raise ValueError(f"epoch {epoch}, batch {step['batch']}: {e}") from e
            return total

        def teacher_metrics(model: nn.Module) -> dict:
            z_s = predict(model, data.X_test)
            row = {"agreement": agreement(z_s, teacher_test)}
            row["kl_teacher"] = mean_kl(z_s, teacher_test)
            return {**row, **(metrics(model) if metrics is not None else {})}

        history.info.update(
            teacher_logits="cached" if cached is not None else "per-batch",
            cache_seconds=cache_seconds,
            loss=loss if isinstance(loss, str) or loss is None else repr(loss),
            T=T,
            alpha=alpha,
            lam=lam,
            teacher_device=where,
        )
        fit(
            student, data, epochs, lr, loss_fn=kd_step, metrics=teacher_metrics,
            history=history, device=dev, **fit_kwargs,
        )  # fmt: skip
    return history


def _use_cache(cache: bool | None, given, augment, extra_loss) -> bool:
    if given is not None:
        if cache is False:
            raise ValueError(
                "teacher_logits given with cache_teacher_logits=False: drop one of the two"
            )
        cache = True
    if cache is None:
        return augment is None and extra_loss is None
    if cache and augment is not None:
        raise ValueError(
            "cache_teacher_logits=True with augment: the teacher must see every augmented "
            "batch; use cache_teacher_logits=False (or None to choose automatically)"
        )
    return bool(cache)


def _teacher_cache(teacher: nn.Module, data: Dataset, cache: bool, given):
    """``(logits on the training split or None, seconds)``, after checking the teacher's output."""
    C, n = data.num_classes, len(data.X_train)
    probe = predict(teacher, data.X_train[:2])
    if probe.ndim != 2 or probe.shape[1] != C:
        raise ValueError(
            f"the teacher outputs shape {tuple(probe.shape)} but {data.name!r} has {C} "
            f"classes: student and teacher must both output {C} logits"
        )
    t0 = time.perf_counter()
    if given is None:
        cached = predict(teacher, data.X_train) if cache else None
    else:
        if not isinstance(given, torch.Tensor):
            raise TypeError(f"teacher_logits must be a tensor, got {type(given).__name__}")
        if tuple(given.shape) != (n, C):
            raise ValueError(
                f"teacher_logits have shape {tuple(given.shape)} but the training split needs "
                f"({n}, {C}): pass predict(teacher, data.X_train)"
            )
        head = given[: len(probe)].detach().float().to(probe.device)
        if not torch.allclose(head, probe.float(), rtol=1e-3, atol=1e-3):
            raise ValueError(
                "teacher_logits are not this teacher's logits on data.X_train (the first rows "
                "differ): another teacher, another data order, or a teacher changed since"
            )
        cached = given.detach().to(data.X_train.device)
    seconds = time.perf_counter() - t0 if cached is not None else 0.0
    if cached is not None and not bool(torch.isfinite(cached).all()):
        bad = torch.nonzero(~torch.isfinite(cached).all(1)).flatten()[:5].tolist()
        raise ValueError(f"the teacher's logits are NaN/inf on training rows {bad}")
    return cached, seconds


@contextmanager
def _on_device(teacher: nn.Module, dev: torch.device):
    """The teacher on ``dev`` inside the block, back where it was after; yields where it ran."""
    home = V.device_of(teacher)
    # "cuda" and "cuda:0" name the same device when the index is left open
    if home is None or (home.type == dev.type and None in (home.index, dev.index)) or home == dev:
        yield str(dev)
        return
    if home.type == "meta":
        raise ValueError(
            f"the teacher is on the meta device (shapes only, no weights) but training runs on "
            f"{dev}: load the teacher's weights first"
        )
    teacher.to(dev)
    try:
        yield f"moved from {home} to {dev} for training, then back"
    finally:
        teacher.to(home)
