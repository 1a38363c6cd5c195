"""The distillation loop: train a student to match a frozen teacher, on :func:`kdlib.train.fit`.

:func:`distill` supplies ``fit``'s ``loss_fn`` (the KD step) and ``metrics`` (agreement and KL
to the teacher); there is no second loop. The teacher runs inside :func:`frozen`, so it is
never changed. With fixed inputs its logits are computed once and looked up by row.
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
    "distill", "frozen", "DistillBatch", "LOSS_NAMES", "resolve_loss", "random_shift"
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
    """Freeze ``teacher`` inside the block: eval mode and ``requires_grad=False`` everywhere.

    Every mode and flag is restored on exit, even after an exception. Run the forward under
    ``torch.no_grad()`` too.

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
    """A loss name from :data:`LOSS_NAMES`, or a callable ``(z_s, z_t, y) -> scalar`` (returned as
    is), as ``fn(z_s, z_t, y)``; ``None`` for no output loss. ``T``, ``alpha`` and ``lam`` are
    checked even when unused.
    """
    V.number("temperature T", T, 0, open_low=True)
    V.number("alpha", alpha, 0, 1)
    V.number("lam", lam, 0)
    if loss is None or (callable(loss) and not isinstance(loss, str)):
        return loss
    if loss == "kd":
        return lambda s, t, y: L.kd_loss(s, t, y, T, alpha)
    if loss == "soft":
        return lambda s, t, y: L.soft_target_kl(s, t, T)
    if loss == "soft-ce":
        return lambda s, t, y: L.kd_loss(s, t, y, T, alpha, soft="ce")
    if loss == "mse":
        return lambda s, t, y: L.mse_logits(s, t)
    if loss == "mse+ce":
        return lambda s, t, y: L.mse_kd_loss(s, t, y, lam)
    if loss == "ce":
        return lambda s, t, y: F.cross_entropy(s, y)
    raise ValueError(
        f"unknown loss {loss!r}; use one of {', '.join(map(repr, LOSS_NAMES))}, a callable "
        "(student_logits, teacher_logits, y) -> scalar, or None with an extra_loss"
    )


def random_shift(max_shift: int = 2) -> Callable[[torch.Tensor], torch.Tensor]:
    """An ``augment`` that moves each image by a random whole number of pixels in each direction.

    Shifts are uniform in ``[-max_shift, max_shift]``; the border repeats. The teacher labels
    every shifted image, a larger transfer set (so it runs per batch). Draws come from PyTorch's
    global generator, which ``fit(seed=...)`` seeds.

    Shape:
        X: ``(N, C, H, W)``; output: the same shape.

    Example:
        >>> distill(student, teacher, data, "kd", augment=random_shift(2)).info["teacher_logits"]
        'per-batch'
    """
    V.integer("max_shift", max_shift, low=0)

    def shift(X: torch.Tensor) -> torch.Tensor:
        if X.ndim != 4:
            raise ValueError(f"random_shift needs images (N, C, H, W), got {tuple(X.shape)}")
        N, _, H, W = X.shape  # batch, channels, height, width
        d = torch.randint(-max_shift, max_shift + 1, (N, 2)).to(X.device, X.dtype)
        theta = torch.zeros(N, 2, 3, device=X.device, dtype=X.dtype)
        theta[:, 0, 0] = theta[:, 1, 1] = 1.0
        # affine_grid works in [-1, 1] coordinates: one pixel is 2 / width
        theta[:, 0, 2], theta[:, 1, 2] = 2 * d[:, 0] / W, 2 * d[:, 1] / H
        grid = F.affine_grid(theta, list(X.shape), align_corners=False)
        return F.grid_sample(X, grid, mode="nearest", padding_mode="border", align_corners=False)

    return shift


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

    Each step computes the teacher's logits :math:`z_t` (from the cache, or a no-grad forward),
    the student's :math:`z_s`, and ``loss(z_s, z_t, y)``, e.g. for ``"kd"``

    .. math::
        \alpha\, T^2\, KL(p_t(T) \,\|\, p_s(T)) + (1 - \alpha)\, CE(z_s, y)

    plus ``extra_loss``. The loop is :func:`kdlib.train.fit`.

    Args:
        student: the model to train, ``(N, *input_shape) -> (N, C)`` logits.
        teacher: the trained model to imitate; :func:`frozen` for the whole run. A teacher on
            another device is moved to the training device and back afterwards.
        data: the data set.
        loss: a name from :data:`LOSS_NAMES` (``"kd"``, ``"soft"``, ``"soft-ce"``, ``"mse"``,
            ``"mse+ce"``, ``"ce"``), a callable ``(student_logits, teacher_logits, y) ->
            scalar``, or ``None`` (then ``extra_loss`` is the whole objective).
        epochs: passes over the training split.
        lr: learning rate.
        T: temperature of the soft losses (> 0).
        alpha: weight of the soft part in ``"kd"`` / ``"soft-ce"``, in [0, 1].
        lam: weight of the logit-matching term in ``"mse+ce"`` (>= 0).
        cache_teacher_logits: ``True``: the teacher's logits on the training split are
            computed once and looked up by row (needs fixed inputs: no ``augment``).
            ``False``: the teacher runs on every batch. ``None``: cache when there is neither
            ``augment`` nor ``extra_loss`` (which usually reads teacher features).
        teacher_logits: a cache computed beforehand, ``predict(teacher, data.X_train)``, so
            several runs pay for the teacher once; its first rows are checked.
        extra_loss: ``extra_loss(batch: DistillBatch) -> scalar`` added on every batch.
        **fit_kwargs: passed on to :func:`kdlib.train.fit`: ``batch_size``, ``optimizer``,
            ``schedule``, ``augment`` (the teacher sees the same augmented batch),
            ``extra_modules``, ``params``, ``metrics``, ``callbacks``, ``device``, ``seed``,
            ``history``, ...

    Returns:
        The :class:`~kdlib.train.History`; rows also hold ``agreement`` (top-1 agreement
        with the teacher on the test split) and ``kl_teacher`` (mean KL at T = 1, nats);
        ``info`` holds ``teacher_logits`` (``"cached"`` or ``"per-batch"``),
        ``cache_seconds``, ``loss``, ``T``, ``alpha``, ``lam`` and ``teacher_device``.

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
    augment = fit_kwargs.get("augment")
    cache = _use_cache(cache_teacher_logits, teacher_logits, augment, extra_loss)
    dev = get_device(fit_kwargs.pop("device", None))
    data = on_device(data, dev)
    metrics = fit_kwargs.pop("metrics", None)
    history = fit_kwargs.pop("history", None)
    history = History() if history is None else history
    fit_kwargs.setdefault("desc", "distill")
    t_dev = V.device_of(teacher)
    moved = t_dev is not None and not _same_device(t_dev, dev)
    if moved and t_dev.type == "meta":
        raise ValueError(
            f"the teacher is on the meta device (shapes only, no weights) but training runs on "
            f"{dev}: load the teacher's weights first"
        )
    step = {"epoch": 0, "batch": 0}
    with frozen(teacher), _on_device(teacher, dev if moved else None):
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
            teacher_device=f"moved from {t_dev} to {dev} for training, then back"
            if moved
            else str(dev),
        )
        fit(
            student, data, epochs, lr, loss_fn=kd_step, metrics=teacher_metrics,
            history=history, device=dev, **fit_kwargs,
        )  # fmt: skip
    return history


def _use_cache(cache: bool | None, given, augment, extra_loss) -> bool:
    """Whether the teacher's logits are computed once (see ``cache_teacher_logits``)."""
    if given is not None:
        if cache is False:
            raise ValueError(
                "teacher_logits given with cache_teacher_logits=False: given logits are a "
                "cache; drop one of the two"
            )
        cache = True
    if cache is None:
        return augment is None and extra_loss is None
    if cache and augment is not None:
        raise ValueError(
            "cache_teacher_logits=True with augment: cached logits belong to the un-augmented "
            "inputs, so the teacher must run on every augmented batch; use "
            "cache_teacher_logits=False (or None to choose automatically)"
        )
    return bool(cache)


def _teacher_cache(teacher: nn.Module, data: Dataset, cache: bool, given):
    """``(logits on the training split or None, seconds)``, after checking the teacher's output."""
    C = data.num_classes
    probe = predict(teacher, data.X_train[:2])
    if probe.ndim != 2 or probe.shape[1] != C:
        raise ValueError(
            f"the teacher outputs shape {tuple(probe.shape)} but {data.name!r} has {C} "
            f"classes: student and teacher must both output {C} logits"
        )
    t0 = time.perf_counter()
    if given is not None:
        cached = _given_logits(given, probe, len(data.X_train), C).to(data.X_train.device)
    else:
        cached = predict(teacher, data.X_train) if cache else None
    seconds = time.perf_counter() - t0 if cached is not None else 0.0
    if cached is not None and not bool(torch.isfinite(cached).all()):
        bad = torch.nonzero(~torch.isfinite(cached).all(1)).flatten()[:5].tolist()
        raise ValueError(f"the teacher's logits are NaN/inf on training rows {bad}")
    return cached, seconds


@contextmanager
def _on_device(module: nn.Module, device: torch.device | None):
    """Move ``module`` to ``device`` inside the block and back to where it was afterwards."""
    if device is None:
        yield module
        return
    home = V.device_of(module)
    module.to(device)
    try:
        yield module
    finally:
        module.to(home)


def _same_device(a: torch.device, b: torch.device) -> bool:
    # "cuda" and "cuda:0" name the same device when the index is left open
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


def _given_logits(z: torch.Tensor, probe: torch.Tensor, n: int, C: int) -> torch.Tensor:
    """Check logits the caller computed for the training split against the teacher."""
    if not isinstance(z, torch.Tensor):
        raise TypeError(f"teacher_logits must be a tensor, got {type(z).__name__}")
    if tuple(z.shape) != (n, C):
        raise ValueError(
            f"teacher_logits have shape {tuple(z.shape)} but the training split needs ({n}, {C}):"
            " pass predict(teacher, data.X_train)"
        )
    head = z[: len(probe)].detach().float().to(probe.device)
    if not torch.allclose(head, probe.float(), rtol=1e-3, atol=1e-3):
        raise ValueError(
            "teacher_logits are not this teacher's logits on data.X_train (the first rows "
            "differ): another teacher, another data order, or a teacher changed since"
        )
    return z.detach()
