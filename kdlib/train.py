"""One training loop for the whole course: :func:`fit`, with cross-entropy or any
``loss_fn(model, X, y, idx)`` (distillation and pruning reuse it), :func:`evaluate`,
:func:`predict` and :func:`seed_everything`. Mixed precision and ``torch.distributed`` sit behind
:mod:`kdlib.parallel`, so the loop reads the same on a laptop and on several GPUs.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingLR

from . import parallel
from . import validate as V
from .data import Dataset, batches
from .parallel import get_device

__all__ = [
    "History", "TrainConfig", "fit", "evaluate", "predict", "seed_everything", "get_device",
    "progress_default", "on_device"
]  # fmt: skip

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
Callback = Callable[[nn.Module, "History"], "str | None"]


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and PyTorch (CPU and CUDA); return a CPU generator for shuffling."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def progress_default() -> bool:
    """Progress bars are on unless ``KDLIB_PROGRESS=0`` (the test and notebook runs set it)."""
    return os.environ.get("KDLIB_PROGRESS", "1") not in ("0", "false", "False", "")


@dataclass
class History:
    """One dict per epoch, plus how the run ended: ``history["test_acc"]`` is a column as a
    list, ``history.last("test_acc")`` its final value; ``info`` holds run-level facts (e.g.
    ``{"teacher_logits": "cached"}``)."""

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


@dataclass
class TrainConfig:
    """The options of :func:`fit` beyond the model, the data and the loss, one per field."""

    batch_size: int = 128  # examples per step; under torch.distributed the global batch
    optimizer: str | torch.optim.Optimizer | Callable = "adam"  # "adam", "sgd" (momentum 0.9),
    # an optimizer class, or an instance (then lr and weight_decay are its own)
    weight_decay: float = 0.0  # L2 penalty passed to the optimizer
    schedule: str = "constant"  # or "cosine": decay the lr to 0 over the run, per batch
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None  # X -> X on each batch
    device: str | torch.device | None = None  # None: cuda → mps → cpu (see get_device)
    seed: int | None = None  # seeds shuffling, dropout and augmentation
    progress: bool | None = None  # tqdm bar over epochs; None: on unless KDLIB_PROGRESS=0
    evaluate_every: int = 1  # evaluate on the test split every this many epochs (and last)
    desc: str = "fit"  # label of the progress bar
    amp: bool | str | None = None  # mixed precision, see kdlib.parallel.mixed_precision

    def __post_init__(self):
        V.integer("batch_size", self.batch_size)
        V.integer("evaluate_every", self.evaluate_every, low=0)
        if self.schedule not in ("constant", "cosine"):
            raise ValueError(f"schedule must be 'constant' or 'cosine', got {self.schedule!r}")
        V.number("weight_decay", self.weight_decay, 0)
        if self.augment is not None and not callable(self.augment):
            raise TypeError(f"augment must be a function X -> X, got {self.augment!r}")


def _config(options: dict) -> TrainConfig:
    known = sorted(f.name for f in fields(TrainConfig))
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise TypeError(f"fit() got unknown option(s) {unknown}; options: {known}")
    return TrainConfig(**options)


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


def on_device(data: Dataset, device: torch.device) -> Dataset:
    """``data`` on ``device`` (a copy if it is elsewhere); anything but a Dataset is refused."""
    if not isinstance(data, Dataset):
        raise TypeError(
            f"data must be a kdlib Dataset (see Dataset.from_tensors), got {data!r:.80}"
        )
    return data if data.device == device else data.to(device)


def check_model_and_data(model: nn.Module, data: Dataset, device: torch.device) -> Dataset:
    """``data`` on ``device``, after refusing NaN/inf inputs, labels out of range and a model
    whose output is not ``(N, num_classes)`` (one forward on two examples, mode restored)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    data, C = on_device(data, device), data.num_classes
    for split in ("train", "test"):
        X, y = getattr(data, f"X_{split}"), getattr(data, f"y_{split}")
        bad = ~torch.isfinite(X.flatten(1)).all(1)
        if bool(bad.any()):
            rows = torch.nonzero(bad).flatten()[:5].tolist()
            raise ValueError(f"data.X_{split} contains NaN or inf (rows {rows}); clean the inputs")
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= C):
            raise ValueError(
                f"{split} labels out of range: data.y_{split} holds values in [{int(y.min())}, "
                f"{int(y.max())}] but {data.name!r} has {C} classes, so labels must be in "
                f"[0, {C - 1}]"
            )
    with torch.no_grad(), V.eval_mode(model):
        out = model(data.X_train[:2])
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[1] != C:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(
            f"model outputs shape {shape} but {data.name!r} has {C} classes: the model must "
            f"return logits (N, {C})"
        )
    return data


def _generator(seed: int | None) -> torch.Generator | None:
    """The shuffling generator; under torch.distributed one permutation for all ranks."""
    if not parallel.is_distributed():
        return seed_everything(seed) if seed is not None else None
    shared = parallel.broadcast(seed if seed is not None else random.getrandbits(62))
    if seed is not None:  # dropout and augmentation differ per rank, as between batches
        seed_everything(seed)
        torch.manual_seed(seed + parallel.rank())
    return torch.Generator().manual_seed(shared)


def fit(
    model: nn.Module,
    data: Dataset,
    epochs: int = 5,
    lr: float = 1e-3,
    *,
    loss_fn: LossFn | None = None,
    params: Iterable[nn.Parameter] | None = None,
    extra_modules: Sequence[nn.Module] = (),
    metrics: Callable[[nn.Module], dict] | None = None,
    callbacks: Sequence[Callback] = (),
    history: History | None = None,
    **options,
) -> History:
    """Train ``model`` on ``data.X_train``; evaluate on ``data.X_test`` after each epoch.

    Each step: ``loss = loss_fn(model, X, y, idx)``, then backward and an optimizer step. Under
    ``torchrun`` (after :func:`kdlib.parallel.setup`) every process calls ``fit`` alike, takes
    its share of each global batch, and holds the same all-reduced history.

    Args:
        model: maps ``(N, *input_shape)`` to ``(N, num_classes)`` logits.
        data: the data set (moved to the training device if it is elsewhere).
        epochs: passes over the training split (> 0).
        lr: learning rate (> 0).
        loss_fn: ``loss_fn(model, X, y, idx) -> scalar`` (default: cross-entropy on labels),
            ``idx`` the batch's rows in ``data.X_train``. Call ``model`` for the forward (under
            ``torch.distributed`` it is the DDP wrapper that synchronises gradients).
        params: parameters to optimise (default: those of ``model`` and ``extra_modules``).
        extra_modules: modules trained with ``model`` but not part of it (projectors).
        metrics: ``metrics(model) -> dict`` of extra numbers logged after each evaluation.
        callbacks: ``cb(model, history) -> reason or None`` after each epoch; a string stops
            training and becomes ``history.stop_reason``.
        history: continue this history (rows are appended).
        **options: the fields of :class:`TrainConfig`: ``batch_size``, ``optimizer``,
            ``weight_decay``, ``schedule``, ``augment``, ``device``, ``seed``, ``progress``,
            ``evaluate_every``, ``desc``, ``amp``.

    Returns:
        :class:`History` with ``epoch``, ``loss``, ``seconds`` and, when evaluated,
        ``test_acc`` and ``test_loss``; ``info`` records ``amp`` and ``world_size`` when used.

    Example:
        >>> data = kdlib.load("mnist-5k")
        >>> net = kdlib.model("hinton-student", seed=0)
        >>> fit(net, data, epochs=3, lr=1e-3, seed=0).last("test_acc") > 0.9
        True
    """
    cfg = _config(options)
    V.integer("epochs", epochs)
    V.number("lr", lr, 0, open_low=True)
    dev = get_device(cfg.device)
    amp = parallel.mixed_precision(cfg.amp, dev)
    rank, world = parallel.rank(), parallel.world_size()
    if world > cfg.batch_size:
        raise ValueError(f"batch_size={cfg.batch_size} is shared by {world} processes: too small")
    for m in (model, *extra_modules):
        m.to(dev)
    data = check_model_and_data(model, data, dev)
    generator = _generator(cfg.seed)
    loss_fn = loss_fn or _cross_entropy
    if params is None:
        params = [p for m in (model, *extra_modules) for p in m.parameters() if p.requires_grad]
    opt = _make_optimizer(cfg.optimizer, list(params), lr, cfg.weight_decay)
    steps = epochs * -(-len(data.X_train) // cfg.batch_size)  # ceil(N / batch) per epoch
    scheduler = CosineAnnealingLR(opt, steps) if cfg.schedule == "cosine" else None
    trained = [p for g in opt.param_groups for p in g["params"]]
    train_model = parallel.wrap(model, extra_modules, trained, dev)
    history = History() if history is None else history
    history.info.update({"world_size": world} if world > 1 else {})
    history.info.update({"amp": amp.label} if amp.label != "off" else {})
    start = len(history)
    bar = _progress_bar(cfg, rank, range(start + 1, start + epochs + 1))
    with parallel.explain_errors():
        for epoch in bar:
            for m in (model, *extra_modules):
                m.train()
            t0, total, seen = time.perf_counter(), torch.zeros((), device=dev), 0
            for X, y, idx in batches(
                data.X_train, data.y_train, cfg.batch_size, generator=generator,
                rank=rank, world_size=world,
            ):  # fmt: skip
                if cfg.augment is not None:
                    X = cfg.augment(X)
                with amp.autocast:
                    loss = loss_fn(train_model, X, y, idx)
                amp.step(loss, opt)
                if scheduler is not None:
                    scheduler.step()
                total += loss.detach() * len(y)
                seen += len(y)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            mean, secs = parallel.finish_epoch(
                float(total), seen, time.perf_counter() - t0, (model, *extra_modules)
            )
            row = {"epoch": epoch, "loss": mean, "seconds": secs}
            last = epoch == start + epochs
            if cfg.evaluate_every and ((epoch - start) % cfg.evaluate_every == 0 or last):
                ev = _evaluate_shared(model, data) if world > 1 else evaluate(model, data)
                row["test_acc"], row["test_loss"] = ev["accuracy"], ev["loss"]
                row.update(parallel.average(metrics(model)) if metrics is not None else {})
            history.rows.append(row)
            if hasattr(bar, "set_postfix") and "test_acc" in row:
                bar.set_postfix(loss=f"{row['loss']:.3f}", test_acc=f"{row['test_acc']:.3f}")
            reason = next((r for cb in callbacks if (r := cb(model, history))), None)
            if reason := parallel.broadcast(reason):  # rank 0 decides: all ranks stop together
                history.stop_reason = str(reason)
                break
    if hasattr(bar, "close"):
        bar.close()
    model.eval()
    return history


def _progress_bar(cfg: TrainConfig, rank: int, epochs: range):
    show = progress_default() if cfg.progress is None else cfg.progress
    if not show or rank != 0:
        return epochs
    from tqdm.auto import tqdm

    return tqdm(epochs, desc=cfg.desc, leave=False)


@torch.no_grad()
def predict(model: nn.Module, X: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Logits of ``model`` on ``X`` (moved to the model's device), in eval mode and without
    autograd (mode restored after).

    Shape:
        X: ``(N, *)``; output ``(N, num_classes)``.
    """
    V.tensor("X", X)
    dev = V.device_of(model, X.device)
    with V.eval_mode(model):
        outs = [model(X[i : i + batch_size].to(dev)) for i in range(0, len(X), batch_size)]
    if not outs:
        raise ValueError("X is empty: predict needs at least one example")
    if not all(isinstance(z, torch.Tensor) for z in outs):
        kind = type(next(z for z in outs if not isinstance(z, torch.Tensor))).__name__
        raise TypeError(
            f"the model returned a {kind}, not a logits tensor: wrap it so that forward "
            "returns logits only (e.g. lambda x: model(x)[0] in an nn.Module)"
        )
    return torch.cat(outs)


def _evaluate_shared(model: nn.Module, data: Dataset, batch_size: int = 1000) -> dict:
    """:func:`evaluate` on the test split with the rows shared out over the ranks."""
    r, w, n = parallel.rank(), parallel.world_size(), len(data.X_test)
    lo, hi = n * r // w, n * (r + 1) // w
    correct, loss_sum = 0.0, 0.0
    if hi > lo:
        logits = predict(model, data.X_test[lo:hi], batch_size)
        y = data.y_test[lo:hi].to(logits.device)
        correct = float((logits.argmax(1) == y).sum())
        loss_sum = float(F.cross_entropy(logits, y, reduction="sum"))
    correct, loss_sum = parallel.all_reduce([correct, loss_sum])
    return {"accuracy": correct / n, "loss": loss_sum / n}


def evaluate(
    model: nn.Module, data: Dataset, split: str = "test", batch_size: int = 1000
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
