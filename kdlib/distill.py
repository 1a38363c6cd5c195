"""The distillation loop: train a student to match a frozen teacher, on top of ``kdlib.train``.

:func:`distill` wraps :func:`kdlib.train.fit` (it passes a ``loss_fn`` and a ``metrics``
hook; there is no second training loop). The teacher runs inside :func:`frozen`: eval mode, no
autograd, ``requires_grad`` off, and every flag restored afterwards, so distillation never
changes a teacher. When the training inputs are fixed (no augmentation), the teacher's logits
are computed once and looked up by row index (offline KD); otherwise the teacher runs on every
batch. The history says which happened and records, per epoch, the student's test accuracy,
its top-1 agreement with the teacher and its KL to the teacher. Other loops (feature
distillation, parameter distillation) build on :func:`distill` through its ``extra_loss``,
``extra_modules``, ``params`` and ``callbacks`` arguments.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import losses as L
from .data import Dataset
from .metrics import agreement, mean_kl
from .train import History, fit, get_device, predict

__all__ = [
    "distill",
    "frozen",
    "DistillBatch",
    "LOSS_NAMES",
    "resolve_loss",
    "random_shift",
    "DistillSweep",
    "distill_sweep",
]

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
    """What an ``extra_loss`` hook sees for one training batch.

    The student's forward has run (so forward hooks on it have fired); the teacher's forward
    has run on ``X`` too unless its logits came from the cache (``teacher_ran`` is False then).
    """

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

    On exit, even after an exception, every submodule's train/eval mode and every
    parameter's ``requires_grad`` flag are restored to what they were. Eval mode keeps batch
    norm's running statistics and dropout fixed, so the teacher's weights and buffers are
    bit-identical afterwards; turning ``requires_grad`` off means no ``.grad`` is ever
    allocated for a teacher parameter. Run the teacher's forward under ``torch.no_grad()``
    as well, so no graph is built through it.

    Example:
        >>> with frozen(teacher):
        ...     with torch.no_grad():
        ...         teacher_logits = teacher(X)
    """
    modes = [(m, m.training) for m in teacher.modules()]
    flags = [(p, p.requires_grad) for p in teacher.parameters()]
    teacher.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield teacher
    finally:
        for m, mode in modes:
            m.training = mode
        for p, flag in flags:
            p.requires_grad_(flag)


def resolve_loss(
    loss: str | LogitLoss | None, T: float = 4.0, alpha: float = 0.9, lam: float = 1.0
) -> LogitLoss | None:
    """Turn a loss name from :data:`LOSS_NAMES` (or a callable) into ``fn(z_s, z_t, y)``.

    A callable, e.g. ``kdlib.losses.KDLoss(T=4, alpha=0.9)``, is returned as is and must take
    ``(student_logits, teacher_logits, y)``. ``None`` means "no output loss" (only an
    ``extra_loss``). ``T``, ``alpha`` and ``lam`` are checked even when the loss does not use
    them, so a typo never goes unnoticed.
    """
    L._check_T(T)
    L._check_alpha(alpha)
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not lam >= 0:
        raise ValueError(f"lam must be a number >= 0, got {lam!r}")
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
    """An ``augment`` that moves each image by a random whole number of pixels.

    Every image in a batch gets its own shift ``(dx, dy)``, each uniform in
    ``[-max_shift, max_shift]``; pixels that come in from outside repeat the border (the
    background, for digits). In distillation this turns the fixed training set into a larger
    *transfer set*: the teacher labels every shifted image with its soft targets, so the student
    sees more of the teacher's "dark knowledge" than the 4,000 originals hold. It needs the
    teacher to run on every batch (``cache_teacher_logits=False``, chosen automatically).
    Draws come from PyTorch's global generator, which ``fit(seed=...)`` seeds.

    Shape:
        X: ``(N, C, H, W)``; output: the same shape.

    Example:
        >>> hist = distill(student, teacher, data, "kd", augment=random_shift(2))
        >>> hist.info["teacher_logits"]
        'per-batch'
    """
    if isinstance(max_shift, bool) or not isinstance(max_shift, int) or max_shift < 0:
        raise ValueError(f"max_shift must be a whole number of pixels >= 0, got {max_shift!r}")

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


@contextmanager
def _on_device(module: nn.Module, device: torch.device | None):
    """Move ``module`` to ``device`` inside the block and back to where it was afterwards."""
    if device is None:
        yield module
        return
    home = _device_of(module)
    module.to(device)
    try:
        yield module
    finally:
        module.to(home)


def _device_of(module: nn.Module) -> torch.device | None:
    for t in (*module.parameters(), *module.buffers()):
        return t.device
    return None


def _same_device(a: torch.device, b: torch.device) -> bool:
    # "cuda" and "cuda:0" name the same device when the index is left open
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


def _check_pair(student: nn.Module, teacher: nn.Module) -> None:
    for name, m in (("student", student), ("teacher", teacher)):
        if not isinstance(m, nn.Module):
            raise TypeError(f"{name} must be an nn.Module, got {type(m).__name__}")
    if student is teacher:
        raise ValueError(
            "the teacher is the same object as the student: distillation would train the "
            "teacher; pass a separate student (e.g. a fresh kdlib.model(...))"
        )
    shared = {id(p) for p in student.parameters()} & {id(p) for p in teacher.parameters()}
    if shared:
        raise ValueError(
            f"student and teacher share {len(shared)} parameter tensor(s): training the student "
            "would modify the teacher; build the student with its own weights (copy.deepcopy)"
        )


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
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
    extra_loss: Callable[[DistillBatch], torch.Tensor] | None = None,
    extra_modules: Sequence[nn.Module] = (),
    params: Iterable[nn.Parameter] | None = None,
    batch_size: int = 128,
    optimizer: str | torch.optim.Optimizer | Callable = "adam",
    weight_decay: float = 0.0,
    schedule: str = "constant",
    metrics: Callable[[nn.Module], dict] | None = None,
    callbacks: Sequence[Callable] = (),
    device: str | torch.device | None = None,
    seed: int | None = None,
    progress: bool | None = None,
    evaluate_every: int = 1,
    history: History | None = None,
    desc: str = "distill",
) -> History:
    """Train ``student`` to match ``teacher`` on ``data`` (the teacher is never modified).

    The training loop is :func:`kdlib.train.fit`; this function supplies its ``loss_fn``
    (teacher logits from the cache or a no-grad forward, student forward, then ``loss`` plus
    ``extra_loss``) and its ``metrics`` (agreement and KL with the teacher on the test split).

    Args:
        student: the model to train, ``(N, *input_shape) -> (N, C)`` logits.
        teacher: the trained model to imitate; frozen with :func:`frozen` for the whole run.
        data: the data set (moved to the training device if needed).
        loss: a name from :data:`LOSS_NAMES` (``"kd"`` default, ``"soft"``, ``"soft-ce"``,
            ``"mse"``, ``"mse+ce"``, ``"ce"``), a callable ``(student_logits,
            teacher_logits, y) -> scalar`` such as ``kdlib.losses.KDLoss(T=4, alpha=0.9)``,
            or ``None`` for no output loss (then ``extra_loss`` is the whole objective).
        epochs: passes over the training split.
        lr: learning rate.
        T: temperature of the named soft losses (> 0).
        alpha: weight of the soft part in ``"kd"``/``"soft-ce"``, in [0, 1].
        lam: weight of the logit-matching term in ``"mse+ce"`` (>= 0).
        cache_teacher_logits: ``True``: compute the teacher's logits on the training split
            once, before training, and look them up by row (needs fixed inputs, so no
            ``augment``). ``False``: run the teacher on every batch. ``None`` (default):
            cache exactly when there is neither ``augment`` nor ``extra_loss`` (an
            ``extra_loss`` usually reads teacher features, which need the teacher's forward).
        teacher_logits: the cache computed beforehand, ``predict(teacher, data.X_train)``,
            shape ``(len(data.X_train), C)``: several runs with one teacher (a sweep, several
            seeds) then pay for the teacher's pass over the training split once. Implies
            ``cache_teacher_logits=True``; its first rows are checked against the teacher.
        augment: ``augment(X) -> X`` applied to each training batch; the teacher then sees
            the same augmented batch as the student.
        extra_loss: ``extra_loss(batch: DistillBatch) -> scalar`` added to ``loss`` on every
            batch (feature losses, penalties). Weight it inside the hook.
        extra_modules: modules trained with the student but not part of it (projectors).
        params: parameters to optimise (default: the student's and ``extra_modules``').
        batch_size, optimizer, weight_decay, schedule, callbacks, device, seed, progress,
            evaluate_every, history, desc: as in :func:`kdlib.train.fit`.
        metrics: ``metrics(student) -> dict`` of extra numbers logged after each epoch.

    Returns:
        The :class:`~kdlib.train.History` of :func:`~kdlib.train.fit`, whose rows also hold
        ``agreement`` (top-1 agreement with the teacher on the test split) and
        ``kl_teacher`` (mean ``KL(p_teacher ‖ p_student)`` at T = 1, in nats), and whose
        ``info`` holds ``teacher_logits`` (``"cached"`` or ``"per-batch"``),
        ``cache_seconds``, ``loss``, ``T``, ``alpha``, ``lam`` and ``teacher_device``.
        A teacher on another device than the training device is moved there for the run
        and moved back afterwards (``teacher_device`` says so); its values are unchanged.

    Raises:
        ValueError: the student is the teacher or shares its parameters; T <= 0; alpha
            outside [0, 1]; an unknown loss; caching asked for with ``augment``;
            ``teacher_logits`` of the wrong shape or not the teacher's; a teacher on
            the meta device; student and teacher with different class counts; labels out of
            range; NaN/inf logits (with epoch, batch and rows).

    Example:
        >>> data = kdlib.load("mnist-5k")
        >>> teacher = kdlib.course.trained_teacher(data)
        >>> student = kdlib.model("hinton-student", seed=0)
        >>> hist = distill(student, teacher, data, loss="kd", T=4, alpha=0.9, epochs=5)
        >>> hist.info["teacher_logits"], hist.last("agreement") > 0.9
        ('cached', True)
    """
    _check_pair(student, teacher)
    loss_fn_logits = resolve_loss(loss, T, alpha, lam)
    if loss_fn_logits is None and extra_loss is None:
        raise ValueError("loss=None needs an extra_loss: otherwise there is nothing to train")
    if teacher_logits is not None:
        if cache_teacher_logits is False:
            raise ValueError(
                "teacher_logits given with cache_teacher_logits=False: given logits are a "
                "cache; drop one of the two"
            )
        cache_teacher_logits = True
    if cache_teacher_logits is None:
        cache_teacher_logits = augment is None and extra_loss is None
    elif cache_teacher_logits and augment is not None:
        raise ValueError(
            "cache_teacher_logits=True with augment: cached logits belong to the un-augmented "
            "inputs, so the teacher must run on every augmented batch; use "
            "cache_teacher_logits=False (or None to choose automatically)"
        )
    dev = get_device(device)
    t_dev = _device_of(teacher)
    moved = t_dev is not None and not _same_device(t_dev, dev)
    if moved and t_dev.type == "meta":
        raise ValueError(
            f"the teacher is on the meta device (shapes only, no weights) but training runs on "
            f"{dev}: load the teacher's weights first"
        )
    if data.device != dev:
        data = data.to(dev)
    C = data.num_classes
    y_min, y_max = int(data.y_train.min()), int(data.y_train.max())
    if y_min < 0 or y_max >= C:
        raise ValueError(
            f"training labels out of range: found values in [{y_min}, {y_max}] but "
            f"{data.name!r} has {C} classes, so labels must be in [0, {C - 1}]"
        )
    history = history if history is not None else History()
    state = {"epoch": 0, "batch": 0}

    with frozen(teacher), _on_device(teacher, dev if moved else None):
        probe = predict(teacher, data.X_train[:2])
        if probe.ndim != 2 or probe.shape[1] != C:
            raise ValueError(
                f"the teacher outputs shape {tuple(probe.shape)} but {data.name!r} has {C} "
                f"classes: student and teacher must both output {C} logits"
            )
        t0 = time.perf_counter()
        if teacher_logits is not None:
            cached = _given_logits(teacher_logits, probe, len(data.X_train), C).to(dev)
        else:
            cached = predict(teacher, data.X_train) if cache_teacher_logits else None
        cache_seconds = time.perf_counter() - t0
        if cached is not None and not bool(torch.isfinite(cached).all()):
            bad = torch.nonzero(~torch.isfinite(cached).all(1)).flatten()[:5].tolist()
            raise ValueError(f"the teacher's logits are NaN/inf on training rows {bad}")
        teacher_test = predict(teacher, data.X_test)

        def loss_fn(model: nn.Module, X, y, idx) -> torch.Tensor:
            epoch = len(history) + 1
            if state["epoch"] != epoch:
                state["epoch"], state["batch"] = epoch, 0
            else:
                state["batch"] += 1
            if cached is not None:
                z_t = cached[idx]
            else:
                with torch.no_grad():
                    z_t = teacher(X)
            z_s = model(X)
            try:
                total = loss_fn_logits(z_s, z_t, y) if loss_fn_logits is not None else 0.0
                if extra_loss is not None:
                    batch = DistillBatch(
                        student=model,
                        teacher=teacher,
                        X=X,
                        y=y,
                        idx=idx,
                        student_logits=z_s,
                        teacher_logits=z_t,
                        teacher_ran=cached is None,
                        epoch=epoch,
                        batch=state["batch"],
                    )
                    total = total + extra_loss(batch)
            except ValueError as e:
                raise ValueError(f"epoch {epoch}, batch {state['batch']}: {e}") from e
            return total

        def metrics_fn(model: nn.Module) -> dict:
            z_s = predict(model, data.X_test)
            row = {
                "agreement": agreement(z_s, teacher_test),
                "kl_teacher": mean_kl(z_s, teacher_test),
            }
            if metrics is not None:
                row.update(metrics(model))
            return row

        history.info.update(
            teacher_logits="cached" if cached is not None else "per-batch",
            cache_seconds=cache_seconds if cached is not None else 0.0,
            loss=loss if isinstance(loss, str) or loss is None else repr(loss),
            T=T,
            alpha=alpha,
            lam=lam,
            teacher_device=(
                f"moved from {t_dev} to {dev} for training, then back" if moved else str(dev)
            ),
        )
        fit(
            student,
            data,
            epochs=epochs,
            lr=lr,
            batch_size=batch_size,
            optimizer=optimizer,
            weight_decay=weight_decay,
            schedule=schedule,
            loss_fn=loss_fn,
            params=params,
            extra_modules=extra_modules,
            metrics=metrics_fn,
            callbacks=callbacks,
            augment=augment,
            device=dev,
            seed=seed,
            progress=progress,
            evaluate_every=evaluate_every,
            history=history,
            desc=desc,
        )
    return history


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


@dataclass
class DistillSweep:
    """The histories of :func:`distill` runs over a grid of settings, to look up later.

    Widgets use it so that moving a slider only looks a finished run up, never trains.
    """

    keys: list[str]  # the swept arguments, e.g. ["alpha", "T"]
    settings: list[tuple]  # one tuple of values per run, in the order of ``keys``
    histories: list[History]  # one per run, same order

    def values(self, key: str) -> list:
        """The swept values of ``key``, in grid order."""
        i = self._index(key)
        return list(dict.fromkeys(s[i] for s in self.settings))

    def lookup(self, **setting) -> History:
        """The history of the run with exactly these values, e.g. ``lookup(alpha=0.9, T=4)``."""
        if set(setting) != set(self.keys):
            raise ValueError(f"give a value for each of {self.keys}, got {sorted(setting)}")
        wanted = tuple(setting[k] for k in self.keys)
        for s, h in zip(self.settings, self.histories, strict=True):
            if all(abs(a - b) < 1e-12 for a, b in zip(s, wanted, strict=True)):
                return h
        raise ValueError(f"{setting} was not swept; swept values: {self.grid}")

    def final(self, column: str = "test_acc") -> dict[tuple, float]:
        """``{setting: last value of column}`` for every run."""
        return {s: h.last(column) for s, h in zip(self.settings, self.histories, strict=True)}

    @property
    def grid(self) -> dict[str, list]:
        return {k: self.values(k) for k in self.keys}

    def _index(self, key: str) -> int:
        if key not in self.keys:
            raise ValueError(f"{key!r} was not swept; swept: {self.keys}")
        return self.keys.index(key)


def distill_sweep(
    make_student: Callable[[], nn.Module],
    teacher: nn.Module,
    data: Dataset,
    grid: dict[str, Sequence[float]],
    loss: str | LogitLoss = "kd",
    **kwargs,
) -> DistillSweep:
    """Run :func:`distill` once for every combination of the values in ``grid``.

    Args:
        make_student: returns a fresh student (same initial weights each call, e.g.
            ``lambda: kdlib.model("hinton-student", seed=0)``).
        teacher: the teacher, shared by every run (never modified).
        data: the data set.
        grid: numeric arguments of :func:`distill` and their values, e.g.
            ``{"alpha": [0.5, 0.9], "T": [1, 4]}``; the runs follow ``itertools.product``.
        loss: the loss of every run.
        **kwargs: the other arguments of :func:`distill`, the same for every run.

    Example:
        >>> sweep = distill_sweep(lambda: kdlib.model("hinton-student", seed=0), teacher,
        ...                       data, {"alpha": [0.5, 0.9], "T": [1, 4]}, epochs=3)
        >>> sweep.lookup(alpha=0.9, T=4).last("test_acc")  # doctest: +SKIP
    """
    if not grid or any(len(v) == 0 for v in grid.values()):
        raise ValueError(f"grid needs at least one value per key, got {grid!r}")
    clash = set(grid) & set(kwargs)
    if clash:
        raise ValueError(f"{sorted(clash)} given both in grid and as fixed arguments")
    keys = list(grid)
    fixed_inputs = not {"augment", "extra_loss", "cache_teacher_logits", "teacher_logits"} & (
        set(kwargs) | set(keys)
    )
    if fixed_inputs:  # the teacher's pass over the training split, once for the whole grid
        kwargs["teacher_logits"] = predict(teacher, data.X_train)
    settings, histories = [], []
    for values in itertools.product(*(grid[k] for k in keys)):
        setting = dict(zip(keys, values, strict=True))
        histories.append(distill(make_student(), teacher, data, loss, **kwargs, **setting))
        settings.append(tuple(values))
    return DistillSweep(keys, settings, histories)
