"""Parameter distillation: start a smaller student from its teacher's own weights, then train it
on the teacher's softened outputs until its parameters stop moving.

:func:`inherit` builds a narrower or shallower student's initial weights from an MLP
teacher's, by one of :data:`STRATEGIES`: ``"top-units"`` keeps the hidden units with the
largest weights, and ``"every-other-layer"`` copies a subset of a deeper teacher's layers (as
DistilBERT did). :func:`low_rank` builds the student from the teacher itself: each weight
matrix is factorised by its truncated SVD, ``W ≈ (U_r S_r^½)(S_r^½ V_rᵀ)``, two thinner
layers with a linear bottleneck of ``r`` units between them.
:func:`distill_params` then trains the student with ``T²·KL(p_teacher(T) ‖ p_student(T))``
through :func:`kdlib.distill.distill` and stops when the relative change of the parameters over
an epoch falls below a tolerance, or at ``epochs``; the history says which stop happened.
Only MLPs (chains of ``nn.Linear`` with element-wise activations) can be inherited from.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch
from torch import nn

from .data import Dataset
from .distill import _check_pair, distill
from .metrics import agreement, mean_kl
from .train import History, evaluate, predict

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


def _shape(layer: nn.Linear) -> str:
    return f"{layer.in_features}→{layer.out_features}"


def layer_map(n_student: int, n_teacher: int) -> list[int]:
    """Which teacher layer each student layer copies in ``"every-other-layer"``.

    The first and the last layers are always kept and the rest are spread evenly, so a
    teacher with 5 Linear layers and a student with 3 give ``[0, 2, 4]``: every other layer.
    """
    if not 1 <= n_student <= n_teacher:
        raise ValueError(
            f"every-other-layer needs a teacher at least as deep as the student, got "
            f"{n_student} student and {n_teacher} teacher Linear layers"
        )
    if n_student == 1:
        return [n_teacher - 1]
    return [round(i * (n_teacher - 1) / (n_student - 1)) for i in range(n_student)]


def _check_ends(ls, lt) -> None:
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


def _check_same_depth_and_narrower(ls, lt, strategy: str) -> None:
    if len(ls) != len(lt):
        raise ValueError(
            f"{strategy!r} keeps the depth, but the student has {len(ls)} Linear layers "
            f"({', '.join(n for n, _ in ls)}) and the teacher {len(lt)} "
            f"({', '.join(n for n, _ in lt)}); use 'every-other-layer' for a deeper teacher"
        )
    for (ns, s), (nt, t) in zip(ls[:-1], lt[:-1], strict=True):
        if s.out_features > t.out_features:
            raise ValueError(
                f"student layer {ns!r} has {s.out_features} units but teacher layer {nt!r} only "
                f"{t.out_features}: a student cannot inherit more units than the teacher has"
            )


def _top_units(ls, lt) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, the student's (weight, bias) as sub-blocks of the teacher's."""
    keep_in = torch.arange(lt[0][1].in_features)
    blocks = []
    for i, ((_, s), (_, t)) in enumerate(zip(ls, lt, strict=True)):
        W, b = t.weight, t.bias
        if i < len(ls) - 1:
            # A unit matters by how strongly it listens (incoming row) times how loudly it
            # speaks (outgoing column); either norm alone would keep units the other side
            # ignores.
            w_in = W[:, keep_in].norm(dim=1)
            w_out = lt[i + 1][1].weight.norm(dim=0)
            keep_out = torch.topk(w_in * w_out, s.out_features).indices.sort().values
        else:
            keep_out = torch.arange(t.out_features)
        blocks.append((W[keep_out][:, keep_in], None if b is None else b[keep_out]))
        keep_in = keep_out
    return blocks


def _affine(layer: nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
    b = layer.bias
    if b is None:
        b = torch.zeros(layer.out_features, device=layer.weight.device)
    return layer.weight, b


def _every_other_layer(ls, lt, fold: bool) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per student layer, the picked teacher layer, with the skipped ones folded in."""
    picks = layer_map(len(ls), len(lt))
    blocks, prev = [], -1
    for (ns, s), j in zip(ls, picks, strict=True):
        chain = lt[prev + 1 : j + 1] if fold else [lt[j]]
        W, b = _affine(chain[0][1])
        for _, t in chain[1:]:  # fold: treat the skipped layer's ReLU as the identity
            W_t, b_t = _affine(t)
            W, b = W_t @ W, W_t @ b + b_t
        if s.weight.shape != W.shape:
            first, last = chain[0][0], chain[-1][0]
            what = (
                f"teacher layer {last!r}"
                if len(chain) == 1
                else f"teacher layers {first!r}…{last!r}"
            )
            raise ValueError(
                f"every-other-layer puts {what} ({W.shape[1]}→{W.shape[0]}) into student "
                f"layer {ns!r} ({_shape(s)}), but their shapes differ; the student's widths "
                "must equal the picked teacher layers' (or use 'top-units' for a narrower "
                "student of the same depth)"
            )
        blocks.append((W, b))
        prev = j
    return blocks


def inherit(
    student: nn.Module, teacher: nn.Module, strategy: str = "top-units", *, fold: bool = True
) -> nn.Module:
    """Overwrite ``student``'s weights with ones built from ``teacher``'s (teacher untouched).

    Both must be MLPs (``kdlib.mlp``): the same input size and number of classes.

    * ``"top-units"``: same depth, each hidden layer at most as wide as the teacher's. For
      every hidden layer the student keeps the ``k`` teacher units with the largest
      ``‖incoming weights‖ · ‖outgoing weights‖`` and copies the matching sub-blocks of the
      weight matrices on both sides (and the biases).
    * ``"every-other-layer"``: the teacher is deeper. Student layer ``i`` takes teacher layer
      :func:`layer_map` ``[i]`` (the first and last are kept, the rest spread evenly: every
      other layer for 2L+1 vs L+1 Linear layers), as DistilBERT did for transformers. There,
      residual connections carry the signal past a dropped layer; a plain MLP has none, and
      copying alone starts the student no closer to the teacher than random weights. So by
      default (``fold=True``) each dropped layer is folded into the next kept one, as if the
      ReLU between them were the identity: ``W' = W_keep W_drop``,
      ``b' = W_keep b_drop + b_keep``. ``fold=False`` copies the picked layers only.

    Args:
        student: the MLP to initialise (modified in place).
        teacher: the trained MLP to inherit from (read only).
        strategy: a key of :data:`STRATEGIES`.
        fold: for ``"every-other-layer"``, fold dropped layers into the kept ones (default).

    Returns:
        ``student``, for chaining.

    Raises:
        TypeError: a model that is not an MLP.
        ValueError: an unknown strategy, or shapes no strategy can bridge (different input
            sizes or class counts, a student deeper or wider than the teacher, layers of
            different shapes for ``"every-other-layer"``); the message names the layers.

    Example:
        >>> teacher = kdlib.course.trained_teacher(data, preset="hinton-teacher")
        >>> student = inherit(kdlib.model("hinton-student"), teacher, "top-units")
        >>> kdlib.agreement(student, teacher, data.X_test) > 0.9
        True
    """
    _check_pair(student, teacher)
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; use one of {', '.join(STRATEGIES)}")
    ls, lt = _linears(student, "student"), _linears(teacher, "teacher")
    _check_ends(ls, lt)
    with torch.no_grad():
        if strategy == "every-other-layer":
            blocks = _every_other_layer(ls, lt, fold)
        else:
            _check_same_depth_and_narrower(ls, lt, strategy)
            blocks = _top_units(ls, lt)
        for (_, s), (W, b) in zip(ls, blocks, strict=True):
            s.weight.copy_(W)
            if s.bias is not None:
                if b is None:
                    s.bias.zero_()
                else:
                    s.bias.copy_(b)
    return student


def low_rank(teacher: nn.Module, rank: int, layers: Sequence[str] | None = None) -> nn.Module:
    r"""A copy of ``teacher`` whose ``nn.Linear`` layers are factorised by truncated SVD.

    Layer ``W`` (``out × in``) with its SVD ``W = U S Vᵀ`` becomes two layers with a linear
    bottleneck of ``rank`` units, ``W ≈ (U_r S_r^{1/2})(S_r^{1/2} V_rᵀ)``: ``down`` (``in → r``,
    no bias) then ``up`` (``r → out``, the original bias). By the Eckart–Young theorem this is
    the closest rank-``r`` matrix to ``W`` (in Frobenius and spectral norm), and it has
    ``r·(in + out)`` weights instead of ``in·out``: fewer whenever ``r < in·out / (in + out)``.
    Splitting ``S`` evenly gives both factors the same scale, which trains better than putting
    it all on one side. There is no activation in the bottleneck, so the student computes
    exactly what the rank-``r`` teacher computes; at full rank, what the teacher computes.

    Args:
        teacher: the trained model (read only); any model whose chosen layers are Linear.
        rank: bottleneck width ``r`` (a positive int, below ``min(in, out)`` of every factorised
            layer, and small enough to save weights).
        layers: names of the Linear layers to factorise (default: every Linear layer that
            ``rank`` makes smaller; the output layer usually is not).

    Returns:
        A new model; each factorised layer is an ``nn.Sequential`` of ``down`` and ``up``.

    Raises:
        ValueError: a bad ``rank``, a name that is no layer, a layer that is no ``nn.Linear``
            (named with its type), or a rank that would not make a chosen layer smaller.

    Example:
        >>> student = low_rank(teacher, 256)  # hinton-teacher: 2.4 M → 1.1 M parameters
        >>> kdlib.count_params(student) < kdlib.count_params(teacher)
        True
    """
    if isinstance(rank, bool) or not isinstance(rank, int) or rank <= 0:
        raise ValueError(f"rank must be a positive integer, got {rank!r}")
    found = dict(teacher.named_modules())
    if layers is None:
        layers = [
            n
            for n, m in found.items()
            if isinstance(m, nn.Linear)
            and rank * (m.in_features + m.out_features) < m.in_features * m.out_features
        ]
        if not layers:
            raise ValueError(f"rank={rank} makes none of the teacher's Linear layers smaller")
    for name in layers:
        layer = found.get(name)
        if layer is None or name == "":
            raise ValueError(f"the teacher has no layer named {name!r}")
        if not isinstance(layer, nn.Linear):
            raise ValueError(f"low_rank factorises nn.Linear layers; {name!r} is {type(layer)}")
        n_in, n_out = layer.in_features, layer.out_features
        if rank * (n_in + n_out) >= n_in * n_out:
            raise ValueError(
                f"rank={rank} would not make layer {name!r} ({n_in}→{n_out}) smaller: "
                f"r·(in + out) = {rank * (n_in + n_out):,} ≥ in·out = {n_in * n_out:,}"
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
    optimizer: str | torch.optim.Optimizer | Callable = "sgd",
    callbacks: Sequence[Callable] = (),
    seed: int | None = None,
    progress: bool | None = None,
    **distill_kwargs,
) -> History:
    r"""Inherit the teacher's weights, then train on :math:`T^2 KL(p_t(T) \| p_s(T))` until still.

    After every epoch the relative parameter change
    :math:`\|\theta_e - \theta_{e-1}\| / \|\theta_{e-1}\|` is logged as ``param_change``; when
    it falls below ``tol`` training stops with ``history.stop_reason`` starting with
    ``"converged"``, otherwise it ends at ``epochs`` with ``"max_epochs"``. Plain SGD (with
    momentum) is the default because its steps shrink with the gradient, so a small change
    means small gradients; Adam's normalised steps keep a near-constant size whatever the
    gradient. The rule is a rule of thumb, not a proof that the student has learned all it
    can: how much the parameters move in an epoch also scales with the learning rate and the
    number of steps per epoch, so ``tol`` must be chosen with both.

    Args:
        student: an MLP (modified in place).
        teacher: the trained MLP teacher (never modified).
        data: the data set.
        strategy: a key of :data:`STRATEGIES`, or ``None`` if the student already holds its
            initial weights.
        epochs: the most epochs to train (> 0).
        lr: learning rate.
        T: temperature of the KL (> 0).
        tol: stop when the relative parameter change over an epoch falls below this.
        optimizer, callbacks, seed, progress, **distill_kwargs: passed on to
            :func:`kdlib.distill.distill` (and :func:`kdlib.train.fit`).

    Returns:
        The history; ``info`` also holds ``strategy``, ``tol`` and the student's
        ``init_acc``, ``init_agreement`` and ``init_kl`` before any training.

    Example:
        >>> hist = distill_params(kdlib.model("hinton-student"), teacher, data, "top-units")
        >>> hist.stop_reason.startswith("converged"), hist.info["init_acc"] > 0.9
        (True, True)
    """
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol > 0:
        raise ValueError(f"tol must be a number > 0, got {tol!r}")
    if strategy is not None:
        inherit(student, teacher, strategy)
    else:
        _check_pair(student, teacher)
    history = History()
    z_t = predict(teacher, data.X_test)
    z_s = predict(student, data.X_test.to(z_t.device))
    history.info.update(
        strategy=strategy,
        tol=tol,
        init_acc=evaluate(student, data)["accuracy"],
        init_agreement=agreement(z_s, z_t),
        init_kl=mean_kl(z_s, z_t),
    )
    state = {"before": _flat(student)}

    def stop_when_still(model: nn.Module, hist: History) -> str | None:
        change = param_change(state["before"], model)
        hist.rows[-1]["param_change"] = change
        state["before"] = _flat(model)
        if change < tol:
            return f"converged: parameter change {change:.1e} < tol {tol:g}"
        return None

    distill(
        student,
        teacher,
        data,
        "soft",
        epochs,
        lr,
        T=T,
        optimizer=optimizer,
        callbacks=[stop_when_still, *callbacks],
        seed=seed,
        progress=progress,
        history=history,
        desc=f"params:{strategy}",
        **distill_kwargs,
    )
    return history
