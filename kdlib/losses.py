"""Every distillation loss of the course, each as a function and a thin ``nn.Module``.

Logit losses (Ba & Caruana 2014; Hinton et al. 2015): MSE logit matching, the soft-target KL
with temperature, its cross-entropy twin, and the combined hard + soft losses. Feature losses
(FitNets hints, attention transfer, cosine matching) live in their own section below. The
formulas are stated in each docstring and in the course's notebooks; ``tests/test_losses.py`` holds
the code to them. Argument order is always ``student_logits, teacher_logits`` (then labels).
Every function checks its inputs and raises ``ValueError`` naming the problem: a non-positive
``T``, an ``alpha`` outside [0, 1], logits of different shapes, NaN/inf logits (with the rows
where they occur) and labels out of range.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    # logit losses
    "soften",
    "mse_logits",
    "soft_target_kl",
    "soft_target_ce",
    "kd_loss",
    "mse_kd_loss",
    "MSELogitLoss",
    "SoftTargetKLLoss",
    "SoftTargetCELoss",
    "KDLoss",
    "MSEKDLoss",
    # feature losses
    "hint_loss",
    "attention_map",
    "attention_transfer_loss",
    "cosine_feature_loss",
    "HintLoss",
    "AttentionTransferLoss",
    "CosineFeatureLoss",
]


# ============================================================================================
# Input checks shared by every loss
# ============================================================================================
def _check_T(T) -> None:
    if isinstance(T, bool) or not isinstance(T, (int, float)) or not math.isfinite(T) or T <= 0:
        raise ValueError(f"temperature T must be a finite number > 0, got {T!r}")


def _check_alpha(alpha) -> None:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}")


def _check_finite(name: str, logits: torch.Tensor) -> None:
    finite = torch.isfinite(logits)
    if not bool(finite.all()):
        rows = torch.nonzero(~finite.all(dim=1)).flatten().tolist()
        shown = rows[:5] + (["..."] if len(rows) > 5 else [])
        raise ValueError(
            f"{name} contains NaN or inf in {len(rows)} row(s) of the batch, at batch "
            f"index {shown}; check the model's inputs and learning rate"
        )


def _check_logits(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None) -> None:
    for name, z in (("student_logits", student_logits), ("teacher_logits", teacher_logits)):
        if z is None:
            continue
        if not isinstance(z, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(z).__name__}")
        if z.ndim != 2:
            raise ValueError(f"{name} must have shape (N, C), got {tuple(z.shape)}")
        _check_finite(name, z)
    if teacher_logits is not None and student_logits.shape != teacher_logits.shape:
        n_s, c_s = student_logits.shape
        n_t, c_t = teacher_logits.shape
        what = "class counts" if c_s != c_t else "batch sizes"
        raise ValueError(
            f"student and teacher logits differ in shape ({what}): student "
            f"{tuple(student_logits.shape)} vs teacher {tuple(teacher_logits.shape)}"
        )


def _check_labels(y: torch.Tensor, student_logits: torch.Tensor) -> None:
    if not isinstance(y, torch.Tensor) or y.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"labels y must be an integer tensor of class indices, got {y!r:.60}")
    n, c = student_logits.shape
    if y.shape != (n,):
        raise ValueError(f"labels y must have shape ({n},), got {tuple(y.shape)}")
    if n and (int(y.min()) < 0 or int(y.max()) >= c):
        raise ValueError(
            f"labels out of range: found values in [{int(y.min())}, {int(y.max())}] but the "
            f"logits have {c} classes, so labels must be in [0, {c - 1}]"
        )


def _reduce(per_sample: torch.Tensor, reduction: str, allowed: tuple[str, ...]) -> torch.Tensor:
    if reduction not in allowed:
        hint = ""
        if reduction == "mean" and "batchmean" in allowed:
            hint = (
                "; 'mean' would also average over classes (PyTorch's kl_div pitfall), which "
                "divides the loss by C: use 'batchmean'"
            )
        raise ValueError(f"reduction must be one of {allowed}, got {reduction!r}{hint}")
    if reduction == "none":
        return per_sample
    if reduction == "sum":
        return per_sample.sum()
    return per_sample.mean()


# ============================================================================================
# Logit losses: MSE logit matching, soft targets with temperature, combined hard + soft
# ============================================================================================
def soften(logits: torch.Tensor, T: float = 1.0) -> torch.Tensor:
    r"""Softened class probabilities :math:`p(T) = \mathrm{softmax}(z / T)` along the last dim.

    ``T = 1`` is the ordinary softmax; a larger ``T`` flattens the distribution and lifts the
    small probabilities of the wrong classes (the "dark knowledge"); ``T → 0`` approaches a
    one-hot vector on the largest logit.

    Shape:
        logits: ``(..., C)``; output: the same shape, each row summing to 1.

    Example:
        >>> soften(torch.tensor([2.0, 1.0, 0.0]), T=2.0)
        tensor([0.5065, 0.3072, 0.1863])
    """
    _check_T(T)
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
    return torch.softmax(logits / T, dim=-1)


def mse_logits(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    r"""MSE logit matching (Ba & Caruana 2014): regress the student's logits on the teacher's.

    .. math::
        \ell_n = \frac{1}{C} \sum_{c=1}^{C} (z^s_{n,c} - z^t_{n,c})^2, \qquad
        \mathcal{L} = \frac{1}{N} \sum_n \ell_n

    It matches *logits*, not probabilities: two logit vectors that differ by a constant give
    the same softmax but a nonzero loss, and large logits are not squashed by a softmax.
    With ``reduction="mean"`` this equals ``F.mse_loss(student_logits, teacher_logits)``.

    Args:
        student_logits: the student's raw outputs (gradients flow through them).
        teacher_logits: the teacher's raw outputs (treated as constants: pass them detached).
        reduction: ``"mean"`` (default) averages :math:`\ell_n` over the batch, ``"sum"``
            adds them, ``"none"`` returns them.

    Shape:
        student_logits: ``(N, C)``; teacher_logits: ``(N, C)``; output: scalar, or ``(N,)``
        with ``reduction="none"``.

    Example:
        >>> s = torch.tensor([[1.0, 2.0]], requires_grad=True)
        >>> mse_logits(s, torch.tensor([[0.0, 0.0]]))
        tensor(2.5000, grad_fn=<MeanBackward0>)
    """
    _check_logits(student_logits, teacher_logits)
    per_sample = (student_logits - teacher_logits).pow(2).mean(dim=1)
    return _reduce(per_sample, reduction, ("mean", "sum", "none"))


def soft_target_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    T: float = 4.0,
    reduction: str = "batchmean",
) -> torch.Tensor:
    r"""Soft-target loss (Hinton et al. 2015): :math:`T^2 \cdot KL(p_t(T) \,\|\, p_s(T))`.

    With softened distributions :math:`p(T) = \mathrm{softmax}(z / T)`:

    .. math::
        \ell_n = T^2 \sum_{c} p^t_{n,c}(T) \left(\log p^t_{n,c}(T) - \log p^s_{n,c}(T)\right)

    computed from log-probabilities (``log_softmax``), so it stays finite for logits of any
    size. The gradient with respect to the student's logits is
    :math:`T (p^s(T) - p^t(T)) / N`: the :math:`T^2` factor cancels the :math:`1/T^2` that the
    softening puts into the gradient, so changing ``T`` does not change the loss's scale.
    ``"batchmean"`` equals ``F.kl_div(log p_s, log p_t, reduction="batchmean",
    log_target=True) * T**2``. The loss is 0 exactly when the two softened distributions are
    equal, and adding a constant to a row of either logits changes nothing.

    Args:
        student_logits: the student's raw outputs.
        teacher_logits: the teacher's raw outputs (treated as constants: pass them detached).
        T: temperature > 0; larger ``T`` flattens both distributions and reveals the
            teacher's "dark knowledge" about wrong classes.
        reduction: ``"batchmean"`` (default) averages :math:`\ell_n` over the batch, ``"sum"``
            adds them, ``"none"`` returns them. ``"mean"`` is refused: in PyTorch's ``kl_div``
            it also divides by the number of classes.

    Shape:
        student_logits: ``(N, C)``; teacher_logits: ``(N, C)``; output: scalar, or ``(N,)``
        with ``reduction="none"``.

    Example:
        >>> s, t = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 2.0]])
        >>> round(float(soft_target_kl(s, t, T=1.0)), 4)
        1.5232
    """
    _check_T(T)
    _check_logits(student_logits, teacher_logits)
    log_p_s = F.log_softmax(student_logits / T, dim=1)
    log_p_t = F.log_softmax(teacher_logits / T, dim=1)
    # exp(log p_t) is exactly 0 where p_t underflows, so 0 · (finite) keeps rows finite.
    per_sample = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1) * T**2
    return _reduce(per_sample, reduction, ("batchmean", "sum", "none"))


def soft_target_ce(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    T: float = 4.0,
    reduction: str = "batchmean",
) -> torch.Tensor:
    r"""Soft-target cross-entropy: :math:`-T^2 \sum_c p^t_c(T) \log p^s_c(T)`.

    .. math::
        \ell_n = -T^2 \sum_c p^t_{n,c}(T) \log p^s_{n,c}(T)
               = T^2 \, KL(p^t_n \,\|\, p^s_n) + T^2 \, H(p^t_n)

    It differs from :func:`soft_target_kl` by :math:`T^2` times the teacher's entropy
    :math:`H(p^t) = -\sum_c p^t_c \log p^t_c`, which does not depend on the student: both
    have the same gradient and train the student identically. The KL form is 0 at a perfect
    match, which makes it the easier number to read; this form is what
    ``F.cross_entropy(student_logits / T, p_t) * T**2`` computes.

    Args:
        student_logits: the student's raw outputs.
        teacher_logits: the teacher's raw outputs (treated as constants: pass them detached).
        T: temperature > 0.
        reduction: ``"batchmean"`` (default), ``"sum"`` or ``"none"``.

    Shape:
        student_logits: ``(N, C)``; teacher_logits: ``(N, C)``; output: scalar, or ``(N,)``
        with ``reduction="none"``.

    Example:
        >>> s, t = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 2.0]])
        >>> round(float(soft_target_ce(s, t, T=1.0)), 4)  # KL 1.5232 + entropy 0.3653
        1.8885
    """
    _check_T(T)
    _check_logits(student_logits, teacher_logits)
    log_p_s = F.log_softmax(student_logits / T, dim=1)
    p_t = F.softmax(teacher_logits / T, dim=1)
    per_sample = -(p_t * log_p_s).sum(dim=1) * T**2
    return _reduce(per_sample, reduction, ("batchmean", "sum", "none"))


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    y: torch.Tensor,
    T: float = 4.0,
    alpha: float = 0.9,
    reduction: str = "mean",
    soft: str = "kl",
) -> torch.Tensor:
    r"""Hinton et al.'s combined loss: :math:`\alpha\,\text{soft} + (1-\alpha)\,CE(z_s, y)`.

    .. math::
        \ell_n = \alpha \, T^2 \, KL(p^t_n(T) \,\|\, p^s_n(T))
               + (1 - \alpha) \left(-\log \mathrm{softmax}(z^s_n)_{y_n}\right)

    The hard-label cross-entropy uses temperature 1. ``alpha=1`` is pure distillation,
    ``alpha=0`` plain training on labels.

    Args:
        student_logits: the student's raw outputs.
        teacher_logits: the teacher's raw outputs (treated as constants: pass them detached).
        y: the true class indices.
        T: temperature > 0 of the soft part.
        alpha: weight in [0, 1] of the soft part.
        reduction: ``"mean"`` (default: batch mean of :math:`\ell_n`), ``"sum"`` or ``"none"``.
        soft: ``"kl"`` (:func:`soft_target_kl`, default) or ``"ce"``
            (:func:`soft_target_ce`; same gradient, loss larger by the teacher's entropy).

    Shape:
        student_logits: ``(N, C)``; teacher_logits: ``(N, C)``; y: ``(N,)`` integers in
        ``[0, C)``; output: scalar, or ``(N,)`` with ``reduction="none"``.

    Example:
        >>> s, t, y = torch.zeros(4, 10), torch.randn(4, 10), torch.tensor([0, 1, 2, 3])
        >>> kd_loss(s, t, y, T=4.0, alpha=0.0)  # only the label part: log(10)
        tensor(2.3026)
    """
    _check_alpha(alpha)
    _check_labels(y, student_logits)
    if soft not in ("kl", "ce"):
        raise ValueError(f"soft must be 'kl' or 'ce', got {soft!r}")
    soft_fn = soft_target_kl if soft == "kl" else soft_target_ce
    per_sample = alpha * soft_fn(student_logits, teacher_logits, T, reduction="none")
    per_sample = per_sample + (1 - alpha) * F.cross_entropy(student_logits, y, reduction="none")
    return _reduce(per_sample, reduction, ("mean", "sum", "none"))


def mse_kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    y: torch.Tensor,
    lam: float = 1.0,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""A common tutorial loss, :math:`L_\text{labels} + \lambda \cdot L_\text{match}`, done right.

    .. math::
        \ell_n = -\log \mathrm{softmax}(z^s_n)_{y_n}
               + \lambda \, \frac{1}{C} \sum_c (z^s_{n,c} - z^t_{n,c})^2

    Hard-label cross-entropy plus :func:`mse_logits` on *logits* (not probabilities), with
    the teacher's logits treated as constants. ``lam=0`` is plain training on labels.

    Args:
        student_logits: the student's raw outputs.
        teacher_logits: the teacher's raw outputs (treated as constants: pass them detached).
        y: the true class indices.
        lam: weight :math:`\lambda \ge 0` of the matching term.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.

    Shape:
        student_logits: ``(N, C)``; teacher_logits: ``(N, C)``; y: ``(N,)``; output: scalar,
        or ``(N,)`` with ``reduction="none"``.

    Example:
        >>> s, y = torch.zeros(2, 10), torch.tensor([3, 7])
        >>> mse_kd_loss(s, s + 1.0, y, lam=0.5)  # log(10) + 0.5 · 1
        tensor(2.8026)
    """
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not lam >= 0:
        raise ValueError(f"lam must be a number >= 0, got {lam!r}")
    _check_labels(y, student_logits)
    per_sample = lam * mse_logits(student_logits, teacher_logits, reduction="none")
    per_sample = per_sample + F.cross_entropy(student_logits, y, reduction="none")
    return _reduce(per_sample, reduction, ("mean", "sum", "none"))


class MSELogitLoss(nn.Module):
    """Module form of :func:`mse_logits`: ``MSELogitLoss()(student_logits, teacher_logits)``."""

    def __init__(self, reduction: str = "mean"):
        super().__init__()
        self.reduction = reduction

    def forward(self, student_logits, teacher_logits, y=None):
        return mse_logits(student_logits, teacher_logits, self.reduction)


class SoftTargetKLLoss(nn.Module):
    """Module form of :func:`soft_target_kl`: ``SoftTargetKLLoss(T=4)(student_logits,
    teacher_logits)``."""

    def __init__(self, T: float = 4.0, reduction: str = "batchmean"):
        super().__init__()
        _check_T(T)
        self.T, self.reduction = T, reduction

    def forward(self, student_logits, teacher_logits, y=None):
        return soft_target_kl(student_logits, teacher_logits, self.T, self.reduction)

    def extra_repr(self) -> str:
        return f"T={self.T}"


class SoftTargetCELoss(nn.Module):
    """Module form of :func:`soft_target_ce`."""

    def __init__(self, T: float = 4.0, reduction: str = "batchmean"):
        super().__init__()
        _check_T(T)
        self.T, self.reduction = T, reduction

    def forward(self, student_logits, teacher_logits, y=None):
        return soft_target_ce(student_logits, teacher_logits, self.T, self.reduction)

    def extra_repr(self) -> str:
        return f"T={self.T}"


class KDLoss(nn.Module):
    """Module form of :func:`kd_loss`: ``KDLoss(T=4, alpha=0.9)(student_logits,
    teacher_logits, y)``."""

    def __init__(
        self, T: float = 4.0, alpha: float = 0.9, reduction: str = "mean", soft: str = "kl"
    ):
        super().__init__()
        _check_T(T)
        _check_alpha(alpha)
        self.T, self.alpha, self.reduction, self.soft = T, alpha, reduction, soft

    def forward(self, student_logits, teacher_logits, y):
        return kd_loss(
            student_logits, teacher_logits, y, self.T, self.alpha, self.reduction, self.soft
        )

    def extra_repr(self) -> str:
        return f"T={self.T}, alpha={self.alpha}, soft={self.soft!r}"


class MSEKDLoss(nn.Module):
    """Module form of :func:`mse_kd_loss`: ``MSEKDLoss(lam=1)(student_logits, teacher_logits,
    y)``."""

    def __init__(self, lam: float = 1.0, reduction: str = "mean"):
        super().__init__()
        self.lam, self.reduction = lam, reduction

    def forward(self, student_logits, teacher_logits, y):
        return mse_kd_loss(student_logits, teacher_logits, y, self.lam, self.reduction)

    def extra_repr(self) -> str:
        return f"lam={self.lam}"


# ============================================================================================
# Feature losses (FitNets hints, attention transfer, cosine): added by the feature-
# distillation work (issue 4) below this line.
# ============================================================================================


def _check_feature(name: str, f, maps: bool = False) -> None:
    if not isinstance(f, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(f).__name__}")
    if maps and f.ndim != 4:
        kind = "a vector batch (N, D)" if f.ndim == 2 else f"of shape {tuple(f.shape)}"
        raise ValueError(
            f"attention transfer needs feature maps (N, C, H, W), but {name} is {kind}; "
            "pair convolutional layers (e.g. 'stage2'), or use the hint or cosine loss for "
            "vectors"
        )
    if f.ndim < 2:
        raise ValueError(f"{name} must have a batch dimension first, got {tuple(f.shape)}")
    if not bool(torch.isfinite(f).all()):
        raise ValueError(f"{name} contains NaN or inf; check the model's inputs and lr")


def _check_features(f_s, f_t, maps: bool = False) -> None:
    _check_feature("f_s", f_s, maps)
    _check_feature("f_t", f_t, maps)
    if len(f_s) != len(f_t):
        raise ValueError(f"f_s and f_t have different batch sizes: {len(f_s)} vs {len(f_t)}")


def _regress(f_s: torch.Tensor, f_t: torch.Tensor, regressor) -> torch.Tensor:
    r = regressor(f_s) if regressor is not None else f_s
    if r.shape != f_t.shape:
        made = "after the regressor " if regressor is not None else ""
        raise ValueError(
            f"student features {made}have shape {tuple(r.shape)} but the teacher's have "
            f"{tuple(f_t.shape)}; map them with regressor=kdlib.projector(f_s.shape, f_t.shape)"
        )
    return r


def hint_loss(
    f_s: torch.Tensor,
    f_t: torch.Tensor,
    regressor: nn.Module | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""FitNets hint loss (Romero et al. 2015): MSE between the regressed student feature and
    the teacher's.

    .. math::
        \ell_n = \frac{1}{D} \sum_{d=1}^{D} \left(r(f^s_n)_d - f^t_{n,d}\right)^2

    over the :math:`D` values of one example's feature (all of :math:`C \times H \times W`
    for a map). The paper writes :math:`\tfrac12 \|u_t(x) - r(v_s(x))\|^2`; the mean used here
    is that divided by :math:`D/2`, a constant absorbed by the weight :math:`\beta`, and it
    keeps the loss's size independent of the layer's size. With ``reduction="mean"`` it equals
    ``F.mse_loss(regressor(f_s), f_t)``.

    Args:
        f_s: the student's feature at the guided layer (gradients flow through it).
        f_t: the teacher's feature at the hint layer (treated as a constant: pass it detached).
        regressor: the learned map :math:`r` to the teacher's shape (see
            :func:`kdlib.features.projector`); ``None`` when the shapes already match.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.

    Shape:
        f_s: ``(N, *)``; f_t: ``(N, *)`` equal to ``regressor(f_s).shape``; output: scalar,
        or ``(N,)`` with ``reduction="none"``.

    Example:
        >>> f_s, f_t = torch.ones(2, 3), torch.zeros(2, 3)
        >>> hint_loss(f_s, f_t)
        tensor(1.)
    """
    _check_features(f_s, f_t)
    r = _regress(f_s, f_t, regressor)
    per_sample = (r - f_t).pow(2).flatten(1).mean(dim=1)
    return _reduce(per_sample, reduction, ("mean", "sum", "none"))


def attention_map(f: torch.Tensor, p: float = 2) -> torch.Tensor:
    r"""Spatial attention map (Zagoruyko & Komodakis 2017): where a layer's activations are.

    .. math::
        a(F) = \frac{v}{\|v\|_2}, \qquad v = \mathrm{vec}\Big(\frac{1}{C}\sum_{c=1}^{C}
        |F_c|^p\Big)

    The mean over channels of the p-th power of the activation at each position, flattened
    and scaled to unit length, so maps of layers with different channel counts compare.

    Args:
        f: a batch of feature maps.
        p: the power (2 in the paper).

    Shape:
        f: ``(N, C, H, W)``; output ``(N, H·W)``, each row of unit L2 norm (or all zeros for
        an all-zero map).

    Example:
        >>> attention_map(torch.ones(1, 3, 2, 2))
        tensor([[0.5000, 0.5000, 0.5000, 0.5000]])
    """
    _check_feature("f", f, maps=True)
    v = f.abs().pow(p).mean(dim=1).flatten(1)  # (N, H*W)
    return F.normalize(v, dim=1)


def attention_transfer_loss(
    f_s: torch.Tensor, f_t: torch.Tensor, p: float = 2, reduction: str = "mean"
) -> torch.Tensor:
    r"""Attention transfer (Zagoruyko & Komodakis 2017): match where the maps are active.

    .. math::
        \ell_n = \big\| a(f^s_n) - a(f^t_n) \big\|_2^2

    with :func:`attention_map` :math:`a`. Channel counts may differ (the map averages them
    away), so no regressor is needed, but the spatial sizes must agree. Each map has unit
    length, so :math:`0 \le \ell_n \le 4`; the loop scales the term with its weight
    :math:`\beta`.

    Args:
        f_s: the student's feature maps (gradients flow through them).
        f_t: the teacher's feature maps at a layer of the same height and width.
        p: the power of :func:`attention_map`.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.

    Shape:
        f_s: ``(N, C_s, H, W)``; f_t: ``(N, C_t, H, W)``; output: scalar, or ``(N,)`` with
        ``reduction="none"``.

    Example:
        >>> f_s = torch.zeros(1, 8, 2, 2); f_s[0, :, 0, 0] = 1  # all activity top-left
        >>> f_t = torch.zeros(1, 32, 2, 2); f_t[0, :, 1, 1] = 1  # all activity bottom-right
        >>> attention_transfer_loss(f_s, f_t)
        tensor(2.)
    """
    _check_features(f_s, f_t, maps=True)
    if f_s.shape[2:] != f_t.shape[2:]:
        raise ValueError(
            f"attention maps need the same height and width, got student "
            f"{tuple(f_s.shape[2:])} and teacher {tuple(f_t.shape[2:])}; pair layers at the "
            "same resolution"
        )
    per_sample = (attention_map(f_s, p) - attention_map(f_t, p)).pow(2).sum(dim=1)
    return _reduce(per_sample, reduction, ("mean", "sum", "none"))


def cosine_feature_loss(
    f_s: torch.Tensor,
    f_t: torch.Tensor,
    regressor: nn.Module | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Cosine feature loss: match the direction of the features, not their size.

    .. math::
        \ell_n = 1 - \cos\big(r(f^s_n), f^t_n\big)
               = 1 - \frac{\langle r(f^s_n), f^t_n \rangle}{\|r(f^s_n)\|_2 \, \|f^t_n\|_2}

    with each example's feature flattened to one vector. 0 for parallel features, 1 for
    orthogonal ones, 2 for opposite ones; scaling either feature changes nothing.

    Args:
        f_s: the student's feature (gradients flow through it).
        f_t: the teacher's feature (treated as a constant: pass it detached).
        regressor: the learned map :math:`r` to the teacher's shape (see
            :func:`kdlib.features.projector`); ``None`` when the shapes already match.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.

    Shape:
        f_s: ``(N, *)``; f_t: ``(N, *)`` equal to ``regressor(f_s).shape``; output: scalar,
        or ``(N,)`` with ``reduction="none"``.

    Example:
        >>> f = torch.tensor([[1.0, 2.0]])
        >>> cosine_feature_loss(f, -3 * f)
        tensor(2.)
    """
    _check_features(f_s, f_t)
    r = _regress(f_s, f_t, regressor)
    per_sample = 1 - F.cosine_similarity(r.flatten(1), f_t.flatten(1), dim=1)
    return _reduce(per_sample, reduction, ("mean", "sum", "none"))


class HintLoss(nn.Module):
    """Module form of :func:`hint_loss` that owns its regressor, so the regressor's
    parameters are found by ``loss.parameters()``: ``HintLoss(projector(...))(f_s, f_t)``."""

    def __init__(self, regressor: nn.Module | None = None, reduction: str = "mean"):
        super().__init__()
        self.regressor, self.reduction = regressor, reduction

    def forward(self, f_s, f_t):
        return hint_loss(f_s, f_t, self.regressor, self.reduction)


class AttentionTransferLoss(nn.Module):
    """Module form of :func:`attention_transfer_loss`: ``AttentionTransferLoss()(f_s, f_t)``."""

    def __init__(self, p: float = 2, reduction: str = "mean"):
        super().__init__()
        self.p, self.reduction = p, reduction

    def forward(self, f_s, f_t):
        return attention_transfer_loss(f_s, f_t, self.p, self.reduction)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class CosineFeatureLoss(nn.Module):
    """Module form of :func:`cosine_feature_loss` that owns its regressor."""

    def __init__(self, regressor: nn.Module | None = None, reduction: str = "mean"):
        super().__init__()
        self.regressor, self.reduction = regressor, reduction

    def forward(self, f_s, f_t):
        return cosine_feature_loss(f_s, f_t, self.regressor, self.reduction)
