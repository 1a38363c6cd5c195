"""The training core: one loop for the whole course.

:func:`fit` trains a model on a :class:`~kdlib.data.Dataset` with plain cross-entropy by
default, or with any ``loss_fn(model, X, y, idx)``, which is how distillation, feature
distillation and pruning reuse this loop instead of copying it. :func:`evaluate` measures
accuracy and loss; :func:`predict` returns logits without autograd. :func:`seed_everything`
makes runs repeatable and :func:`get_device` picks cuda → mps → cpu unless told otherwise.
Every run returns a :class:`History`, one row per epoch. The same loop scales up unchanged:
``amp`` turns on mixed precision (``torch.autocast``) on CUDA, and inside a
``torch.distributed`` process group (see :mod:`kdlib.parallel`) it trains data-parallel.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import parallel
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

    Set ``KDLIB_DEVICE=cpu`` to force a device without editing code. Inside a
    ``torch.distributed`` group a bare ``"cuda"`` means this process's GPU (``cuda:LOCAL_RANK``
    once :func:`kdlib.parallel.setup` has run).
    """
    if device is None:
        device = os.environ.get("KDLIB_DEVICE") or None
    if device is not None:
        dev = torch.device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device {device!r} was asked for, but CUDA is not available")
        return parallel._local_cuda(dev)
    if torch.cuda.is_available():
        return parallel._local_cuda(torch.device("cuda"))
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


_AMP_CHOICES = "False, True (float16 on CUDA, off elsewhere), 'fp16' or 'bf16'"


def _mixed_precision(amp, dev: torch.device):
    """``(autocast context, gradient scaler or None, label)`` for ``amp`` on ``dev``.

    float16 needs a gradient scaler (small gradients underflow in float16); bfloat16 has
    float32's range, so it needs none and also runs on CPUs.
    """
    if amp is None:
        amp = os.environ.get("KDLIB_AMP", "0").lower()
        amp = {"0": False, "": False, "false": False, "1": True, "true": True}.get(amp, amp)
    if amp is False or (amp is True and dev.type != "cuda"):
        return nullcontext(), None, "off" if amp is False else f"off (no CUDA on {dev})"
    if amp is True or amp == "fp16":
        if dev.type != "cuda":
            raise ValueError(f"amp='fp16' needs a CUDA device, but training runs on {dev}")
        scaler = torch.amp.GradScaler("cuda") if hasattr(torch.amp, "GradScaler") else None
        scaler = scaler or torch.cuda.amp.GradScaler()
        return torch.autocast("cuda", dtype=torch.float16), scaler, "fp16"
    if amp == "bf16":
        return torch.autocast(dev.type, dtype=torch.bfloat16), None, "bf16"
    raise ValueError(f"amp must be one of {_AMP_CHOICES}; got {amp!r}")


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
    amp: bool | str | None = None,
) -> History:
    """Train ``model`` on ``data.X_train`` and evaluate on ``data.X_test`` after each epoch.

    Args:
        model: any ``nn.Module`` mapping ``(N, *input_shape)`` to ``(N, num_classes)`` logits.
        data: the data set (moved to ``device`` if it is elsewhere).
        epochs: number of passes over the training split (> 0).
        lr: learning rate (> 0).
        batch_size: examples per step; under ``torch.distributed`` the *global* batch, split
            evenly over the processes, so a run gives the same result on any number of them.
        optimizer: ``"adam"`` (default), ``"sgd"`` (momentum 0.9), an optimizer class, or an
            optimizer instance (then ``lr`` and ``weight_decay`` are its own).
        weight_decay: L2 penalty passed to the optimizer.
        schedule: ``"constant"`` learning rate, or ``"cosine"`` decay to 0 over the run
            (stepped per batch).
        loss_fn: ``loss_fn(model, X, y, idx) -> scalar``; default cross-entropy on labels.
            ``idx`` are the batch's row indices into ``data.X_train``. Under
            ``torch.distributed``, ``model`` is the ``DistributedDataParallel`` wrapper:
            call it for the forward pass (that is what synchronises the gradients) and reach
            layers, e.g. for forward hooks, through your own reference to the model.
        params: parameters to optimise (default: all of ``model``'s and ``extra_modules``').
        extra_modules: modules trained alongside ``model`` but not part of it (projectors);
            they are moved to the device and put in train mode with it.
        metrics: ``metrics(model) -> dict`` of extra numbers to log after each epoch.
        callbacks: ``cb(model, history) -> reason or None`` after each epoch; a returned
            string stops training and becomes ``history.stop_reason``.
        augment: ``augment(X) -> X`` applied to each training batch.
        device: ``None`` picks cuda → mps → cpu (see :func:`get_device`). The model,
            ``extra_modules`` and ``data`` are moved there.
        seed: seeds weights-independent randomness (shuffling, dropout) for repeatable runs.
        progress: show a ``tqdm.auto`` bar over epochs (default: on unless
            ``KDLIB_PROGRESS=0``).
        evaluate_every: evaluate on the test split every this many epochs (and at the end).
        history: continue an existing history (rows are appended).
        desc: label of the progress bar.
        amp: mixed precision for the forward and loss: ``False``; ``True`` = float16 with
            a gradient scaler on CUDA and off elsewhere (so one script runs on a laptop and
            on a GPU); ``"fp16"`` (CUDA only); ``"bf16"`` (CUDA or CPU). ``None`` (default)
            reads ``KDLIB_AMP`` (``0``, ``1``, ``fp16``, ``bf16``), else off.

    Under a ``torch.distributed`` process group of several processes (e.g. started by
    ``torchrun`` and joined with :func:`kdlib.parallel.setup`), every process calls ``fit``
    with the same arguments. The model and ``extra_modules`` are trained inside one
    ``DistributedDataParallel`` (parameters the optimiser does not train are left out of
    its gradient all-reduce), each process takes its share of every global batch, the epoch
    loss, test metrics and ``metrics`` are all-reduced so every process holds the same
    history, callbacks' decision to stop is rank 0's, and only rank 0 shows progress.
    Batch-norm statistics are computed per process on its share and copied from rank 0 at
    the end of each epoch.

    Returns:
        :class:`History` with ``epoch``, ``loss``, ``seconds`` and, when evaluated,
        ``test_acc`` and ``test_loss`` per epoch, plus whatever ``metrics`` returns.
        ``info`` records ``amp`` when it is on and ``world_size`` when distributed.

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
    autocast, scaler, amp_label = _mixed_precision(amp, dev)
    distributed = parallel.is_distributed()
    rank, world = (parallel.rank(), parallel.world_size()) if distributed else (0, 1)
    if world > batch_size:
        raise ValueError(
            f"batch_size={batch_size} is the global batch, shared by {world} processes: "
            f"it must be at least {world}"
        )
    model.to(dev)
    for m in extra_modules:
        m.to(dev)
    if data.device != dev:
        data = data.to(dev)
    check_output_size(model, data)
    if distributed:
        # One permutation for all ranks (they split each global batch between them); other
        # randomness (dropout, augment) differs per rank, as it would between batches.
        shared = parallel._broadcast(seed if seed is not None else random.getrandbits(62))
        if seed is not None:
            seed_everything(seed)
            torch.manual_seed(seed + rank)
        generator = torch.Generator().manual_seed(shared)
    else:
        generator = seed_everything(seed) if seed is not None else None
    if params is None:
        params = [p for m in (model, *extra_modules) for p in m.parameters() if p.requires_grad]
    opt = _make_optimizer(optimizer, list(params), lr, weight_decay)
    if schedule not in ("constant", "cosine"):
        raise ValueError(f"schedule must be 'constant' or 'cosine', got {schedule!r}")
    train_model = model
    if distributed:
        trained = [p for g in opt.param_groups for p in g["params"]]
        train_model = parallel._wrap(model, extra_modules, trained, dev)
        history_info = {"world_size": world}
    else:
        history_info = {}
    if amp_label != "off":
        history_info["amp"] = amp_label
    steps = epochs * -(-len(data.X_train) // batch_size)  # ceil: batches per epoch × epochs
    scheduler = (
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps) if schedule == "cosine" else None
    )
    loss_fn = loss_fn or _cross_entropy
    history = history if history is not None else History()
    history.info.update(history_info)
    start_epoch = len(history)
    progress = (progress_default() if progress is None else progress) and rank == 0
    epoch_iter: Iterable[int] = range(start_epoch + 1, start_epoch + epochs + 1)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(epoch_iter, desc=desc, leave=False)
        epoch_iter = bar
    X_train, y_train = data.X_train, data.y_train
    try:
        for epoch in epoch_iter:
            model.train()
            for m in extra_modules:
                m.train()
            t0 = time.perf_counter()
            total = torch.zeros((), device=dev)
            seen = 0
            for X, y, idx in batches(
                X_train, y_train, batch_size, generator=generator, rank=rank, world_size=world
            ):
                if augment is not None:
                    X = augment(X)
                with autocast:
                    loss = loss_fn(train_model, X, y, idx)
                opt.zero_grad(set_to_none=True)
                if scaler is None:
                    loss.backward()
                    opt.step()
                else:
                    scaler.scale(loss).backward()
                    scaler.step(opt)
                    scaler.update()
                if scheduler is not None:
                    scheduler.step()
                total += loss.detach() * len(y)
                seen += len(y)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            row = {
                "epoch": epoch,
                "loss": float(total) / seen,
                "seconds": time.perf_counter() - t0,
            }
            if distributed:
                total_sum, seen_sum = parallel._all_reduce([float(total), seen])
                row["loss"] = total_sum / seen_sum
                row["seconds"] = parallel._all_reduce([row["seconds"]], op="max")[0]
                parallel._sync_buffers((model, *extra_modules))
            last = epoch == start_epoch + epochs
            if evaluate_every and ((epoch - start_epoch) % evaluate_every == 0 or last):
                ev = _evaluate_shared(model, data) if distributed else evaluate(model, data)
                row["test_acc"], row["test_loss"] = ev["accuracy"], ev["loss"]
                if metrics is not None:
                    extra = metrics(model)
                    row.update(_mean_over_ranks(extra) if distributed else extra)
            history.rows.append(row)
            if bar is not None and "test_acc" in row:
                bar.set_postfix(loss=f"{row['loss']:.3f}", test_acc=f"{row['test_acc']:.3f}")
            reason = next((r for cb in callbacks if (r := cb(model, history))), None)
            if distributed:
                reason = parallel._broadcast(reason)  # rank 0 decides, so all ranks stop together
            if reason:
                history.stop_reason = str(reason)
                break
    except RuntimeError as e:
        if distributed and "finished reduction" in str(e):
            raise RuntimeError(
                "under torch.distributed every parameter the optimiser trains must get a "
                "gradient at every step; pass params= with only the parameters this loss "
                f"trains (fit then leaves the others out of DDP's all-reduce). DDP said: {e}"
            ) from e
        raise
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


def _evaluate_shared(model: nn.Module, data: Dataset, batch_size: int = 1000) -> dict:
    """:func:`evaluate` on the test split with the rows shared out over the ranks.

    Each rank scores its slice; correct counts and summed losses are all-reduced, so every
    rank returns the numbers :func:`evaluate` gives on the whole split.
    """
    r, w, n = parallel.rank(), parallel.world_size(), len(data.X_test)
    lo, hi = n * r // w, n * (r + 1) // w
    correct, loss_sum = 0.0, 0.0
    if hi > lo:
        logits = predict(model, data.X_test[lo:hi], batch_size)
        y = data.y_test[lo:hi].to(logits.device)
        correct = float((logits.argmax(1) == y).sum())
        loss_sum = float(F.cross_entropy(logits, y, reduction="sum"))
    correct, loss_sum = parallel._all_reduce([correct, loss_sum])
    return {"accuracy": correct / n, "loss": loss_sum / n}


def _mean_over_ranks(row: dict) -> dict:
    """Average the numeric entries of a metrics row over the ranks (others are kept)."""
    keys = sorted(
        k for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
    )
    if not keys:
        return row
    sums = parallel._all_reduce([float(row[k]) for k in keys])
    w = parallel.world_size()
    return {**row, **{k: v / w for k, v in zip(keys, sums, strict=True)}}


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
