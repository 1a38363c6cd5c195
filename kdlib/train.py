"""The training core: one loop for the whole course.

:func:`fit` trains a model on a :class:`~kdlib.data.Dataset` with plain cross-entropy by
default, or with any ``loss_fn(model, X, y, idx)``, which is how distillation, feature
distillation and pruning reuse this loop instead of copying it. :func:`evaluate` measures
accuracy and loss; :func:`predict` returns logits without autograd. :func:`seed_everything`
makes runs repeatable and :func:`get_device` picks cuda → mps → cpu unless told otherwise.
Every run returns a :class:`History`, one row per epoch.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .data import Dataset, batches

__all__ = [
    "History",
    "fit",
    "evaluate",
    "predict",
    "seed_everything",
    "get_device",
    "progress_default",
]

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
Callback = Callable[[nn.Module, "History"], "str | None"]


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and PyTorch (CPU and CUDA); return a CPU generator for shuffling."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def get_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` if given, else the best available: cuda → mps → cpu.

    Set ``KDLIB_DEVICE=cpu`` to force a device without editing code.
    """
    if device is None:
        device = os.environ.get("KDLIB_DEVICE") or None
    if device is not None:
        dev = torch.device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device {device!r} was asked for, but CUDA is not available")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def progress_default() -> bool:
    """Progress bars are on unless ``KDLIB_PROGRESS=0`` (the test and notebook runs set it)."""
    return os.environ.get("KDLIB_PROGRESS", "1") not in ("0", "false", "False", "")


@dataclass
class History:
    """What happened during training: one dict per epoch, plus how the run ended.

    ``history["test_acc"]`` is the column as a list; ``history.last("test_acc")`` its final
    value. ``info`` holds run-level facts (e.g. ``{"teacher_logits": "cached"}``).
    """

    rows: list[dict] = field(default_factory=list)  # one per epoch
    stop_reason: str = "max_epochs"  # "max_epochs", or what a callback reported
    info: dict = field(default_factory=dict)  # run-level facts

    def __getitem__(self, key: str) -> list:
        return [row[key] for row in self.rows if key in row]

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def epochs(self) -> int:
        return len(self.rows)

    @property
    def seconds(self) -> float:
        """Total training time (evaluation excluded)."""
        return float(sum(self["seconds"]))

    def last(self, key: str):
        values = self[key]
        if not values:
            raise KeyError(f"history has no {key!r}; it has {sorted(self.keys())}")
        return values[-1]

    def keys(self) -> set[str]:
        return {k for row in self.rows for k in row}

    def __repr__(self) -> str:
        if not self.rows:
            return "History(empty)"
        last = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in self.rows[-1].items()}
        return f"History(epochs={self.epochs}, stop={self.stop_reason!r}, last={last})"


def _check_positive(name: str, value) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")


def _cross_entropy(model: nn.Module, X, y, idx) -> torch.Tensor:
    return F.cross_entropy(model(X), y)


def _make_optimizer(optimizer, params, lr: float, weight_decay: float):
    if isinstance(optimizer, torch.optim.Optimizer):
        return optimizer
    if callable(optimizer) and not isinstance(optimizer, str):
        return optimizer(params, lr=lr, weight_decay=weight_decay)
    if optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {optimizer!r}; use 'adam', 'sgd' or a torch optimizer")


def check_output_size(model: nn.Module, data: Dataset) -> None:
    """Refuse a model whose output size is not the number of classes (one forward, no grad)."""
    with torch.no_grad(), _eval_mode(model):
        out = model(data.X_train[:2])
    if out.ndim != 2 or out.shape[1] != data.num_classes:
        raise ValueError(
            f"model outputs shape {tuple(out.shape)} but {data.name!r} has "
            f"{data.num_classes} classes: the last layer must have {data.num_classes} outputs"
        )


@contextmanager
def _eval_mode(model: nn.Module):
    """Eval mode inside the block; the previous train/eval state of every module after it."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for m, mode in modes.items():
            m.training = mode


def fit(
    model: nn.Module,
    data: Dataset,
    epochs: int = 5,
    lr: float = 1e-3,
    *,
    batch_size: int = 128,
    optimizer: str | torch.optim.Optimizer | Callable = "adam",
    weight_decay: float = 0.0,
    schedule: str = "constant",
    loss_fn: LossFn | None = None,
    params: Iterable[nn.Parameter] | None = None,
    extra_modules: Sequence[nn.Module] = (),
    metrics: Callable[[nn.Module], dict] | None = None,
    callbacks: Sequence[Callback] = (),
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
    device: str | torch.device | None = None,
    seed: int | None = None,
    progress: bool | None = None,
    evaluate_every: int = 1,
    history: History | None = None,
    desc: str = "fit",
) -> History:
    """Train ``model`` on ``data.X_train`` and evaluate on ``data.X_test`` after each epoch.

    Args:
        model: any ``nn.Module`` mapping ``(N, *input_shape)`` to ``(N, num_classes)`` logits.
        data: the data set (moved to ``device`` if it is elsewhere).
        epochs: number of passes over the training split (> 0).
        lr: learning rate (> 0).
        batch_size: examples per step.
        optimizer: ``"adam"`` (default), ``"sgd"`` (momentum 0.9), an optimizer class, or an
            optimizer instance (then ``lr`` and ``weight_decay`` are its own).
        weight_decay: L2 penalty passed to the optimizer.
        schedule: ``"constant"`` learning rate, or ``"cosine"`` decay to 0 over the run
            (stepped per batch).
        loss_fn: ``loss_fn(model, X, y, idx) -> scalar``; default cross-entropy on labels.
            ``idx`` are the batch's row indices into ``data.X_train``.
        params: parameters to optimise (default: all of ``model``'s and ``extra_modules``').
        extra_modules: modules trained alongside ``model`` but not part of it (projectors);
            they are moved to the device and put in train mode with it.
        metrics: ``metrics(model) -> dict`` of extra numbers to log after each epoch.
        callbacks: ``cb(model, history) -> reason or None`` after each epoch; a returned
            string stops training and becomes ``history.stop_reason``.
        augment: ``augment(X) -> X`` applied to each training batch.
        device: ``None`` picks cuda → mps → cpu (see :func:`get_device`).
        seed: seeds weights-independent randomness (shuffling, dropout) for repeatable runs.
        progress: show a ``tqdm.auto`` bar over epochs (default: on unless
            ``KDLIB_PROGRESS=0``).
        evaluate_every: evaluate on the test split every this many epochs (and at the end).
        history: continue an existing history (rows are appended).
        desc: label of the progress bar.

    Returns:
        :class:`History` with ``epoch``, ``loss``, ``seconds`` and, when evaluated,
        ``test_acc`` and ``test_loss`` per epoch, plus whatever ``metrics`` returns.

    Example:
        >>> data = kdlib.load("mnist-5k")
        >>> net = kdlib.model("hinton-student", seed=0)
        >>> hist = fit(net, data, epochs=3, lr=1e-3, seed=0, progress=False)
        >>> hist.last("test_acc") > 0.9
        True
    """
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs <= 0:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
    _check_positive("lr", lr)
    _check_positive("batch_size", batch_size)
    dev = get_device(device)
    model.to(dev)
    for m in extra_modules:
        m.to(dev)
    if data.device != dev:
        data = data.to(dev)
    check_output_size(model, data)
    generator = seed_everything(seed) if seed is not None else None
    if params is None:
        params = [p for m in (model, *extra_modules) for p in m.parameters() if p.requires_grad]
    opt = _make_optimizer(optimizer, list(params), lr, weight_decay)
    if schedule not in ("constant", "cosine"):
        raise ValueError(f"schedule must be 'constant' or 'cosine', got {schedule!r}")
    steps = epochs * -(-len(data.X_train) // batch_size)  # ceil: batches per epoch × epochs
    scheduler = (
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps) if schedule == "cosine" else None
    )
    loss_fn = loss_fn or _cross_entropy
    history = history if history is not None else History()
    start_epoch = len(history)
    progress = progress_default() if progress is None else progress
    epoch_iter: Iterable[int] = range(start_epoch + 1, start_epoch + epochs + 1)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(epoch_iter, desc=desc, leave=False)
        epoch_iter = bar
    X_train, y_train = data.X_train, data.y_train
    for epoch in epoch_iter:
        model.train()
        for m in extra_modules:
            m.train()
        t0 = time.perf_counter()
        total = torch.zeros((), device=dev)
        for X, y, idx in batches(X_train, y_train, batch_size, generator=generator):
            if augment is not None:
                X = augment(X)
            loss = loss_fn(model, X, y, idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if scheduler is not None:
                scheduler.step()
            total += loss.detach() * len(y)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        row = {
            "epoch": epoch,
            "loss": float(total) / len(y_train),
            "seconds": time.perf_counter() - t0,
        }
        last = epoch == start_epoch + epochs
        if evaluate_every and ((epoch - start_epoch) % evaluate_every == 0 or last):
            ev = evaluate(model, data)
            row["test_acc"], row["test_loss"] = ev["accuracy"], ev["loss"]
            if metrics is not None:
                row.update(metrics(model))
        history.rows.append(row)
        if bar is not None and "test_acc" in row:
            bar.set_postfix(loss=f"{row['loss']:.3f}", test_acc=f"{row['test_acc']:.3f}")
        reason = next((r for cb in callbacks if (r := cb(model, history))), None)
        if reason:
            history.stop_reason = str(reason)
            break
    if bar is not None:
        bar.close()
    model.eval()
    return history


@torch.no_grad()
def predict(model: nn.Module, X: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Logits of ``model`` on ``X``, in eval mode and without autograd.

    The model's train/eval mode is restored afterwards. ``X`` is moved to the model's device.

    Shape:
        X: ``(N, *)``; output ``(N, num_classes)``.
    """
    dev = next(model.parameters()).device if any(True for _ in model.parameters()) else X.device
    with _eval_mode(model):
        outs = [model(X[i : i + batch_size].to(dev)) for i in range(0, len(X), batch_size)]
    return torch.cat(outs)


def evaluate(
    model: nn.Module,
    data: Dataset,
    split: str = "test",
    batch_size: int = 1000,
) -> dict[str, float]:
    """Accuracy and mean cross-entropy of ``model`` on a split (``"test"`` or ``"train"``).

    Returns:
        ``{"accuracy": float in [0, 1], "loss": float}``.
    """
    if split not in ("test", "train"):
        raise ValueError(f"split must be 'test' or 'train', got {split!r}")
    X, y = (data.X_test, data.y_test) if split == "test" else (data.X_train, data.y_train)
    logits = predict(model, X, batch_size)
    y = y.to(logits.device)
    return {
        "accuracy": float((logits.argmax(1) == y).float().mean()),
        "loss": float(F.cross_entropy(logits, y)),
    }
