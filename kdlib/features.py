"""Feature distillation: learn from how the teacher represents an input, not only its outputs.

:class:`FeatureCapture` records named layers' outputs with forward hooks (:func:`get_features`
is its one-shot form); :func:`projector` maps a student feature to the teacher's shape;
:func:`distill_features` trains with the feature losses of :mod:`kdlib.losses`.
"""

from __future__ import annotations

import difflib
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import nullcontext

import torch
from torch import Tensor, nn

from . import losses as L
from . import validate as V
from .data import Dataset
from .distill import DistillBatch, distill, frozen
from .train import History, get_device, on_device

__all__ = [
    "FeatureCapture", "get_features", "attention_maps", "projector", "layer_names",
    "distill_features", "FEATURE_LOSSES", "BETA_DEFAULTS"
]  # fmt: skip

_ON_REUSE = ("error", "last", "all")


def layer_names(model: nn.Module) -> list[str]:
    """Every module path of ``model`` that :class:`FeatureCapture` accepts.

    Example:
        >>> layer_names(kdlib.model("cnn-thin"))[:3]
        ['stage1', 'stage1.conv', 'stage1.bn']
    """
    return [name for name, _ in model.named_modules(remove_duplicate=False) if name]


def _resolve(model: nn.Module, names: Iterable[str], role: str = "model") -> dict[str, nn.Module]:
    """``{name: module}`` for each requested path; unknown paths list the closest ones."""
    names = [names] if isinstance(names, str) else list(names)
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
                "(see kdlib.features.layer_names)"
            )
        found[name] = modules[name]
    return found


class FeatureCapture:
    """Capture the outputs of named layers during forward passes, with forward hooks.

    Inside the ``with`` block every forward of ``model`` fills ``capture.features`` with
    ``{name: output}``; the hooks are removed when the block ends, also on an exception.

    Args:
        model: the network to watch.
        names: module paths (see :func:`layer_names`).
        detach: store ``output.detach()``.
        on_reuse: a layer that runs twice in one forward raises (``"error"``), keeps the last
            output (``"last"``) or a list of all (``"all"``).

    Shape:
        ``features[name]``: that module's output, e.g. ``(N, C, H, W)`` or ``(N, D)``.

    Example:
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
        self.model, self.detach, self.on_reuse = model, detach, on_reuse
        self.modules = _resolve(model, names, role)  # dict: duplicates collapse to one key
        self.names = list(self.modules)
        self.features: dict[str, Tensor | list[Tensor]] = {}
        self._handles: list = []

    def _hook_for(self, names: list[str]):
        def hook(module, inputs, output):
            output = output.detach() if self.detach else output
            for name in names:
                if name in self.features and self.on_reuse == "error":
                    raise RuntimeError(
                        f"layer {name!r} ran twice in one forward; pass on_reuse='last' or 'all'"
                    )
                if self.on_reuse == "all":
                    self.features.setdefault(name, []).append(output)
                else:
                    self.features[name] = output

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
            self._handles.append(self.model.register_forward_pre_hook(self._clear))
            for module, names in by_module.values():
                self._handles.append(module.register_forward_hook(self._hook_for(names)))
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> bool:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        return False

    @property
    def active(self) -> bool:
        """True while the hooks are registered."""
        return bool(self._handles)


def get_features(
    model: nn.Module, X: Tensor, names: str | Sequence[str], batch_size: int = 1000
) -> dict[str, Tensor]:
    """Features of ``model`` at the named layers for inputs ``X`` (eval mode, no autograd).

    Shape:
        X: ``(N, *)``; each value ``(N, *feature_shape)``.

    Example:
        >>> get_features(teacher, data.X_test[:8], ["stage2"])["stage2"].shape
        torch.Size([8, 32, 7, 7])
    """
    return _features_and_outputs(model, X, names, batch_size, outputs=False)[0]


@torch.no_grad()
def _features_and_outputs(
    model: nn.Module, X: Tensor, names, batch_size: int = 1000, outputs: bool = True
):
    """:func:`get_features` and, with ``outputs``, the model's outputs from the same forwards
    (``None`` without ``outputs``, or unless they are tensors)."""
    dev = V.device_of(model, X.device)
    chunks: dict[str, list[Tensor]] = {}
    kept = []
    with V.eval_mode(model), FeatureCapture(model, names, detach=True) as cap:
        for i in range(0, len(X), batch_size):
            out = model(X[i : i + batch_size].to(dev))
            if outputs:
                kept.append(out)
            for name in cap.names:
                chunks.setdefault(name, []).append(cap.features[name])
    features = {name: torch.cat(parts) for name, parts in chunks.items()}
    tensors = kept and all(isinstance(z, Tensor) for z in kept)
    return features, torch.cat(kept) if tensors else None


def attention_maps(
    model: nn.Module, X: Tensor, layer: str, p: float = 2, batch_size: int = 1000
) -> Tensor:
    """:func:`kdlib.losses.attention_map` of ``model`` at ``layer``, reshaped to images.

    Shape:
        X: ``(N, C, H, W)``; output ``(N, h, w)``, the layer's spatial size.

    Example:
        >>> attention_maps(teacher, data.X_test[:4], "stage2").shape
        torch.Size([4, 7, 7])
    """
    f = get_features(model, X, [layer], batch_size)[layer]
    if f.ndim != 4:
        raise ValueError(
            f"layer {layer!r} outputs {tuple(f.shape)}, not feature maps (N, C, H, W): "
            "attention maps need a conv layer"
        )
    N, _, H, W = f.shape  # batch, channels, height, width
    return L.attention_map(f, p).view(N, H, W)


def _shape(shape, role: str) -> tuple[int, ...]:
    if isinstance(shape, Tensor):
        raise TypeError(f"{role} must be a shape such as f.shape, not a tensor")
    try:
        shape = tuple(int(d) for d in shape)
    except TypeError:
        raise TypeError(f"{role} must be a shape such as (N, C, H, W), got {shape!r}") from None
    if len(shape) not in (2, 4):
        raise ValueError(
            f"{role} {shape} is neither a vector batch (N, D) nor a map batch (N, C, H, W); "
            "tap a layer whose output has one of these shapes, or pass your own regressor in "
            "projectors={student_layer: module}"
        )
    if any(d <= 0 for d in shape[1:]):
        raise ValueError(f"{role} {shape} has a non-positive size")
    return shape


def projector(f_s_shape: Sequence[int], f_t_shape: Sequence[int]) -> nn.Module:
    """The regressor ``r`` that maps student features to the teacher's feature shape.

    ``(N, D_s) → (N, D_t)``: ``nn.Linear``; ``(N, C_s, H, W) → (N, C_t, H, W)``: a 1×1 conv,
    after ``nn.AdaptiveAvgPool2d`` when the sizes differ. Other shapes are refused.

    Shape:
        input ``f_s_shape``; output ``(N, *f_t_shape[1:])``.

    Example:
        >>> projector((128, 8, 7, 7), (128, 32, 7, 7))(torch.zeros(2, 8, 7, 7)).shape
        torch.Size([2, 32, 7, 7])
    """
    s, t = _shape(f_s_shape, "f_s_shape"), _shape(f_t_shape, "f_t_shape")
    if len(s) != len(t):
        kinds = {2: "vector (N, D)", 4: "map (N, C, H, W)"}
        raise ValueError(
            f"feature ranks differ: student {s} is a {kinds[len(s)]} but teacher {t} a "
            f"{kinds[len(t)]}; pair layers of the same kind"
        )
    if len(s) == 2:
        return nn.Linear(s[1], t[1])
    conv = nn.Conv2d(s[1], t[1], kernel_size=1)
    return conv if s[2:] == t[2:] else nn.Sequential(nn.AdaptiveAvgPool2d(t[2:]), conv)


# ---- The feature-distillation loop
# name -> (loss on (f_s, f_t, regressor), whether it needs a learned regressor)
FEATURE_LOSSES: dict[str, tuple[Callable, bool]] = {
    "hint": (L.hint_loss, True),
    "at": (lambda f_s, f_t, r: L.attention_transfer_loss(f_s, f_t), False),
    "cosine": (L.cosine_feature_loss, True),
}

# Default weight β of each feature loss in the one-stage objective: on mnist-5k with the thin
# CNN, β = 1 beat the larger values tried (AT 3, 10; hint 5; cosine 5) and hint's 0.1.
BETA_DEFAULTS: dict[str, float] = {"hint": 1.0, "at": 1.0, "cosine": 1.0}


def _layer(name, model: nn.Module, role: str) -> str:
    """Accept ``"stage2"``, or ``"student.stage2"`` / ``"teacher.stage2"`` with its role."""
    if not isinstance(name, str):
        raise TypeError(f"pairs must map layer names to layer names, got {name!r}")
    known = dict(model.named_modules(remove_duplicate=False))
    if name not in known and name.startswith(role + ".") and name[len(role) + 1 :] in known:
        return name[len(role) + 1 :]
    return name


def _modules_up_to(model: nn.Module, names: Sequence[str], X: Tensor) -> list[nn.Module]:
    """The modules whose forward finishes no later than the last named layer's: FitNets'
    "student up to the guided layer", trained in the hint stage."""
    targets = [dict(model.named_modules(remove_duplicate=False))[n] for n in names]
    order: list[nn.Module] = []
    handles = [m.register_forward_hook(lambda m, i, o: order.append(m)) for m in model.modules()]
    try:
        with torch.no_grad(), V.eval_mode(model):
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
    loss: str | Callable[[Tensor, Tensor], Tensor] = "hint",
    epochs: int = 5,
    lr: float = 1e-3,
    *,
    method: str = "joint",
    beta: float | None = None,
    hint_epochs: int | None = None,
    projectors: dict[str, nn.Module] | None = None,
    cache_teacher_features: bool | None = None,
    **distill_kwargs,
) -> History:
    r"""Distil a teacher's intermediate features into a student, on :func:`kdlib.distill.distill`.

    * ``method="joint"``: every batch minimises the KD loss plus the feature term
      :math:`\beta \sum_{(s, t) \in \text{pairs}} \mathcal{L}_\text{feat}(r_s(f^s_s), f^t_t)`.
    * ``method="fitnets"`` (Romero et al. 2015): a *hint stage* trains only the student's layers
      up to the guided layers, plus the regressors, on the feature term alone; then a *KD stage*
      on the KD loss alone.

    The teacher stays frozen; the regressors live in ``projectors``, outside the student.

    Args:
        student, teacher: the model to train and the trained one to imitate (never modified).
        data: the data set.
        pairs: ``{student_layer: teacher_layer}``, e.g. ``{"stage2": "stage2"}`` (names may
            carry a ``"student."`` / ``"teacher."`` prefix).
        loss: ``"hint"`` or ``"cosine"`` (after a learned regressor), ``"at"`` (attention
            transfer, maps only), or a callable ``(f_s, f_t) -> scalar`` on raw features (an
            ``nn.Module`` such as ``HintLoss(projector(...))`` is trained with the student).
        epochs: epochs of the joint stage or of the KD stage.
        lr: learning rate.
        method: ``"joint"`` (default) or ``"fitnets"``.
        hint_epochs: epochs of the hint stage (``"fitnets"`` only; default 3).
        beta: weight :math:`\beta \ge 0` of the feature term (default :data:`BETA_DEFAULTS`).
        projectors: a dict to receive the regressors ``{student_layer: module}``, or a filled
            one to reuse.
        cache_teacher_features: compute the teacher's training-split features once (default:
            without ``augment``).
        **distill_kwargs: to :func:`~kdlib.distill.distill` (``T``, ``alpha``) and on to
            :func:`~kdlib.train.fit` (``augment``, ``batch_size``, ``seed``, ...).

    Returns:
        The :class:`~kdlib.train.History`; each row has a ``stage`` (``"hint"``, ``"kd"`` or
        ``"joint"``); ``info`` records ``method``, ``feature_loss``, ``beta``, ``pairs``,
        ``teacher_features``, ``projector_params``, ``cache_seconds`` and, for FitNets,
        ``hint_epochs`` and ``hint_params``.

    Example:
        >>> student = kdlib.model("cnn-thin", seed=0)
        >>> hist = distill_features(student, teacher, data, {"stage2": "stage2"}, "hint",
        ...                         epochs=10, lr=3e-3, method="fitnets", hint_epochs=2)
        >>> [row["stage"] for row in hist.rows][:3]
        ['hint', 'hint', 'kd']
    """
    V.pair(student, teacher)
    hint_epochs = _check_method(method, hint_epochs)
    feature_loss, needs_regressor = _feature_loss(loss)
    beta = V.number("beta", BETA_DEFAULTS.get(loss, 1.0) if beta is None else beta, 0)
    pairs = _pairs(student, teacher, pairs)
    s_names, t_names = list(pairs), list(pairs.values())
    cache = _use_cache(cache_teacher_features, distill_kwargs.get("augment"))
    dev = get_device(distill_kwargs.pop("device", None))
    student.to(dev)
    data = on_device(data, dev)
    probe = data.X_train[:2]
    projectors = {} if projectors is None else projectors
    extra_modules = _projectors(
        student, teacher, pairs, probe, feature_loss, needs_regressor, projectors,
        distill_kwargs.get("seed"), dev,
    )  # fmt: skip
    if isinstance(loss, nn.Module):
        extra_modules.append(loss.to(dev))
    history = distill_kwargs.pop("history", None)
    history = History() if history is None else history
    history.info.update(
        method=method, feature_loss=loss if isinstance(loss, str) else repr(loss), beta=beta,
        pairs=dict(pairs), teacher_features="cached" if cache else "per-batch",
        projector_params=sum(p.numel() for m in extra_modules for p in m.parameters()),
    )  # fmt: skip
    desc = distill_kwargs.pop("desc", "features")
    common = dict(device=dev, history=history, cache_teacher_logits=cache, **distill_kwargs)
    with frozen(teacher), FeatureCapture(student, s_names, role="student") as cap_s:
        t0, cached, z_t = time.perf_counter(), None, None
        if cache:  # one pass of the teacher gives its features and logits
            cached, z_t = _features_and_outputs(teacher, data.X_train, t_names)
        common.setdefault("teacher_logits", z_t)
        cache_seconds = [time.perf_counter() - t0 if cache else 0.0]
        cap_t = None if cache else FeatureCapture(teacher, t_names, detach=True, role="teacher")

        def feature_term(b: DistillBatch) -> Tensor:
            total = torch.zeros((), device=b.student_logits.device)
            for s, t in pairs.items():
                f_t = cached[t][b.idx] if cached is not None else cap_t.features[t]
                total = total + feature_loss(cap_s.features[s], f_t, projectors.get(s))
            return beta * total

        def stage(name: str, logit_loss, n: int, desc: str, **kwargs) -> None:
            start = len(history)
            distill(student, teacher, data, logit_loss, n, lr, desc=desc, **common, **kwargs)
            cache_seconds.append(history.info["cache_seconds"])
            for row in history.rows[start:]:
                row["stage"] = name

        with cap_t if cap_t is not None else nullcontext():
            if method == "joint":
                joint = dict(extra_loss=feature_term, extra_modules=extra_modules)
                stage("joint", "kd", epochs, desc, **joint)
            else:
                hint = _modules_up_to(student, s_names, probe)
                hint = list({id(p): p for m in hint for p in m.parameters(recurse=False)}.values())
                params = hint + [p for m in extra_modules for p in m.parameters()]
                history.info.update(
                    hint_epochs=hint_epochs, hint_params=sum(p.numel() for p in hint)
                )
                stage(
                    "hint", None, hint_epochs, f"{desc} (hint stage)", extra_loss=feature_term,
                    extra_modules=extra_modules, params=params,
                )  # fmt: skip
                stage("kd", "kd", epochs, f"{desc} (KD)")
    history.info["cache_seconds"] = sum(cache_seconds)
    return history


def _check_method(method: str, hint_epochs: int | None) -> int:
    if method not in ("joint", "fitnets"):
        raise ValueError(f"method must be 'joint' or 'fitnets', got {method!r}")
    if method == "joint" and hint_epochs is not None:
        raise ValueError("hint_epochs is for method='fitnets'; the joint method has one stage")
    return V.integer("hint_epochs", 3 if hint_epochs is None else hint_epochs)


def _use_cache(cache: bool | None, augment) -> bool:
    if cache and augment is not None:
        raise ValueError(
            "cache_teacher_features=True with augment: the teacher must see each augmented "
            "batch; pass False"
        )
    return augment is None if cache is None else bool(cache)


def _feature_loss(loss) -> tuple[Callable, bool]:
    """``(fn(f_s, f_t, regressor), whether it needs a learned regressor)`` for ``loss``."""
    if isinstance(loss, str):
        if loss not in FEATURE_LOSSES:
            raise ValueError(
                f"unknown feature loss {loss!r}; use one of {', '.join(FEATURE_LOSSES)} or a "
                "callable (f_s, f_t) -> scalar"
            )
        return FEATURE_LOSSES[loss]
    if callable(loss):
        return (lambda f_s, f_t, r: loss(f_s, f_t)), False
    raise TypeError(f"loss must be a name or a callable, got {type(loss).__name__}")


def _pairs(student: nn.Module, teacher: nn.Module, pairs) -> dict[str, str]:
    """``pairs`` with role prefixes dropped, every name checked against its model."""
    if not isinstance(pairs, Mapping):
        raise TypeError(f"pairs must be a dict {{student_layer: teacher_layer}}, got {pairs!r}")
    if not pairs:
        raise ValueError("pairs is empty: give at least one, e.g. {'stage2': 'stage2'}")
    s_names = [_layer(s, student, "student") for s in pairs]
    t_names = [_layer(t, teacher, "teacher") for t in pairs.values()]
    _resolve(student, s_names, "student")  # unknown names: an error listing the closest ones
    _resolve(teacher, t_names, "teacher")
    return dict(zip(s_names, t_names, strict=True))


def _projectors(
    student, teacher, pairs, probe, feature_loss, needs_regressor, projectors, seed, dev
):
    """Build missing regressors, try the loss on a probe batch (shape errors come before
    training) and return the modules trained with the student."""
    f_s0 = get_features(student, probe, list(pairs))
    f_t0 = get_features(teacher, probe, list(pairs.values()))
    if seed is not None:
        torch.manual_seed(seed)  # projector weights are part of a repeatable run
    for s, t in pairs.items():
        if needs_regressor and s not in projectors:
            projectors[s] = projector(f_s0[s].shape, f_t0[t].shape)
        if needs_regressor:
            projectors[s].to(dev)
        with torch.no_grad():
            feature_loss(f_s0[s].to(dev), f_t0[t].to(dev), projectors.get(s))
    return [projectors[s] for s in pairs if s in projectors]
