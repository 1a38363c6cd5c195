"""Weight pruning: ``torch.nn.utils.prune`` masks that zero weights, and shrinking that drops them.

A masked layer keeps ``weight_orig`` (a parameter) and ``weight_mask`` (a buffer); a forward
pre-hook computes ``weight = weight_orig * weight_mask``, so masked weights stay zero in training.
Masking makes a model neither smaller nor faster: :func:`structured_prune` masks whole units and
:func:`shrink` removes them from ``Linear → Linear``, ``Conv → BatchNorm → Conv`` and ``Conv →
Flatten → Linear`` chains in ``nn.Sequential`` models. Arbitrary graphs (residual connections):
Torch-Pruning. Also here: iterative pruning (Han et al. 2015), Zhu & Gupta's cubic schedule and a
per-layer sensitivity scan.
"""

from __future__ import annotations

import copy
import numbers
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.utils.prune as torch_prune
from torch import nn

from . import validate as V
from .data import Dataset
from .train import History, evaluate, fit

__all__ = [
    "prunable_layers", "magnitude_prune", "prune_to_sparsity", "SparsityReport", "sparsity_report",
    "make_permanent", "save_pruned", "load_pruned", "unit_norms", "structured_prune", "shrink",
    "iterative_prune", "AGPSchedule", "agp_schedule", "Sensitivity", "sensitivity_scan",
    "copy_pruned"
]  # fmt: skip

_PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_TORCH_PRUNING = "for arbitrary graphs use Torch-Pruning (https://github.com/VainF/Torch-Pruning)"


def prunable_layers(model: nn.Module, layers: Iterable[str] | None = None) -> dict[str, nn.Module]:
    """The layers pruning acts on: every ``Linear``/``Conv`` by dotted name, or ``layers``.

    Example:
        >>> list(prunable_layers(kdlib.model("lenet-300-100")))
        ['fc1', 'fc2', 'fc3']
    """
    found = {n: m for n, m in model.named_modules() if isinstance(m, _PRUNABLE)}
    if not found:
        raise ValueError(f"{type(model).__name__} has no prunable layers (Linear or Conv)")
    if layers is None:
        return found
    layers = [layers] if isinstance(layers, str) else list(layers)
    if not layers:
        raise ValueError("layers is empty: name at least one layer, or pass None for all")
    unknown = [n for n in layers if n not in found]
    if unknown:
        raise ValueError(f"unknown layer name(s) {unknown}; prunable layers: {', '.join(found)}")
    return {n: found[n] for n in found if n in layers}


def _check_amount(amount, size: int, what: str, units: str = "weights") -> None:
    """Refuse an ``amount`` that is not a fraction in [0, 1] or a count in [0, size], or that
    would prune all ``size`` remaining entries (for ``units="units"`` also when ``size`` is 0)."""
    if isinstance(amount, bool) or not isinstance(amount, numbers.Real):
        raise TypeError(f"amount must be a float fraction or an int count, got {amount!r}")
    whole = isinstance(amount, numbers.Integral)
    if not 0 <= amount <= (size if whole else 1):
        kind = f"a count outside [0, {size}] for {what}" if whole else "a fraction outside [0, 1]"
        raise ValueError(f"amount={amount} is {kind}")
    k = int(amount) if whole else round(float(amount) * size)  # as torch counts
    if k >= size and (size > 0 or units == "units"):  # a layer with nothing left computes nothing
        raise ValueError(
            f"amount={amount} would prune all {size} remaining {units} of {what}, leaving "
            f"nothing to compute with; {'keep at least one' if units == 'units' else 'use less'}"
        )


def _mask(module: nn.Module) -> torch.Tensor:
    return module.weight_mask if hasattr(module, "weight_mask") else torch.ones_like(module.weight)


def _masked(modules: Iterable[nn.Module]) -> tuple[int, int]:
    """(masked, total) weights of ``modules``."""
    masks = [_mask(m) for m in modules]
    return sum(int((k == 0).sum()) for k in masks), sum(k.numel() for k in masks)


def _sparsity(modules: Iterable[nn.Module]) -> float:
    """Masked fraction of the weights of ``modules``."""
    masked, total = _masked(modules)
    return masked / total


def _alive(layer: nn.Module) -> torch.Tensor:
    """Which output units (rows) of ``layer`` keep an unmasked weight, ``(out,)`` bool."""
    return _mask(layer).flatten(1).any(1)


def _effective(module: nn.Module, name: str = "weight") -> torch.Tensor:
    """``name_orig * name_mask`` for a pruned tensor (computed afresh), else the tensor."""
    if hasattr(module, name + "_orig"):
        return getattr(module, name + "_orig") * getattr(module, name + "_mask")
    return getattr(module, name)


def magnitude_prune(
    model: nn.Module,
    amount: float | int | Mapping[str, float | int],
    scope: str = "layer",
    layers: Iterable[str] | None = None,
) -> nn.Module:
    r"""Mask the weights of smallest :math:`|w|` with ``torch.nn.utils.prune`` (in place).

    Args:
        model: the model (modified in place and returned).
        amount: fraction in [0, 1) or int count of the weights still unmasked (0.5 twice leaves
            25%); with ``scope="layer"`` also ``{layer: amount}`` (:meth:`Sensitivity.suggest`).
            An amount that would mask every weight is refused.
        scope: ``"layer"``: each layer on its own (``l1_unstructured``); ``"global"``: all chosen
            layers together (``global_unstructured``).
        layers: layer names (default: every Linear/Conv).

    Example:
        >>> net = magnitude_prune(kdlib.model("lenet-300-100"), 0.9, scope="global")
        >>> round(sparsity_report(net).sparsity, 2)
        0.9
    """
    if scope not in ("layer", "global"):
        raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")
    if isinstance(amount, Mapping) and (scope != "layer" or layers is not None):
        raise ValueError("a dict of per-layer amounts needs scope='layer' and layers=None")
    chosen = prunable_layers(model, list(amount) if isinstance(amount, Mapping) else layers)
    amounts = amount if isinstance(amount, Mapping) else dict.fromkeys(chosen, amount)
    if scope == "global":
        total = sum(int(_mask(m).sum()) for m in chosen.values())
        _check_amount(amount, total, "the chosen layers")
        modules = [(m, "weight") for m in chosen.values()]
        torch_prune.global_unstructured(modules, torch_prune.L1Unstructured, amount=amount)
        return model
    for name, m in chosen.items():  # check every layer first: a bad amount changes nothing
        _check_amount(amounts[name], int(_mask(m).sum()), f"layer {name!r}")
    for name, m in chosen.items():
        torch_prune.l1_unstructured(m, "weight", amount=amounts[name])
    return model


def prune_to_sparsity(
    model: nn.Module, sparsity: float, scope: str = "global", layers: Iterable[str] | None = None
) -> nn.Module:
    """Prune by magnitude until ``sparsity`` in [0, 1) of the chosen weights are masked.

    Existing masks count: 0.5, then 0.8, then 0.9 leaves exactly 90% masked. ``scope="global"``
    uses one threshold for all chosen layers, ``"layer"`` one per layer.
    """
    V.number("sparsity", sparsity, 0, 1, open_high=True)
    if scope not in ("layer", "global"):
        raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")
    chosen = list(prunable_layers(model, layers).values())
    for group in [chosen] if scope == "global" else [[m] for m in chosen]:
        masked, total = _masked(group)
        more = max(round(sparsity * total) - masked, 0)
        modules = [(m, "weight") for m in group]
        torch_prune.global_unstructured(modules, torch_prune.L1Unstructured, amount=more)
    return model


@dataclass
class SparsityReport:
    """Zeros per layer and in total, on the effective weights (biases not counted)."""

    layers: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (zeros, numel)

    @property
    def zeros(self) -> int:
        return sum(z for z, _ in self.layers.values())

    @property
    def numel(self) -> int:
        return sum(n for _, n in self.layers.values())

    @property
    def sparsity(self) -> float:
        """Fraction of zero weights over all reported layers."""
        return self.zeros / self.numel

    @property
    def kept(self) -> int:
        """Number of nonzero weights."""
        return self.numel - self.zeros

    def __getitem__(self, layer: str) -> float:
        zeros, numel = self.layers[layer]
        return zeros / numel

    def __str__(self) -> str:
        lines = [f"{'layer':<14}{'weights':>10}{'zeros':>10}{'sparsity':>10}"]
        for name, (z, n) in [*self.layers.items(), ("total", (self.zeros, self.numel))]:
            lines.append(f"{name:<14}{n:>10,}{z:>10,}{z / n:>10.1%}")
        return "\n".join(lines)


def sparsity_report(model: nn.Module, layers: Iterable[str] | None = None) -> SparsityReport:
    """Zero weights per prunable layer and in total, on the *effective* weights ``orig × mask``.

    Example:
        >>> print(sparsity_report(magnitude_prune(kdlib.model("tiny"), 0.5)))  # doctest: +SKIP
    """
    report = SparsityReport()
    for name, m in prunable_layers(model, layers).items():
        w = _effective(m)
        report.layers[name] = (int((w == 0).sum()), w.numel())
    return report


def _pruned_tensors(model: nn.Module) -> list[tuple[nn.Module, str]]:
    hooks = [(m, h) for m in model.modules() for h in list(m._forward_pre_hooks.values())]
    return [(m, h._tensor_name) for m, h in hooks if isinstance(h, torch_prune.BasePruningMethod)]


def _refresh(model: nn.Module) -> None:
    """Set every masked tensor to ``orig * mask``, as the next forward would."""
    for m, name in _pruned_tensors(model):
        setattr(m, name, _effective(m, name))


def copy_pruned(model: nn.Module) -> nn.Module:
    """A deep copy of ``model``, masked or not (``copy.deepcopy`` fails on a masked layer)."""
    with torch.no_grad():
        _refresh(model)
    return copy.deepcopy(model)


def make_permanent(model: nn.Module) -> nn.Module:
    """Fold every mask into its weight with ``prune.remove`` (in place); no smaller model."""
    for m, name in _pruned_tensors(model):
        torch_prune.remove(m, name)
    return model


def save_pruned(model: nn.Module, path: str | os.PathLike) -> Path:
    """Save a pruned model's state dict (masked or not) and layer types, written atomically.

    The file holds only tensors and strings (``torch.load(weights_only=True)`` reads it).
    """
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    layers = {n: type(m).__name__ for n, m in model.named_modules() if n}
    with V.atomic_path(path) as tmp:
        torch.save({"format": "kdlib-pruned-1", "state_dict": state, "layers": layers}, tmp)
    return Path(path)


def load_pruned(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load a file from :func:`save_pruned` into ``model`` (same architecture), in place.

    Masks are re-created with ``torch.nn.utils.prune``; layers saved smaller (by :func:`shrink`)
    are rebuilt at that size. A file of another architecture is refused before ``model`` changes.
    """
    saved = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(saved, dict) or saved.get("format") != "kdlib-pruned-1":
        raise ValueError(f"{path} is not a file written by kdlib.save_pruned")
    _load_into(copy_pruned(model), saved, path)  # every check on a copy first
    return _load_into(model, saved, path)


def _load_into(model: nn.Module, saved: dict, path) -> nn.Module:
    layers = {n: type(m).__name__ for n, m in model.named_modules() if n}
    theirs = saved.get("layers", layers)
    diff = sorted(n for n in set(layers) | set(theirs) if layers.get(n) != theirs.get(n))
    if diff:
        pairs = "; ".join(f"{n}: file {theirs.get(n)}, model {layers.get(n)}" for n in diff[:5])
        raise ValueError(f"{path} holds another architecture: {pairs}")
    make_permanent(model)
    state = saved["state_dict"]
    plain = {k.removesuffix("_orig"): v for k, v in state.items() if not k.endswith("_mask")}
    for key in sorted(set(plain) ^ set(model.state_dict())):
        lacks = "the model lacks" if key in plain else "the file lacks"
        raise ValueError(f"{path} does not fit this model: {lacks} {key!r}")
    for name, module in list(model.named_modules()):
        w = plain.get(f"{name}.weight".lstrip("."))
        if w is not None and w.shape != module.weight.shape:
            if any(a > b for a, b in zip(w.shape, module.weight.shape, strict=True)):
                raise ValueError(
                    f"{path} holds layer {name!r} with weight {tuple(w.shape)}, larger than the "
                    f"model's {tuple(module.weight.shape)}: another architecture"
                )
            _set_module(model, name, _resized(module, *w.shape[:2]))
    for key in state:
        if key.endswith("_mask"):
            name, _, tensor = key.removesuffix("_mask").rpartition(".")
            torch_prune.identity(model.get_submodule(name), tensor)
    model.load_state_dict(state)
    _refresh(model)
    return model


_BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d)
# Modules that act on each unit separately and map 0 to 0: a zero unit stays zero through them.
_PASS_THROUGH = (
    (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh, nn.Hardtanh)
    + (nn.Dropout, nn.Dropout2d, nn.Identity, nn.MaxPool2d, nn.AvgPool2d)
    + (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
)


def unit_norms(module: nn.Module, norm: int | float = 1) -> torch.Tensor:
    r"""The :math:`L_p` norm of each output unit's (Linear) or channel's (Conv) effective weights.

    Shape:
        weight ``(out, in)`` or ``(out, in, kH, kW)``; output ``(out,)``.
    """
    if not isinstance(module, _PRUNABLE):
        raise TypeError(f"unit_norms needs a Linear or Conv layer, got {type(module).__name__}")
    w = _effective(module).detach()
    return torch.linalg.vector_norm(w.flatten(1), ord=norm, dim=1)


def _leaves(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The modules of a (nested) ``nn.Sequential`` in execution order, by dotted name."""
    if not isinstance(model, nn.Sequential):
        raise ValueError(
            "shrink follows nn.Sequential models only; the model is a "
            f"{type(model).__name__}; {_TORCH_PRUNING}"
        )
    leaves = [(n, m) for n, m in model.named_modules() if not isinstance(m, nn.Sequential)]
    for name, m in leaves:
        if list(m.children()):
            raise ValueError(
                f"cannot follow module {name!r} ({type(m).__name__}), a container other than "
                f"nn.Sequential; {_TORCH_PRUNING}"
            )
    return leaves


@dataclass
class _Group:
    """A layer whose units can be removed, its BatchNorms, and the layer that reads the units."""

    producer: nn.Module  # the Linear/Conv2d whose output units can go
    batchnorms: list[tuple[str, nn.Module]]  # (name, module) between producer and consumer
    consumer: str  # name of the layer that reads the units
    spatial: int  # consumer inputs per unit: H·W after a Flatten, else 1


def _groups(model: nn.Module) -> dict[str, _Group | str | None]:
    """For each Linear/Conv2d: its group, why it has none, or None for the output layer."""
    leaves = _leaves(model)
    return {
        name: _follow(name, m, leaves[i + 1 :])
        for i, (name, m) in enumerate(leaves)
        if isinstance(m, (nn.Linear, nn.Conv2d))
    }


def _follow(name: str, producer: nn.Module, rest) -> _Group | str | None:
    units, conv = producer.weight.shape[0], isinstance(producer, nn.Conv2d)
    if conv and producer.groups != 1:
        return f"layer {name!r} is a grouped convolution; {_TORCH_PRUNING}"
    norms, flat = [], False
    for next_name, m in rest:
        if conv:  # a conv's channels reach a Linear only through a Flatten: H·W inputs each
            fits_linear = isinstance(m, nn.Linear) and flat and m.in_features % units == 0
        else:
            fits_linear = isinstance(m, nn.Linear) and m.in_features == units
        fits_conv = isinstance(m, nn.Conv2d) and conv and not flat
        fits_conv = fits_conv and m.groups == 1 and m.in_channels == units
        if isinstance(m, _BATCHNORM) and m.num_features == units and m.affine:
            norms.append((next_name, m))
        elif isinstance(m, nn.Flatten) and not flat and (m.start_dim, m.end_dim) == (1, -1):
            flat = True
        elif fits_linear or fits_conv:
            return _Group(producer, norms, next_name, m.in_features // units if fits_linear else 1)
        elif not isinstance(m, _PASS_THROUGH):
            return (
                f"cannot follow module {next_name!r} ({type(m).__name__}) after {name!r}: shrink "
                "follows Linear, Conv2d, affine BatchNorm, Flatten, pooling, dropout and "
                f"activations with f(0) = 0, of matching sizes; {_TORCH_PRUNING}"
            )
    return None


def structured_prune(
    model: nn.Module,
    amount: float | int,
    norm: int | float = 1,
    layers: Iterable[str] | None = None,
) -> nn.Module:
    r"""Mask the output units (Linear) or channels (Conv) of smallest :math:`L_p` norm (in place).

    ``prune.ln_structured`` (``dim=0``) masks their weights; their bias and a following
    BatchNorm's weight and bias are masked too, so they output zero; :func:`shrink` removes them.

    Args:
        model: a (nested) ``nn.Sequential`` model, modified in place and returned.
        amount: fraction in [0, 1) or int count of each layer's remaining units.
        norm: 1 (L1) or 2 (L2).
        layers: Linear/Conv layers to prune (default: all but the output layer).

    Example:
        >>> small = shrink(structured_prune(kdlib.model("hinton-student"), 0.5))
        >>> small.fc1
        Linear(in_features=784, out_features=400, bias=True)
    """
    plan = _groups(model)
    if layers is None:
        names = [n for n, g in plan.items() if g is not None]
        if not names:
            raise ValueError(f"{type(model).__name__} has no layer whose units can be removed")
    else:
        names = list(prunable_layers(model, layers))
    for n in names:
        if n not in plan:
            raise ValueError(f"layer {n!r} is not a Linear or Conv2d of the sequential chain")
        if plan[n] is None:
            raise ValueError(f"layer {n!r} is the output layer: its units are the outputs")
        if isinstance(plan[n], str):  # why its units cannot be removed
            raise ValueError(plan[n])
    chosen = {n: plan[n] for n in names}
    for n, g in chosen.items():
        _check_amount(amount, int(_alive(g.producer).sum()), f"layer {n!r}", "units")
    for g in chosen.values():
        torch_prune.ln_structured(g.producer, "weight", amount=amount, n=norm, dim=0)
        keep = _alive(g.producer).to(g.producer.weight.dtype)
        if g.producer.bias is not None:
            torch_prune.custom_from_mask(g.producer, "bias", keep)
        for _, bn in g.batchnorms:
            torch_prune.custom_from_mask(bn, "weight", keep)
            torch_prune.custom_from_mask(bn, "bias", keep)
    return model


def _zero_rows(w: torch.Tensor) -> torch.Tensor:
    return (w.detach().flatten(1) == 0).all(1)


def shrink(model: nn.Module) -> nn.Sequential:
    """A new, smaller model computing the same outputs without its zero units (``model`` kept).

    Masks are made permanent on a copy; each zero unit (Linear) or channel (Conv) leaves its
    layer and the next layer's inputs, through BatchNorm, activations, pooling and a Flatten.

    Raises:
        ValueError: zero units in a layer or chain it cannot rebuild (naming the module and its
            type), or a layer that would lose every unit.
    """
    net = make_permanent(copy_pruned(model))
    for name, m in _leaves(net):
        w = getattr(m, "weight", None)
        known = isinstance(m, (nn.Linear, nn.Conv2d, *_BATCHNORM))
        if not known and isinstance(w, torch.Tensor) and w.ndim >= 2 and _zero_rows(w).any():
            raise ValueError(
                f"layer {name!r} ({type(m).__name__}) has zero units, but shrink rebuilds "
                f"only Linear, Conv2d and BatchNorm layers; {_TORCH_PRUNING}"
            )
    with torch.no_grad():
        rows: dict[str, torch.Tensor] = {}  # units kept, by layer
        cols: dict[str, torch.Tensor] = {}  # inputs kept, by consumer
        for name, g in _groups(net).items():
            if not isinstance(g, _Group):
                if g is not None and _zero_rows(net.get_submodule(name).weight).any():
                    raise ValueError(g)
                continue
            if g.batchnorms:  # a BatchNorm with zero scale and shift outputs 0 whatever comes in
                bn = g.batchnorms[-1][1]
                dead = (bn.weight == 0) & (bn.bias == 0)
            else:
                dead = _zero_rows(g.producer.weight)
                if g.producer.bias is not None:
                    dead &= g.producer.bias == 0
            if not dead.any():
                continue
            if dead.all():
                raise ValueError(f"every unit of layer {name!r} is zero; shrink would remove it")
            keep = torch.nonzero(~dead).flatten()
            for kept in [name, *(bn_name for bn_name, _ in g.batchnorms)]:
                rows[kept] = keep
            # after a Flatten, channel c of (N, C, H, W) fills inputs c·H·W ... (c+1)·H·W − 1
            spatial = torch.arange(g.spatial, device=keep.device)
            cols[g.consumer] = (keep[:, None] * g.spatial + spatial).flatten()
        for name, m in list(net.named_modules()):
            if name in rows or name in cols:
                _set_module(net, name, _sliced(m, rows.get(name), cols.get(name)))
    return net


def _resized(old: nn.Module, n_out: int, n_in: int | None = None) -> nn.Module:
    """A fresh layer configured like ``old`` with ``n_out`` outputs and ``n_in`` inputs."""
    if isinstance(old, _BATCHNORM):
        kw = dict(device=old.weight.device, dtype=old.weight.dtype)
        return type(old)(n_out, old.eps, old.momentum, old.affine, old.track_running_stats, **kw)
    if isinstance(old, (nn.Linear, nn.Conv2d)):
        kw = dict(bias=old.bias is not None, device=old.weight.device, dtype=old.weight.dtype)
    if isinstance(old, nn.Linear):
        return nn.Linear(n_in, n_out, **kw)
    if isinstance(old, nn.Conv2d) and old.groups == 1:
        return nn.Conv2d(
            n_in, n_out, old.kernel_size, old.stride, old.padding, old.dilation,
            padding_mode=old.padding_mode, **kw,
        )  # fmt: skip
    raise ValueError(f"cannot resize a {type(old).__name__} layer; {_TORCH_PRUNING}")


def _sliced(old: nn.Module, rows=None, cols=None) -> nn.Module:
    """``old`` rebuilt with only output units ``rows`` and input columns ``cols`` (None: all)."""
    state = old.state_dict()
    if rows is not None:  # every tensor per unit: weight, bias, BatchNorm statistics
        state = {k: t[rows] if t.ndim else t for k, t in state.items()}
    if cols is not None:
        state["weight"] = state["weight"][:, cols]
    new = _resized(old, *state["weight"].shape[:2])
    new.load_state_dict(state)
    return new.train(old.training)


def _set_module(model: nn.Module, dotted: str, new: nn.Module) -> None:
    parent, _, child = dotted.rpartition(".")
    setattr(model.get_submodule(parent), child, new)


def iterative_prune(
    model: nn.Module,
    data: Dataset,
    target_sparsity: float,
    steps: int = 5,
    finetune_epochs: int = 2,
    lr_scale: float = 0.1,
    *,
    lr: float = 1e-3,
    scope: str = "global",
    layers: Iterable[str] | None = None,
    schedule: str = "cubic",
    seed: int | None = None,
    progress: bool | None = None,
    **fit_kwargs,
) -> History:
    r"""Prune → fine-tune cycles (Han et al. 2015), masks held while fine-tuning (in place).

    Step :math:`k` prunes by magnitude to :math:`s_k` (:func:`agp_schedule`, or equal steps with
    ``schedule="linear"``), then fine-tunes with :func:`kdlib.train.fit` at ``lr * lr_scale``.

    Args:
        model, data: a trained model (pruned in place) and the data to fine-tune on.
        target_sparsity: masked fraction of the chosen weights at the end, in [0, 1).
        steps: prune → fine-tune cycles.
        finetune_epochs: epochs after each pruning step.
        lr_scale: fine-tuning learning rate as a fraction of ``lr``.
        scope, layers: as in :func:`prune_to_sparsity`.
        seed, progress, fit_kwargs: passed on to :func:`kdlib.train.fit`.

    Returns:
        One history over all fine-tuning epochs; rows add ``step``, ``sparsity`` and, first in
        each step, ``pruned_acc``; ``info["masks"]`` holds each step's boolean masks.
    """
    V.number("target_sparsity", target_sparsity, 0, 1, open_high=True)
    V.integer("steps", steps)
    V.integer("finetune_epochs", finetune_epochs)
    V.number("lr_scale", lr_scale, 0, open_low=True)
    if schedule not in ("cubic", "linear"):
        raise ValueError(f"schedule must be 'cubic' or 'linear', got {schedule!r}")
    chosen = prunable_layers(model, layers)
    start = _sparsity(chosen.values())
    if schedule == "cubic":
        cubic = agp_schedule(start, target_sparsity, 0, steps, 1)
        targets = [cubic(k) for k in range(1, steps + 1)]
    else:
        targets = [start + (target_sparsity - start) * k / steps for k in range(1, steps + 1)]
    history = History()
    for k, s in enumerate(targets, start=1):
        prune_to_sparsity(model, s, scope=scope, layers=list(chosen))
        pruned_acc = evaluate(model, data)["accuracy"]
        first = len(history)
        step_seed = None if seed is None else seed + k
        fit(model, data, finetune_epochs, lr * lr_scale, seed=step_seed, progress=progress,
            history=history, desc=f"prune step {k}/{steps}", **fit_kwargs)  # fmt: skip
        sparsity = _sparsity(chosen.values())
        for row in history.rows[first:]:
            row["step"], row["sparsity"] = k, sparsity
        history.rows[first]["pruned_acc"] = pruned_acc
        # a copy of every mask after this step, so a lesson can check that they only grow
        masks = {n: _mask(m).bool().clone() for n, m in chosen.items()}
        history.info.setdefault("masks", []).append(masks)
    history.info["target_sparsity"] = target_sparsity
    return history


@dataclass(frozen=True)
class AGPSchedule:
    r"""Zhu & Gupta's gradual pruning schedule (2017), a callable ``t -> s_t``.

    .. math::
        s_t = s_f + (s_i - s_f)\left(1 - \frac{t - t_0}{n\,\Delta t}\right)^3
        \quad (t_0 \le t \le t_0 + n\,\Delta t)

    :math:`s_i` before :math:`t_0`, :math:`s_f` after; :meth:`callback` prunes inside ``fit``.
    """

    s_i: float  # initial sparsity
    s_f: float  # final sparsity
    t0: float  # time of the first pruning step
    n: int  # number of pruning steps after t0
    dt: float  # time between pruning steps

    def __call__(self, t: float) -> float:
        if t <= self.t0:
            return float(self.s_i)
        frac = min((t - self.t0) / (self.n * self.dt), 1.0)
        return float(self.s_f + (self.s_i - self.s_f) * (1.0 - frac) ** 3)

    @property
    def times(self) -> list[float]:
        """The pruning times ``t0 + k·dt`` for ``k = 0..n``."""
        return [self.t0 + k * self.dt for k in range(self.n + 1)]

    def callback(
        self, scope: str = "global", layers: Iterable[str] | None = None
    ) -> Callable[[nn.Module, History], None]:
        """A ``fit`` callback that prunes to ``s_t`` after each epoch ``t`` in :attr:`times`.

        Example:
            >>> sched = agp_schedule(0.0, 0.9, t0=1, n=4, dt=1)
            >>> hist = kdlib.fit(net, data, epochs=8, callbacks=[sched.callback()])
        """
        names = None if layers is None else list(layers)
        times = set(self.times)

        def prune_on_schedule(model: nn.Module, history: History) -> None:
            chosen = prunable_layers(model, names)
            if history.epochs in times:
                prune_to_sparsity(model, self(history.epochs), scope=scope, layers=list(chosen))
            history.rows[-1]["sparsity"] = _sparsity(chosen.values())

        return prune_on_schedule


def agp_schedule(s_i: float, s_f: float, t0: float, n: int, dt: float) -> AGPSchedule:
    r"""The cubic sparsity schedule :math:`s_t` (see :class:`AGPSchedule`), checked.

    Args:
        s_i, s_f: initial and final sparsity, ``0 <= s_i <= s_f < 1``.
        t0: when pruning starts; n: pruning steps (> 0); dt: time between them (> 0).

    Example:
        >>> s = agp_schedule(0.0, 0.9, t0=0, n=10, dt=1)
        >>> s(0), round(s(5), 4), s(10)
        (0.0, 0.7875, 0.9)
    """
    V.number("s_i", s_i, 0, 1, open_high=True)
    V.number("s_f", s_f, 0, 1, open_high=True)
    if s_f < s_i:
        raise ValueError(f"s_f={s_f} is below s_i={s_i}: the schedule only adds sparsity")
    V.integer("n", n)
    V.number("dt", dt, 0, open_low=True)
    return AGPSchedule(float(s_i), float(s_f), t0, int(n), dt)


@dataclass
class Sensitivity:
    """Accuracy with each layer pruned alone, at each amount (from :func:`sensitivity_scan`)."""

    baseline: float  # accuracy of the unpruned model
    amounts: list[float]  # fractions of the layer's weights pruned
    accuracy: dict[str, list[float]]  # layer -> accuracy at each amount
    sizes: dict[str, int]  # layer -> number of weights
    split: str = "train"  # the data the accuracies were measured on

    def drop(self, layer: str) -> list[float]:
        """Accuracy lost by pruning ``layer`` alone, at each amount."""
        return [self.baseline - a for a in self.accuracy[layer]]

    def __str__(self) -> str:
        lines = [f"{self.split} accuracy when pruned alone (baseline {self.baseline:.1%})"]
        lines.append(f"{'layer':<14}" + "".join(f"{a:>8.0%}" for a in self.amounts))
        for n, accs in self.accuracy.items():
            lines.append(f"{n:<14}" + "".join(f"{a:>8.1%}" for a in accs))
        return "\n".join(lines)

    def suggest(self, target_sparsity: float) -> dict[str, float]:
        """Per-layer amounts (``{layer: amount}``) reaching ``target_sparsity`` at the least loss.

        Each layer's accuracy drop against weights removed is made monotone and convex (its lower
        hull); with drops taken as additive, the cheapest hull segments per weight go first.
        """
        V.number("target_sparsity", target_sparsity, 0, 1, open_high=True)
        segments = []  # (drop per weight removed, layer, weights removed by the segment)
        for name, n in self.sizes.items():
            removed = np.array([0.0, *self.amounts]) * n
            drop = np.maximum.accumulate(np.maximum([0.0, *self.drop(name)], 0.0))
            hull = _lower_hull(removed, drop)
            for i, j in zip(hull, hull[1:], strict=False):
                slope = (drop[j] - drop[i]) / (removed[j] - removed[i])
                segments.append((slope, name, removed[j] - removed[i]))
        total = sum(self.sizes.values())
        reachable = sum(w for _, _, w in segments) / total
        if target_sparsity > reachable + 1e-12:
            raise ValueError(
                f"target_sparsity={target_sparsity} is above what the scanned amounts reach "
                f"({reachable:.3f}); scan larger amounts"
            )
        need = target_sparsity * total
        taken = dict.fromkeys(self.sizes, 0.0)
        for _, name, width in sorted(segments, key=lambda seg: seg[0]):  # stable on ties
            take = min(width, need)
            taken[name] += take
            need -= take
        return {name: float(taken[name] / n) for name, n in self.sizes.items()}


def _lower_hull(x: np.ndarray, y: np.ndarray) -> list[int]:
    """Indices of the lower convex hull of points sorted by ``x`` (first and last kept)."""
    hull: list[int] = []
    for k in range(len(x)):
        while len(hull) >= 2:
            i, j = hull[-2], hull[-1]
            # drop j if it lies on or above the line from i to k
            if (y[j] - y[i]) * (x[k] - x[i]) >= (y[k] - y[i]) * (x[j] - x[i]):
                hull.pop()
            else:
                break
        hull.append(k)
    return hull


def sensitivity_scan(
    model: nn.Module,
    data: Dataset,
    amounts: Sequence[float] = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98),
    layers: Iterable[str] | None = None,
    split: str = "train",
) -> Sensitivity:
    """Accuracy with each layer pruned alone by magnitude, at each amount (copies; model kept).

    ``amounts`` are increasing fractions in (0, 1]. The default evaluates on the *train* split,
    so choosing amounts never looks at the test set.
    """
    amounts = [float(a) for a in amounts]
    if not amounts or any(not 0 < a <= 1 for a in amounts) or amounts != sorted(amounts):
        raise ValueError(f"amounts must be increasing fractions in (0, 1], got {amounts}")
    chosen = prunable_layers(model, layers)
    baseline = evaluate(model, data, split=split)["accuracy"]
    accuracy = {name: [] for name in chosen}
    for name in chosen:
        for a in amounts:
            net = copy_pruned(model)
            torch_prune.l1_unstructured(net.get_submodule(name), "weight", amount=a)
            accuracy[name].append(evaluate(net, data, split=split)["accuracy"])
    sizes = {name: m.weight.numel() for name, m in chosen.items()}
    return Sensitivity(baseline, amounts, accuracy, sizes, split)
