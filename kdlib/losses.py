"""Every distillation loss of the course, as a function; a module only where it holds state.

Logit losses (Ba & Caruana 2014; Hinton et al. 2015) take ``student_logits, teacher_logits``
(then labels); feature losses (FitNets hints, attention transfer, cosine) take ``f_s, f_t``.
Each checks its inputs and names the problem (bad ``T`` or ``alpha``, shapes, NaN/inf, labels).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import validate as V

__all__ = [
    "soften", "mse_logits", "soft_target_kl", "soft_target_ce", "kd_loss", "mse_kd_loss",
    "hint_loss", "attention_map", "attention_transfer_loss", "cosine_feature_loss", "HintLoss",
    "CosineFeatureLoss"
]  # fmt: skip

# the reductions each loss allows
_MEAN, _BATCHMEAN = ("mean", "sum", "none"), ("batchmean", "sum", "none")


def _check_logits(z_s: Tensor, z_t: Tensor | None) -> None:
    for name, z in (("student_logits", z_s), ("teacher_logits", z_t)):
        if z is None:
            continue
        V.tensor(name, z, floating=True)
        if z.ndim != 2:
            raise ValueError(f"{name} must have shape (N, C), got {tuple(z.shape)}")
        if len(z) == 0:
            raise ValueError(f"{name} is an empty batch {tuple(z.shape)}: the mean is undefined")
        finite = torch.isfinite(z)
        if not bool(finite.all()):
            rows = torch.nonzero(~finite.all(dim=1)).flatten().tolist()
            raise ValueError(
                f"{name} contains NaN or inf in {len(rows)} row(s), at batch index "
                f"{rows[:5] + (['...'] if len(rows) > 5 else [])}; check the inputs and lr"
            )
    if z_t is not None and z_s.shape != z_t.shape:
        what = "class counts" if z_s.shape[1] != z_t.shape[1] else "batch sizes"
        raise ValueError(
            f"student and teacher logits differ in shape ({what}): student {tuple(z_s.shape)} "
            f"vs teacher {tuple(z_t.shape)}"
        )


def _check_labels(y: Tensor, student_logits: Tensor) -> None:
    if not isinstance(y, Tensor) or y.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"labels y must be an integer tensor of class indices, got {y!r:.60}")
    n, c = student_logits.shape
    if y.shape != (n,):
        raise ValueError(f"labels y must have shape ({n},), got {tuple(y.shape)}")
    if n and (int(y.min()) < 0 or int(y.max()) >= c):
        raise ValueError(
            f"labels out of range: found values in [{int(y.min())}, {int(y.max())}], but with "
            f"{c} classes labels must be in [0, {c - 1}]"
        )


def _reduce(per_sample: Tensor, reduction: str, allowed: tuple[str, ...]) -> Tensor:
    if reduction not in allowed:
        hint = ""
        if reduction == "mean" and "batchmean" in allowed:
            hint = "; 'mean' would also average over classes (kl_div's pitfall): use 'batchmean'"
        raise ValueError(f"reduction must be one of {allowed}, got {reduction!r}{hint}")
    if reduction == "none":
        return per_sample
    return per_sample.sum() if reduction == "sum" else per_sample.mean()


def _T(T) -> float:
    return V.number("temperature T", T, 0, open_low=True)


# ---- Logit losses: MSE logit matching, soft targets with temperature, combined hard + soft
def soften(logits: Tensor, T: float = 1.0) -> Tensor:
    r"""Softened class probabilities :math:`p(T) = \mathrm{softmax}(z / T)` along the last dim.

    Shape:
        logits: ``(..., C)``; output: the same shape, each row summing to 1.

    Example:
        >>> soften(torch.tensor([2.0, 1.0, 0.0]), T=2.0)
        tensor([0.5065, 0.3072, 0.1863])
    """
    _T(T)
    V.tensor("logits", logits, floating=True)
    return torch.softmax(logits / T, dim=-1)


def mse_logits(student_logits: Tensor, teacher_logits: Tensor, reduction: str = "mean") -> Tensor:
    r"""MSE logit matching (Ba & Caruana 2014): regress the student's logits on the teacher's.

    .. math::
        \ell_n = \frac{1}{C} \sum_{c=1}^{C} (z^s_{n,c} - z^t_{n,c})^2

    On logits, not probabilities: a constant offset gives the same softmax but a nonzero loss.

    Args:
        student_logits, teacher_logits: raw outputs (pass the teacher's detached).
        reduction: ``"mean"`` (default, equal to ``F.mse_loss``), ``"sum"`` or ``"none"``.

    Shape:
        student_logits, teacher_logits: ``(N, C)`` floating point; output: scalar, or ``(N,)``
        with ``"none"``.

    Example:
        >>> mse_logits(torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 0.0]]))
        tensor(2.5000)
    """
    _check_logits(student_logits, teacher_logits)
    per_sample = (student_logits - teacher_logits).pow(2).mean(dim=1)
    return _reduce(per_sample, reduction, _MEAN)


def soft_target_kl(
    student_logits: Tensor, teacher_logits: Tensor, T: float = 4.0, reduction: str = "batchmean"
) -> Tensor:
    r"""Soft-target loss (Hinton et al. 2015): :math:`T^2 \cdot KL(p_t(T) \,\|\, p_s(T))`.

    .. math::
        \ell_n = T^2 \sum_{c} p^t_{n,c}(T) \left(\log p^t_{n,c}(T) - \log p^s_{n,c}(T)\right)

    from ``log_softmax``, so finite for logits of any size. :math:`T^2` cancels the
    :math:`1/T^2` that softening puts into the gradient.

    Args:
        student_logits, teacher_logits: raw outputs (pass the teacher's detached).
        T: temperature > 0.
        reduction: ``"batchmean"`` (default, ``F.kl_div(..., log_target=True) * T**2``),
            ``"sum"`` or ``"none"``; ``"mean"`` is refused (``kl_div`` also divides it by C).

    Shape:
        student_logits, teacher_logits: ``(N, C)`` floating point, ``N > 0``; output: scalar,
        or ``(N,)`` with ``"none"``.

    Example:
        >>> s, t = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 2.0]])
        >>> round(float(soft_target_kl(s, t, T=1.0)), 4)
        1.5232
    """
    _T(T)
    _check_logits(student_logits, teacher_logits)
    log_p_s = F.log_softmax(student_logits / T, dim=1)
    log_p_t = F.log_softmax(teacher_logits / T, dim=1)
    # exp(log p_t) is exactly 0 where p_t underflows, so 0 · (finite) keeps rows finite.
    per_sample = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1) * T**2
    return _reduce(per_sample, reduction, _BATCHMEAN)


def soft_target_ce(
    student_logits: Tensor, teacher_logits: Tensor, T: float = 4.0, reduction: str = "batchmean"
) -> Tensor:
    r"""Soft-target cross-entropy :math:`-T^2 \sum_c p^t_c(T) \log p^s_c(T)`.

    :func:`soft_target_kl` plus the teacher's entropy :math:`T^2 H(p^t)`: the same gradient,
    but only the KL form reads 0 at a perfect match.

    Args:
        student_logits, teacher_logits, T, reduction: as in :func:`soft_target_kl`.

    Shape:
        as in :func:`soft_target_kl`.

    Example:
        >>> s, t = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 2.0]])
        >>> round(float(soft_target_ce(s, t, T=1.0)), 4)  # KL 1.5232 + entropy 0.3653
        1.8885
    """
    _T(T)
    _check_logits(student_logits, teacher_logits)
    log_p_s = F.log_softmax(student_logits / T, dim=1)
    p_t = F.softmax(teacher_logits / T, dim=1)
    per_sample = -(p_t * log_p_s).sum(dim=1) * T**2
    return _reduce(per_sample, reduction, _BATCHMEAN)


def kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    y: Tensor,
    T: float = 4.0,
    alpha: float = 0.9,
    reduction: str = "mean",
    soft: str = "kl",
) -> Tensor:
    r"""Hinton et al.'s combined loss :math:`\alpha\,\text{soft} + (1-\alpha)\,CE(z_s, y)`.

    .. math::
        \ell_n = \alpha \, T^2 \, KL(p^t_n(T) \,\|\, p^s_n(T))
               + (1 - \alpha) \left(-\log \mathrm{softmax}(z^s_n)_{y_n}\right)

    Args:
        student_logits, teacher_logits: raw outputs (the teacher's treated as constants).
        y: the true class indices.
        T: temperature > 0 of the soft part.
        alpha: weight of the soft part, in [0, 1].
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.
        soft: ``"kl"`` (default) or ``"ce"`` (:func:`soft_target_ce`).

    Shape:
        logits ``(N, C)``; y ``(N,)`` integers in ``[0, C)``; output scalar or ``(N,)``.

    Example:
        >>> s, t, y = torch.zeros(4, 10), torch.randn(4, 10), torch.tensor([0, 1, 2, 3])
        >>> kd_loss(s, t, y, T=4.0, alpha=0.0)  # only the label part: log(10)
        tensor(2.3026)
    """
    V.number("alpha", alpha, 0, 1)
    _check_labels(y, student_logits)
    if soft not in ("kl", "ce"):
        raise ValueError(f"soft must be 'kl' or 'ce', got {soft!r}")
    soft_fn = soft_target_kl if soft == "kl" else soft_target_ce
    per_sample = alpha * soft_fn(student_logits, teacher_logits, T, reduction="none")
    per_sample = per_sample + (1 - alpha) * F.cross_entropy(student_logits, y, reduction="none")
    return _reduce(per_sample, reduction, _MEAN)


def mse_kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    y: Tensor,
    lam: float = 1.0,
    reduction: str = "mean",
) -> Tensor:
    r"""Labels plus logit matching: :math:`CE(z_s, y) + \lambda \cdot` :func:`mse_logits`.

    Args:
        student_logits, teacher_logits, y, reduction: as in :func:`kd_loss`.
        lam: weight :math:`\lambda \ge 0` of the matching term.

    Shape:
        as in :func:`kd_loss`.

    Example:
        >>> s, y = torch.zeros(2, 10), torch.tensor([3, 7])
        >>> mse_kd_loss(s, s + 1.0, y, lam=0.5)  # log(10) + 0.5 · 1
        tensor(2.8026)
    """
    V.number("lam", lam, 0)
    _check_labels(y, student_logits)
    per_sample = lam * mse_logits(student_logits, teacher_logits, reduction="none")
    per_sample = per_sample + F.cross_entropy(student_logits, y, reduction="none")
    return _reduce(per_sample, reduction, _MEAN)


# ---- Feature losses: FitNets hints, attention transfer, cosine
def _check_feature(name: str, f, maps: bool = False) -> None:
    V.tensor(name, f, floating=True)
    if maps and f.ndim != 4:
        raise ValueError(
            f"attention transfer needs feature maps (N, C, H, W), but {name} has shape "
            f"{tuple(f.shape)}; pair conv layers, or use the hint or cosine loss for vectors"
        )
    if f.ndim < 2 or len(f) == 0:
        raise ValueError(f"{name} must be a non-empty batch (N, ...), got {tuple(f.shape)}")
    if not bool(torch.isfinite(f).all()):
        raise ValueError(f"{name} contains NaN or inf; check the model's inputs and lr")


def _check_features(f_s, f_t, maps: bool = False) -> None:
    _check_feature("f_s", f_s, maps)
    _check_feature("f_t", f_t, maps)
    if len(f_s) != len(f_t):
        raise ValueError(f"f_s and f_t have different batch sizes: {len(f_s)} vs {len(f_t)}")


def _regress(f_s: Tensor, f_t: Tensor, regressor) -> Tensor:
    r = regressor(f_s) if regressor is not None else f_s
    if r.shape != f_t.shape:
        raise ValueError(
            f"student features (after any regressor) have shape {tuple(r.shape)} but the "
            f"teacher's {tuple(f_t.shape)}; use regressor=kdlib.projector(f_s.shape, f_t.shape)"
        )
    return r


def hint_loss(
    f_s: Tensor, f_t: Tensor, regressor: nn.Module | None = None, reduction: str = "mean"
) -> Tensor:
    r"""FitNets hint loss (Romero et al. 2015): MSE of the regressed student feature.

    .. math::
        \ell_n = \frac{1}{D} \sum_{d=1}^{D} \left(r(f^s_n)_d - f^t_{n,d}\right)^2

    over the :math:`D` values of one example's feature: the paper's
    :math:`\tfrac12 \|u_t - r(v_s)\|^2` divided by :math:`D/2`, a constant the weight absorbs.

    Args:
        f_s, f_t: student and teacher features (pass the teacher's detached).
        regressor: the learned map :math:`r` (see :func:`kdlib.features.projector`), or ``None``.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.

    Shape:
        f_s: ``(N, *)``; f_t: ``(N, *)``, ``regressor(f_s)``'s shape; output scalar or ``(N,)``.

    Example:
        >>> hint_loss(torch.ones(2, 3), torch.zeros(2, 3))
        tensor(1.)
    """
    _check_features(f_s, f_t)
    r = _regress(f_s, f_t, regressor)
    per_sample = (r - f_t).pow(2).flatten(1).mean(dim=1)
    return _reduce(per_sample, reduction, _MEAN)


def attention_map(f: Tensor, p: float = 2) -> Tensor:
    r"""Spatial attention map (Zagoruyko & Komodakis 2017): where a layer's activations are.

    .. math::
        a(F) = v / \|v\|_2, \qquad v = \mathrm{vec}\big(\tfrac{1}{C}\textstyle\sum_c |F_c|^p\big)

    Shape:
        f: ``(N, C, H, W)``; output ``(N, H·W)``, rows of unit norm (or zero).

    Example:
        >>> attention_map(torch.ones(1, 3, 2, 2))
        tensor([[0.5000, 0.5000, 0.5000, 0.5000]])
    """
    _check_feature("f", f, maps=True)
    v = f.abs().pow(p).mean(dim=1).flatten(1)  # (N, H*W)
    return F.normalize(v, dim=1)


def attention_transfer_loss(
    f_s: Tensor, f_t: Tensor, p: float = 2, reduction: str = "mean"
) -> Tensor:
    r"""Attention transfer (Zagoruyko & Komodakis 2017): :math:`\|a(f^s_n) - a(f^t_n)\|_2^2`.

    Channel counts may differ (the map averages them away); height and width must agree.

    Args:
        f_s, f_t: student and teacher feature maps.
        p: the power of :func:`attention_map`.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.

    Shape:
        f_s: ``(N, C_s, H, W)``; f_t: ``(N, C_t, H, W)``; output scalar or ``(N,)``.

    Example:
        >>> f_s = torch.zeros(1, 8, 2, 2); f_s[0, :, 0, 0] = 1  # all activity top-left
        >>> f_t = torch.zeros(1, 32, 2, 2); f_t[0, :, 1, 1] = 1  # all activity bottom-right
        >>> attention_transfer_loss(f_s, f_t)
        tensor(2.)
    """
    _check_features(f_s, f_t, maps=True)
    if f_s.shape[2:] != f_t.shape[2:]:
        raise ValueError(
            f"attention maps need the same height and width, got student {tuple(f_s.shape[2:])}"
            f" and teacher {tuple(f_t.shape[2:])}; pair layers at the same resolution"
        )
    per_sample = (attention_map(f_s, p) - attention_map(f_t, p)).pow(2).sum(dim=1)
    return _reduce(per_sample, reduction, _MEAN)


def cosine_feature_loss(
    f_s: Tensor, f_t: Tensor, regressor: nn.Module | None = None, reduction: str = "mean"
) -> Tensor:
    r"""Cosine feature loss :math:`\ell_n = 1 - \cos(r(f^s_n), f^t_n)`, each feature flattened.

    0 for parallel features, 2 for opposite ones; scaling a feature changes nothing.

    Args:
        f_s, f_t, regressor, reduction: as in :func:`hint_loss`.

    Shape:
        as in :func:`hint_loss`.

    Example:
        >>> f = torch.tensor([[1.0, 2.0]])
        >>> cosine_feature_loss(f, -3 * f)
        tensor(2.)
    """
    _check_features(f_s, f_t)
    r = _regress(f_s, f_t, regressor)
    per_sample = 1 - F.cosine_similarity(r.flatten(1), f_t.flatten(1), dim=1)
    return _reduce(per_sample, reduction, _MEAN)


class HintLoss(nn.Module):
    """:func:`hint_loss` as a module that owns its regressor (``loss.parameters()`` finds it)."""

    def __init__(self, regressor: nn.Module | None = None, reduction: str = "mean"):
        super().__init__()
        self.regressor, self.reduction = regressor, reduction

    def forward(self, f_s, f_t):
        return hint_loss(f_s, f_t, self.regressor, self.reduction)


class CosineFeatureLoss(nn.Module):
    """:func:`cosine_feature_loss` as a module that owns its regressor."""

    def __init__(self, regressor: nn.Module | None = None, reduction: str = "mean"):
        super().__init__()
        self.regressor, self.reduction = regressor, reduction

    def forward(self, f_s, f_t):
        return cosine_feature_loss(f_s, f_t, self.regressor, self.reduction)
