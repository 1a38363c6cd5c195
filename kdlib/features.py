"""Feature distillation: learn from how the teacher represents an input, not only its outputs.

:class:`FeatureCapture` records the outputs of layers named by their ``named_modules()`` path
with forward hooks, without editing the model, and always removes its hooks.
:func:`get_features` is its one-shot form. :func:`projector` builds the regressor that maps a
student feature to the teacher's shape (Linear, 1×1 conv, or adaptive pooling then 1×1 conv).
:func:`distill_features` trains a student with the feature losses of :mod:`kdlib.losses`
(FitNets hints, attention transfer, cosine), either in FitNets' two stages (hint stage, then
KD on outputs) or in one stage ``α·soft + (1 − α)·CE + β·feature``; it runs on
:func:`kdlib.distill.distill` and so keeps its frozen-teacher guarantees.
"""

from __future__ import annotations

import difflib
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import nullcontext

import torch
from torch import nn

from . import losses as L
from .data import Dataset
from .distill import DistillBatch, _check_pair, distill, frozen
from .train import History, _eval_mode, get_device

__all__ = [
    "FeatureCapture",
    "get_features",
    "attention_maps",
    "projector",
    "layer_names",
    "distill_features",
    "FEATURE_LOSSES",
    "BETA_DEFAULTS",
]

_ON_REUSE = ("error", "last", "all")


def layer_names(model: nn.Module) -> list[str]:
    """Every module path of ``model`` that :class:`FeatureCapture` accepts (``""`` excluded).

    Example:
        >>> layer_names(kdlib.model("cnn-thin"))[:3]
        ['stage1', 'stage1.conv', 'stage1.bn']
    """
    return [name for name, _ in model.named_modules(remove_duplicate=False) if name]


def _resolve(model: nn.Module, names: Iterable[str], role: str = "model") -> dict[str, nn.Module]:
    """``{name: module}`` for each requested path; unknown paths list the closest ones."""
    if isinstance(names, str):
        names = [names]
    names = list(names)
    if not names:
        raise ValueError("names is empty: give at least one layer name, e.g. ['stage2']")
    modules = dict(model.named_modules(remove_duplicate=False))
    found = {}
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"layer names must be strings, got {name!r}")
        if name not in modules:
            close = difflib.get_close_matches(name, [n for n in modules if n], n=5, cutoff=0.0)
            raise ValueError(
                f"{role} has no layer named {name!r}; closest names: {', '.join(close)} "
                f"(see kdlib.features.layer_names)"
            )
        found[name] = modules[name]
    return found


class FeatureCapture:
    """Capture the outputs of named layers during forward passes, with forward hooks.

    Use it as a context manager. Inside the block, every forward of ``model`` fills
    ``capture.features`` with ``{name: output}`` of that forward; the hooks are removed when
    the block ends, also when it ends with an exception. The model itself is not edited.

    Defined behaviour for the corner cases:

    * A name listed twice is captured once (one key, one hook).
    * Two names for the same module object (a module registered under two paths) each get
      its output.
    * A module that runs twice in one forward (a shared block) raises a ``RuntimeError`` by
      default (``on_reuse="error"``), because a silently overwritten feature is a hard bug to
      find; ``on_reuse="last"`` keeps the last output and ``on_reuse="all"`` keeps a list of
      every output in call order. A "forward" is the span from one call of ``model`` to the
      next: ``features`` is cleared when ``model`` starts a new forward.
    * Two captures on the same model may be active at once; each has its own hooks.

    Args:
        model: the network to watch.
        names: module paths from ``model.named_modules()``, e.g. ``["stage1", "stage2"]``
            (see :func:`layer_names`). Unknown names raise a ``ValueError`` listing the
            closest names.
        detach: store ``output.detach()`` instead of the output (no graph kept alive).
        on_reuse: ``"error"``, ``"last"`` or ``"all"`` (see above).

    Shape:
        ``features[name]`` has the shape of that module's output, e.g. ``(N, C, H, W)`` after a
        CNN stage and ``(N, D)`` after a Linear layer.

    Example:
        >>> net = kdlib.model("cnn-thin", seed=0)
        >>> with FeatureCapture(net, ["stage2"]) as cap:
        ...     logits = net(torch.zeros(2, 1, 28, 28))
        >>> cap.features["stage2"].shape
        torch.Size([2, 8, 7, 7])
    """

    def __init__(
        self,
        model: nn.Module,
        names: str | Sequence[str],
        *,
        detach: bool = False,
        on_reuse: str = "error",
        role: str = "model",
    ):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if on_reuse not in _ON_REUSE:
            raise ValueError(f"on_reuse must be one of {_ON_REUSE}, got {on_reuse!r}")
        self.model = model
        self.modules = _resolve(model, names, role)  # dict: duplicates collapse to one key
        self.names = list(self.modules)
        self.detach = detach
        self.on_reuse = on_reuse
        self.features: dict[str, torch.Tensor | list[torch.Tensor]] = {}
        self._handles: list = []

    def _hook_for(self, names: list[str]):
        def hook(module, inputs, output):
            if self.detach:
                output = output.detach()
            for name in names:
                if name not in self.features:
                    self.features[name] = [output] if self.on_reuse == "all" else output
                elif self.on_reuse == "all":
                    self.features[name].append(output)
                elif self.on_reuse == "last":
                    self.features[name] = output
                else:
                    raise RuntimeError(
                        f"layer {name!r} ran twice in one forward, so its feature is ambiguous; "
                        "pass on_reuse='last' or on_reuse='all' to FeatureCapture"
                    )

        return hook

    def _clear(self, module, inputs):
        self.features = {}

    def __enter__(self) -> FeatureCapture:
        if self._handles:
            raise RuntimeError("this FeatureCapture is already active; create a new one")
        by_module: dict[int, tuple[nn.Module, list[str]]] = {}
        for name, module in self.modules.items():
            by_module.setdefault(id(module), (module, []))[1].append(name)
        self.features = {}
        try:
            # The clearing pre-hook goes first so it runs before any capture hook of the root.
            self._handles.append(self.model.register_forward_pre_hook(self._clear))
            for module, names in by_module.values():
                self._handles.append(module.register_forward_hook(self._hook_for(names)))
        except BaseException:
            self._remove()
            raise
        return self

    def _remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __exit__(self, *exc) -> bool:
        self._remove()
        return False

    @property
    def active(self) -> bool:
        """True while the hooks are registered."""
        return bool(self._handles)


@torch.no_grad()
def get_features(
    model: nn.Module,
    X: torch.Tensor,
    names: str | Sequence[str],
    batch_size: int = 1000,
) -> dict[str, torch.Tensor]:
    """Features of ``model`` at the named layers for inputs ``X``, in eval mode, no autograd.

    The model's train/eval mode is restored afterwards and its hooks are removed.

    Shape:
        X: ``(N, *)``; each value ``(N, *feature_shape)``.

    Example:
        >>> feats = get_features(teacher, data.X_test[:8], ["stage1", "stage2"])
        >>> feats["stage2"].shape
        torch.Size([8, 32, 7, 7])
    """
    params = list(model.parameters())
    dev = params[0].device if params else X.device
    chunks: dict[str, list[torch.Tensor]] = {}
    with _eval_mode(model), FeatureCapture(model, names, detach=True) as cap:
        for i in range(0, len(X), batch_size):
            model(X[i : i + batch_size].to(dev))
            for name in cap.names:
                chunks.setdefault(name, []).append(cap.features[name])
    return {name: torch.cat(parts) for name, parts in chunks.items()}


def attention_maps(
    model: nn.Module, X: torch.Tensor, layer: str, p: float = 2, batch_size: int = 1000
) -> torch.Tensor:
    """The spatial attention maps of ``model`` at ``layer`` for inputs ``X``, as images.

    :func:`kdlib.losses.attention_map` of the layer's feature maps, reshaped to the layer's
    height and width: each map is ``mean_c |F_c|^p`` scaled to unit length. Eval mode, no
    autograd; :func:`kdlib.course.viz.attention_grid` draws them.

    Shape:
        X: ``(N, C, H, W)``; output ``(N, h, w)``, the layer's spatial size.

    Example:
        >>> attention_maps(teacher, data.X_test[:4], "stage2").shape
        torch.Size([4, 7, 7])
    """
    f = get_features(model, X, [layer], batch_size)[layer]
    if f.ndim != 4:
        raise ValueError(
            f"layer {layer!r} outputs shape {tuple(f.shape)}, not feature maps (N, C, H, W): "
            "attention maps need a convolutional layer"
        )
    N, _, H, W = f.shape  # batch, channels, height, width
    return L.attention_map(f, p).view(N, H, W)


def _shape(shape, role: str) -> tuple[int, ...]:
    if isinstance(shape, torch.Tensor):
        raise TypeError(f"{role} must be a shape such as f.shape, not a tensor")
    try:
        shape = tuple(int(d) for d in shape)
    except TypeError:
        raise TypeError(f"{role} must be a shape such as (N, C, H, W), got {shape!r}") from None
    if len(shape) not in (2, 4):
        raise ValueError(
            f"{role} {shape} is neither a vector batch (N, D) nor a map batch (N, C, H, W)"
        )
    if any(d <= 0 for d in shape[1:]):
        raise ValueError(f"{role} {shape} has a non-positive size")
    return shape


def projector(f_s_shape: Sequence[int], f_t_shape: Sequence[int]) -> nn.Module:
    """The regressor ``r`` that maps student features to the teacher's feature shape.

    * vectors ``(N, D_s) → (N, D_t)``: ``nn.Linear(D_s, D_t)``;
    * maps of the same height and width ``(N, C_s, H, W) → (N, C_t, H, W)``: a 1×1 conv;
    * maps of different sizes: ``nn.AdaptiveAvgPool2d((H_t, W_t))`` first, then the 1×1 conv.

    The projector is trained together with the student but is not part of it:
    :func:`distill_features` keeps it outside the student, so the exported student has no
    projector parameters.

    Args:
        f_s_shape: shape of a batch of student features, e.g. ``f_s.shape``.
        f_t_shape: shape of a batch of teacher features. The batch sizes may differ.

    Shape:
        input ``f_s_shape``; output ``(N, *f_t_shape[1:])``.

    Example:
        >>> r = projector((128, 8, 7, 7), (128, 32, 7, 7))
        >>> r(torch.zeros(2, 8, 7, 7)).shape
        torch.Size([2, 32, 7, 7])
    """
    s, t = _shape(f_s_shape, "f_s_shape"), _shape(f_t_shape, "f_t_shape")
    if len(s) != len(t):
        kinds = {2: "vector (N, D)", 4: "map (N, C, H, W)"}
        raise ValueError(
            f"feature ranks differ: student {s} is a {kinds[len(s)]} but teacher {t} is a "
            f"{kinds[len(t)]}; no projector maps one to the other, pair layers of the same kind"
        )
    if len(s) == 2:
        return nn.Linear(s[1], t[1])
    conv = nn.Conv2d(s[1], t[1], kernel_size=1)
    if s[2:] == t[2:]:
        return conv
    return nn.Sequential(nn.AdaptiveAvgPool2d(t[2:]), conv)


# --------------------------------------------------------------------------------------------
# The feature-distillation loop
# --------------------------------------------------------------------------------------------
# name -> (loss on (f_s, f_t, regressor), whether it needs a learned regressor)
FEATURE_LOSSES: dict[str, tuple[Callable, bool]] = {
    "hint": (L.hint_loss, True),
    "at": (lambda f_s, f_t, r: L.attention_transfer_loss(f_s, f_t), False),
    "cosine": (L.cosine_feature_loss, True),
}

# Default weight β of each feature loss in the one-stage objective. On mnist-5k with the thin
# CNN, β = 1 was the best of the values tried for each (AT 1, 3, 10; hint 0.1, 1, 5; cosine
# 1, 5): a larger β pulled the thin student's few channels away from the classes.
BETA_DEFAULTS: dict[str, float] = {"hint": 1.0, "at": 1.0, "cosine": 1.0}


def _layer(name, model: nn.Module, role: str) -> str:
    """Accept ``"stage2"``, or ``"student.stage2"`` / ``"teacher.stage2"`` with its role."""
    if not isinstance(name, str):
        raise TypeError(f"pairs must map layer names to layer names, got {name!r}")
    known = dict(model.named_modules(remove_duplicate=False))
    if name not in known and name.startswith(role + ".") and name[len(role) + 1 :] in known:
        return name[len(role) + 1 :]
    return name


def _modules_up_to(model: nn.Module, names: Sequence[str], X: torch.Tensor) -> list[nn.Module]:
    """The modules whose forward finishes no later than the last of the named layers.

    These hold the parameters that influence the named layers' outputs in a feed-forward net:
    FitNets' hint stage trains only them ("the student up to the guided layer").
    """
    targets = [dict(model.named_modules(remove_duplicate=False))[n] for n in names]
    order: list[nn.Module] = []
    handles = [m.register_forward_hook(lambda m, i, o: order.append(m)) for m in model.modules()]
    try:
        with torch.no_grad(), _eval_mode(model):
            model(X)
    finally:
        for h in handles:
            h.remove()
    last = max(order.index(t) for t in targets)
    return order[: last + 1]


def distill_features(
    student: nn.Module,
    teacher: nn.Module,
    data: Dataset,
    pairs: Mapping[str, str],
    loss: str | Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = "hint",
    epochs: int = 5,
    lr: float = 1e-3,
    *,
    method: str = "joint",
    beta: float | None = None,
    hint_epochs: int | None = None,
    hint_lr: float | None = None,
    output_loss: str | Callable | None = "kd",
    T: float = 4.0,
    alpha: float = 0.9,
    projectors: dict[str, nn.Module] | None = None,
    cache_teacher_features: bool | None = None,
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
    batch_size: int = 128,
    schedule: str = "constant",
    device: str | torch.device | None = None,
    seed: int | None = None,
    progress: bool | None = None,
    history: History | None = None,
    desc: str = "features",
    **distill_kwargs,
) -> History:
    r"""Distil a teacher's intermediate features into a student, on :func:`kdlib.distill.distill`.

    Two methods:

    * ``method="joint"`` (one stage): every batch minimises
      :math:`\alpha \cdot \text{soft} + (1 - \alpha) \cdot CE + \beta \sum_{(s, t) \in
      \text{pairs}} \mathcal{L}_\text{feat}(r_s(f^s_s), f^t_t)`, i.e. the course's KD loss
      (``output_loss``) plus :math:`\beta` times the feature loss of every pair.
    * ``method="fitnets"`` (Romero et al. 2015, two stages): first a *hint stage* of
      ``hint_epochs`` that trains only the student's layers up to the guided layers, plus the
      regressors, on the feature loss alone; then a *KD stage* of ``epochs`` on
      ``output_loss`` alone, starting from the hinted weights.

    The teacher is frozen for the whole run (:func:`kdlib.distill.frozen`): eval mode,
    ``requires_grad`` off, no autograd, every flag restored afterwards. With fixed inputs the
    teacher's logits and features are computed once and looked up by row; with ``augment`` the
    teacher runs on every batch and its features are captured by hooks. Regressors live in
    ``projectors``, outside the student: the returned student has exactly the parameters it
    came with, and its ``state_dict`` has no projector entries.

    Args:
        student: the model to train (its layers are found by their ``named_modules()`` path).
        teacher: the trained model to imitate (never modified).
        data: the data set.
        pairs: ``{student_layer: teacher_layer}``, e.g. ``{"stage2": "stage2"}``; names may
            carry a ``"student."`` / ``"teacher."`` prefix. Unknown names raise a
            ``ValueError`` that lists the closest layer names.
        loss: the feature loss: ``"hint"`` (:func:`kdlib.losses.hint_loss` after a learned
            regressor), ``"at"`` (:func:`kdlib.losses.attention_transfer_loss`, maps only, no
            regressor), ``"cosine"`` (:func:`kdlib.losses.cosine_feature_loss` after a
            regressor), or a callable ``(f_s, f_t) -> scalar`` on raw features (an
            ``nn.Module`` such as ``HintLoss(projector(...))`` is trained with the student).
        epochs: epochs of the one stage (``"joint"``) or of the KD stage (``"fitnets"``).
        lr: learning rate.
        method: ``"joint"`` (default) or ``"fitnets"``.
        beta: weight :math:`\beta \ge 0` of the feature term in ``"joint"`` (default
            :data:`BETA_DEFAULTS` of the named loss, 1 for a callable). The hint stage uses the
            feature loss alone, so ``beta`` only rescales its learning signal there.
        hint_epochs: epochs of the hint stage (``"fitnets"`` only; default 3).
        hint_lr: learning rate of the hint stage (default ``lr``).
        output_loss: the loss on outputs, passed to :func:`~kdlib.distill.distill` as its
            ``loss`` (``"kd"`` default; ``"ce"`` for labels only; ``None`` for features only).
        T, alpha: temperature and soft weight of the named output losses.
        projectors: a dict to receive the regressors ``{student_layer: module}`` (pass ``{}``
            to keep them for inspection), or one already filled to reuse; by default they are
            built for the run and then dropped.
        cache_teacher_features: compute the teacher's features once (default: when there is
            no ``augment``). The cache holds the whole training split's features: for large
            data sets and early layers, pass ``False``.
        augment, batch_size, schedule, device, seed, progress, history, desc: as in
            :func:`~kdlib.distill.distill`; ``**distill_kwargs`` are passed on to it too
            (``optimizer``, ``weight_decay``, ``callbacks``, ``evaluate_every``, ``metrics``).

    Returns:
        The :class:`~kdlib.train.History`; each row has a ``stage`` (``"hint"``, ``"kd"`` or
        ``"joint"``), and ``info`` records ``method``, ``feature_loss``, ``beta``, ``pairs``,
        ``teacher_features`` (``"cached"`` or ``"per-batch"``), ``projector_params``,
        ``cache_seconds`` (teacher logits and features computed before training, all stages)
        and, for FitNets, ``hint_epochs`` and ``hint_params`` (student parameters trained in
        the hint stage).

    Raises:
        ValueError: empty ``pairs``; unknown layer names; a pair of a vector and a map (no
            projector possible); attention transfer on vectors or on maps of different
            sizes; ``beta < 0``; an unknown ``loss`` or ``method``; and everything
            :func:`~kdlib.distill.distill` refuses (teacher is the student, bad T/alpha, ...).

    Example:
        >>> teacher = kdlib.course.trained_teacher(data)
        >>> student = kdlib.model("cnn-thin", seed=0)
        >>> hist = distill_features(student, teacher, data, {"stage2": "stage2"}, "hint",
        ...                         epochs=10, lr=3e-3, method="fitnets", hint_epochs=2)
        >>> [row["stage"] for row in hist.rows][:3]
        ['hint', 'hint', 'kd']
    """
    _check_pair(student, teacher)
    if not isinstance(pairs, Mapping):
        raise TypeError(f"pairs must be a dict {{student_layer: teacher_layer}}, got {pairs!r}")
    if not pairs:
        raise ValueError(
            "pairs is empty: name at least one {student_layer: teacher_layer}, "
            "e.g. {'stage2': 'stage2'}"
        )
    if method not in ("joint", "fitnets"):
        raise ValueError(f"method must be 'joint' or 'fitnets', got {method!r}")
    if isinstance(loss, str):
        if loss not in FEATURE_LOSSES:
            raise ValueError(
                f"unknown feature loss {loss!r}; use one of {', '.join(FEATURE_LOSSES)} or a "
                "callable (f_s, f_t) -> scalar"
            )
        loss_fn, needs_regressor = FEATURE_LOSSES[loss]
    elif callable(loss):
        loss_fn, needs_regressor = (lambda f_s, f_t, r: loss(f_s, f_t)), False
    else:
        raise TypeError(f"loss must be a name or a callable, got {type(loss).__name__}")
    if beta is None:
        beta = BETA_DEFAULTS.get(loss, 1.0) if isinstance(loss, str) else 1.0
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not beta >= 0:
        raise ValueError(f"beta must be a number >= 0 (the feature loss's weight), got {beta!r}")
    if method == "joint" and hint_epochs is not None:
        raise ValueError("hint_epochs is for method='fitnets'; the joint method has one stage")
    hint_epochs = 3 if hint_epochs is None else hint_epochs
    if not isinstance(hint_epochs, int) or isinstance(hint_epochs, bool) or hint_epochs <= 0:
        raise ValueError(f"hint_epochs must be a positive integer, got {hint_epochs!r}")

    s_names = [_layer(s, student, "student") for s in pairs]
    t_names = [_layer(t, teacher, "teacher") for t in pairs.values()]
    _resolve(student, s_names, "student")  # unknown names: an error listing the closest ones
    _resolve(teacher, t_names, "teacher")
    pairs = dict(zip(s_names, t_names, strict=True))
    dev = get_device(device)
    student.to(dev)
    if data.device != dev:
        data = data.to(dev)
    if cache_teacher_features is None:
        cache_teacher_features = augment is None
    elif cache_teacher_features and augment is not None:
        raise ValueError(
            "cache_teacher_features=True with augment: the teacher must see each augmented "
            "batch; use cache_teacher_features=False"
        )

    # One probe forward of each model gives the feature shapes: every shape problem is
    # reported here, before any training.
    probe = data.X_train[:2]
    f_s0 = get_features(student, probe, s_names)
    f_t0 = get_features(teacher, probe, t_names)
    projectors = {} if projectors is None else projectors
    if seed is not None:
        torch.manual_seed(seed)  # projector weights are part of a repeatable run
    for s, t in pairs.items():
        if needs_regressor and s not in projectors:
            projectors[s] = projector(f_s0[s].shape, f_t0[t].shape)
        if needs_regressor:
            projectors[s].to(dev)
        # Raises now (shape, rank, AT-on-vectors problems), not in the first batch.
        with torch.no_grad():
            loss_fn(f_s0[s].to(dev), f_t0[t].to(dev), projectors.get(s))
    extra_modules = [projectors[s] for s in pairs if s in projectors]
    if isinstance(loss, nn.Module):
        loss.to(dev)
        extra_modules.append(loss)
    history = history if history is not None else History()
    history.info.update(
        method=method,
        feature_loss=loss if isinstance(loss, str) else repr(loss),
        beta=beta,
        pairs=dict(pairs),
        teacher_features="cached" if cache_teacher_features else "per-batch",
        projector_params=sum(p.numel() for m in extra_modules for p in m.parameters()),
    )
    common = dict(
        T=T,
        alpha=alpha,
        batch_size=batch_size,
        schedule=schedule,
        device=dev,
        seed=seed,
        progress=progress,
        history=history,
        augment=augment,
        cache_teacher_logits=cache_teacher_features,
        **distill_kwargs,
    )

    cache_seconds = {"features": 0.0, "logits": 0.0}
    with frozen(teacher), FeatureCapture(student, s_names, role="student") as cap_s:
        if cache_teacher_features:
            t0 = time.perf_counter()
            cached = get_features(teacher, data.X_train, t_names)
            cache_seconds["features"] = time.perf_counter() - t0
            cap_t = None
        else:
            cached = None
            cap_t = FeatureCapture(teacher, t_names, detach=True, role="teacher")

        def feature_term(batch: DistillBatch) -> torch.Tensor:
            total = torch.zeros((), device=batch.student_logits.device)
            for s, t in pairs.items():
                f_t = cached[t][batch.idx] if cached is not None else cap_t.features[t]
                total = total + loss_fn(cap_s.features[s], f_t, projectors.get(s))
            return total

        def stage(name: str, loss, n_epochs: int, stage_lr: float, **kwargs) -> None:
            start = len(history)
            distill(student, teacher, data, loss, n_epochs, stage_lr, **common, **kwargs)
            cache_seconds["logits"] += history.info.get("cache_seconds", 0.0)
            for row in history.rows[start:]:
                row["stage"] = name

        with cap_t if cap_t is not None else nullcontext():
            if method == "joint":
                stage(
                    "joint",
                    output_loss,
                    epochs,
                    lr,
                    extra_loss=lambda b: beta * feature_term(b),
                    extra_modules=extra_modules,
                    desc=desc,
                )
            else:
                prefix = _modules_up_to(student, s_names, probe)
                hint_params = list(
                    {id(p): p for m in prefix for p in m.parameters(recurse=False)}.values()
                )
                params = hint_params + [p for m in extra_modules for p in m.parameters()]
                history.info.update(
                    hint_epochs=hint_epochs, hint_params=sum(p.numel() for p in hint_params)
                )
                stage(
                    "hint",
                    None,
                    hint_epochs,
                    hint_lr or lr,
                    extra_loss=lambda b: beta * feature_term(b),
                    extra_modules=extra_modules,
                    params=params,
                    desc=f"{desc} (hint stage)",
                )
                stage("kd", output_loss, epochs, lr, desc=f"{desc} (KD)")
    # What the run spent on teacher forwards before training, so that tables can count it.
    history.info.update(
        feature_cache_seconds=cache_seconds["features"],
        cache_seconds=cache_seconds["features"] + cache_seconds["logits"],
    )
    return history
