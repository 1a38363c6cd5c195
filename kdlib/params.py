"""Parameter distillation: a smaller student built from its teacher's own weights, then trained
on the teacher's softened outputs until its parameters stop moving.

:func:`inherit` fills a narrower or shallower MLP from an MLP teacher; :func:`low_rank`
factorises the teacher's Linear layers by truncated SVD; :func:`distill_params` trains.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from . import validate as V
from .data import Dataset
from .distill import distill
from .metrics import accuracy, agreement, mean_kl
from .train import History, predict

__all__ = ["STRATEGIES", "inherit", "low_rank", "distill_params", "param_change", "layer_map"]

STRATEGIES: dict[str, str] = {
    "top-units": "keep the hidden units whose incoming × outgoing weight norms are largest",
    "every-other-layer": "copy every other layer of a deeper teacher, folding in the rest",
}


def _linears(model: nn.Module, who: str) -> list[tuple[str, nn.Linear]]:
    """The model's Linear layers in forward order; refuse anything else with weights."""
    layers = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            layers.append((name, m))
        elif any(True for _ in m.parameters(recurse=False)):
            raise TypeError(
                f"parameter distillation handles MLPs only, but the {who}'s layer {name!r} is "
                f"a {type(m).__name__}; build the {who} with kdlib.mlp"
            )
    if not layers:
        raise TypeError(f"the {who} has no nn.Linear layers: it is not an MLP")
    return layers


def layer_map(n_student: int, n_teacher: int) -> list[int]:
    """Which teacher layer each student layer copies: first and last kept, the rest spread
    evenly (5 teacher and 3 student layers give ``[0, 2, 4]``).
    """
    if not 1 <= n_student <= n_teacher:
        raise ValueError(
            f"every-other-layer needs a teacher at least as deep as the student, got "
            f"{n_student} student and {n_teacher} teacher Linear layers"
        )
    if n_student == 1:
        return [n_teacher - 1]
    return [round(i * (n_teacher - 1) / (n_student - 1)) for i in range(n_student)]


def _check_shapes(ls, lt, strategy: str) -> None:
    """Same input size and class count; for top-units also the same depth and no wider."""
    (s0, first_s), (t0, first_t) = ls[0], lt[0]
    if first_s.in_features != first_t.in_features:
        raise ValueError(
            f"student layer {s0!r} takes {first_s.in_features} inputs but teacher layer {t0!r} "
            f"takes {first_t.in_features}: no strategy can bridge different input sizes"
        )
    (s1, last_s), (t1, last_t) = ls[-1], lt[-1]
    if last_s.out_features != last_t.out_features:
        raise ValueError(
            f"student layer {s1!r} has {last_s.out_features} outputs but teacher layer {t1!r} "
            f"has {last_t.out_features}: no strategy can bridge different class counts"
        )
    if strategy != "top-units":
        return
    if len(ls) != len(lt):
        raise ValueError(
            f"'top-units' keeps the depth, but the student has {len(ls)} Linear layers "
            f"({', '.join(n for n, _ in ls)}) and the teacher {len(lt)}; use "
            "'every-other-layer' for a deeper teacher"
        )
    for (ns, s), (nt, t) in zip(ls[:-1], lt[:-1], strict=True):
        if s.out_features > t.out_features:
            raise ValueError(
                f"student layer {ns!r} has {s.out_features} units but teacher layer {nt!r} only "
                f"{t.out_features}: a student cannot inherit more units than the teacher has"
            )


def _affine(layer: nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
    b = layer.bias
    if b is None:
        b = torch.zeros(layer.out_features, device=layer.weight.device)
    return layer.weight, b


def _top_units(ls, lt) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, the student's (weight, bias) as sub-blocks of the teacher's."""
    keep_in = torch.arange(lt[0][1].in_features)
    blocks = []
    for i, ((_, s), (_, t)) in enumerate(zip(ls, lt, strict=True)):
        W, b = _affine(t)
        if i < len(ls) - 1:
            # A unit matters by how strongly it listens (incoming row) times how loudly it
            # speaks (outgoing column); either norm alone keeps units the other side ignores.
            score = W[:, keep_in].norm(dim=1) * lt[i + 1][1].weight.norm(dim=0)
            keep_out = torch.topk(score, s.out_features).indices.sort().values
        else:
            keep_out = torch.arange(t.out_features)
        blocks.append((W[keep_out][:, keep_in], b[keep_out]))
        keep_in = keep_out
    return blocks


def _every_other_layer(ls, lt, fold: bool) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per student layer, the picked teacher layer, with the skipped ones folded in."""
    blocks, prev = [], -1
    for (ns, s), j in zip(ls, layer_map(len(ls), len(lt)), strict=True):
        chain = lt[prev + 1 : j + 1] if fold else [lt[j]]
        W, b = _affine(chain[0][1])
        for _, t in chain[1:]:  # fold: treat the skipped layer's ReLU as the identity
            W_t, b_t = _affine(t)
            W, b = W_t @ W, W_t @ b + b_t
        if s.weight.shape != W.shape:
            first, last = chain[0][0], chain[-1][0]
            what = f"layer {last!r}" if len(chain) == 1 else f"layers {first!r}…{last!r}"
            raise ValueError(
                f"every-other-layer puts teacher {what} ({W.shape[1]}→{W.shape[0]}) into "
                f"student layer {ns!r} ({s.in_features}→{s.out_features}): the student's "
                "widths must equal the picked teacher layers' ('top-units' keeps the depth)"
            )
        blocks.append((W, b))
        prev = j
    return blocks


def inherit(
    student: nn.Module, teacher: nn.Module, strategy: str = "top-units", *, fold: bool = True
) -> nn.Module:
    """Overwrite ``student``'s weights with ones built from ``teacher``'s (teacher untouched).

    * ``"top-units"``: same depth, narrower; each hidden layer keeps the teacher units with the
      largest ``‖incoming‖ · ‖outgoing‖`` and the matching weight sub-blocks.
    * ``"every-other-layer"``: a deeper teacher; student layer ``i`` takes teacher layer
      :func:`layer_map` ``[i]``, as DistilBERT did. With ``fold=True`` each dropped layer is
      folded into the next kept one as if its ReLU were the identity:
      :math:`W' = W_{keep} W_{drop}`, :math:`b' = W_{keep} b_{drop} + b_{keep}`.

    Raises:
        TypeError: a model that is not an MLP. ValueError: an unknown strategy or shapes no
        strategy bridges (the message names the layers); the student is then left as it was.

    Example:
        >>> student = inherit(kdlib.model("hinton-student"), teacher, "top-units")
    """
    V.pair(student, teacher)
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; use one of {', '.join(STRATEGIES)}")
    ls, lt = _linears(student, "student"), _linears(teacher, "teacher")
    _check_shapes(ls, lt, strategy)
    with torch.no_grad():
        if strategy == "every-other-layer":
            blocks = _every_other_layer(ls, lt, fold)
        else:
            blocks = _top_units(ls, lt)
        for (_, s), (W, b) in zip(ls, blocks, strict=True):
            s.weight.copy_(W)
            if s.bias is not None:
                s.bias.copy_(b)
    return student


def _saves(layer: nn.Linear, rank: int) -> bool:
    return rank * (layer.in_features + layer.out_features) < layer.in_features * layer.out_features


def low_rank(teacher: nn.Module, rank: int, layers: Sequence[str] | None = None) -> nn.Module:
    r"""A copy of ``teacher`` whose Linear layers are factorised by truncated SVD.

    Each :math:`W = U S V^\top` (``out × in``) becomes ``down`` (:math:`S_r^{1/2} V_r^\top`,
    ``in → r``, no bias) then ``up`` (:math:`U_r S_r^{1/2}`, ``r → out``, the bias): the closest
    rank-``r`` matrix (Eckart–Young), with ``r·(in + out)`` weights instead of ``in·out``.

    Args:
        teacher: the trained model (read only).
        rank: bottleneck width ``r`` (a positive int that makes every chosen layer smaller).
        layers: Linear layers to factorise (default: every one that ``rank`` makes smaller).

    Example:
        >>> kdlib.count_params(low_rank(teacher, 256)) < kdlib.count_params(teacher)
        True
    """
    V.integer("rank", rank)
    found = dict(teacher.named_modules())
    if layers is None:
        layers = [n for n, m in found.items() if isinstance(m, nn.Linear) and _saves(m, rank)]
        if not layers:
            raise ValueError(f"rank={rank} makes none of the teacher's Linear layers smaller")
    for name in layers:
        layer = found.get(name)
        if layer is None or name == "":
            raise ValueError(f"the teacher has no layer named {name!r}")
        if not isinstance(layer, nn.Linear):
            raise ValueError(f"low_rank factorises nn.Linear layers; {name!r} is {type(layer)}")
        if not _saves(layer, rank):
            raise ValueError(
                f"rank={rank} would not make layer {name!r} ({layer.in_features}→"
                f"{layer.out_features}) smaller: it needs r·(in + out) < in·out"
            )
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        for name in layers:
            layer = student.get_submodule(name)
            U, S, Vh = torch.linalg.svd(layer.weight, full_matrices=False)
            root = S[:rank].sqrt()
            down = nn.Linear(layer.in_features, rank, bias=False)
            up = nn.Linear(rank, layer.out_features, bias=layer.bias is not None)
            down.weight.copy_(root[:, None] * Vh[:rank])  # (r, in)
            up.weight.copy_(U[:, :rank] * root)  # (out, r)
            if layer.bias is not None:
                up.bias.copy_(layer.bias)
            factored = nn.Sequential(OrderedDict(down=down, up=up)).to(layer.weight.device)
            parent, _, child = name.rpartition(".")
            setattr(student.get_submodule(parent) if parent else student, child, factored)
    for p in student.parameters():
        p.requires_grad_(True)
    return student.train(teacher.training)


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def param_change(before: torch.Tensor, model: nn.Module) -> float:
    """Relative change ``‖θ − θ_before‖ / ‖θ_before‖`` of a model's flattened parameters."""
    now = _flat(model)
    before = before.to(now.device)
    return float((now - before).norm() / before.norm().clamp_min(1e-12))


def distill_params(
    student: nn.Module,
    teacher: nn.Module,
    data: Dataset,
    strategy: str | None = "top-units",
    epochs: int = 20,
    lr: float = 1e-2,
    *,
    T: float = 4.0,
    tol: float = 2e-3,
    **distill_kwargs,
) -> History:
    r"""Inherit the teacher's weights, then train on :math:`T^2 KL(p_t(T) \| p_s(T))` until still.

    After every epoch the relative change :math:`\|\theta_e - \theta_{e-1}\| / \|\theta_{e-1}\|`
    is logged as ``param_change``; below ``tol`` training stops (``stop_reason`` starts with
    ``"converged"``). SGD is the default: its steps shrink with the gradient, Adam's do not. The
    change also scales with ``lr`` and steps per epoch, so choose ``tol`` with both.

    Args:
        student: an MLP (modified in place).
        teacher: the trained MLP (never modified).
        data: the data set.
        strategy: a key of :data:`STRATEGIES`, or ``None`` if the student is already initialised.
        epochs: the most epochs.
        lr: learning rate.
        T: temperature (> 0).
        tol: stop when the relative parameter change over an epoch is below this (> 0).
        **distill_kwargs: passed on to :func:`kdlib.distill.distill` (``optimizer`` defaults to
            ``"sgd"``; ``callbacks``, ``seed``, ``progress``, ...).

    Returns:
        The history; ``info`` adds ``strategy``, ``tol`` and the student's ``init_acc``,
        ``init_agreement`` and ``init_kl`` before training.

    Example:
        >>> hist = distill_params(kdlib.model("hinton-student"), teacher, data, "top-units")
        >>> hist.stop_reason.startswith("converged")
        True
    """
    V.number("tol", tol, 0, open_low=True)
    V.number("temperature T", T, 0, open_low=True)
    if strategy is not None:
        inherit(student, teacher, strategy)  # checks the pair too
    else:
        V.pair(student, teacher)
    history = History(info={"strategy": strategy, "tol": tol})
    z_t = predict(teacher, data.X_test)
    z_s = predict(student, data.X_test.to(z_t.device))
    history.info["init_acc"] = accuracy(z_s, data.y_test)
    history.info.update(init_agreement=agreement(z_s, z_t), init_kl=mean_kl(z_s, z_t))
    before = _flat(student)

    def stop_when_still(model: nn.Module, hist: History) -> str | None:
        nonlocal before
        change = param_change(before, model)
        hist.rows[-1]["param_change"] = change
        before = _flat(model)
        return f"converged: parameter change {change:.1e} < tol {tol:g}" if change < tol else None

    callbacks = [stop_when_still, *distill_kwargs.pop("callbacks", ())]
    distill_kwargs = {"optimizer": "sgd", "desc": f"params:{strategy}", **distill_kwargs}
    distill(student, teacher, data, "soft", epochs, lr, T=T, callbacks=callbacks,
            history=history, **distill_kwargs)  # fmt: skip
    return history
