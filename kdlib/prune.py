"""Weight pruning: masks that zero weights, and structured pruning that removes them.

Masks come from ``torch.nn.utils.prune``: a pruned layer keeps ``weight_orig`` (a parameter)
and ``weight_mask`` (a buffer), and a forward pre-hook computes ``weight = weight_orig *
weight_mask`` before every forward, so a masked weight stays exactly zero while training.
Magnitude pruning per layer or over several layers together, iterative prune → fine-tune
cycles (Han et al. 2015) on :func:`kdlib.train.fit`, Zhu & Gupta's cubic schedule and a
per-layer sensitivity scan build on that. Masking makes a model neither smaller nor faster:
:func:`structured_prune` masks whole units or channels and :func:`shrink` rebuilds the model
without them, for ``Linear → Linear``, ``Conv → BatchNorm → Conv`` and ``Conv → Flatten →
Linear`` chains in (nested) ``nn.Sequential`` models. For arbitrary graphs (residual
connections, concatenations) use Torch-Pruning (https://github.com/VainF/Torch-Pruning).
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

# Layers whose ``weight`` the course prunes.
_PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_TORCH_PRUNING = "for arbitrary graphs use Torch-Pruning (https://github.com/VainF/Torch-Pruning)"


# --------------------------------------------------------------------------------------------
# Choosing layers and checking amounts
def prunable_layers(model: nn.Module, layers: Iterable[str] | None = None) -> dict[str, nn.Module]:
    """The layers pruning acts on: every ``Linear``/``Conv`` by dotted name, or ``layers``.

    Example:
        >>> list(prunable_layers(kdlib.model("lenet-300-100")))
        ['fc1', 'fc2', 'fc3']
    """
    found = {n: m for n, m in model.named_modules() if isinstance(m, _PRUNABLE)}
    if not found:
        raise ValueError(
            f"{type(model).__name__} has no prunable layers (Linear or Conv); nothing to prune"
        )
    if layers is None:
        return found
    if isinstance(layers, str):
        layers = [layers]
    layers = list(layers)
    if not layers:
        raise ValueError("layers is empty: name at least one layer, or pass None for all")
    unknown = [n for n in layers if n not in found]
    if unknown:
        raise ValueError(
            f"unknown layer name(s) {unknown}; prunable layers are: {', '.join(found)}"
        )
    return {n: found[n] for n in found if n in layers}


def _check_amount(amount, size: int, what: str) -> int:
    """Number of entries ``amount`` asks to prune out of ``size``, as torch computes it."""
    if isinstance(amount, bool) or not isinstance(amount, numbers.Real):
        raise TypeError(f"amount must be a float fraction or an int count, got {amount!r}")
    if isinstance(amount, numbers.Integral):
        if amount < 0 or amount > size:
            raise ValueError(
                f"amount={amount} is a count outside [0, {size}]: {what} has {size} "
                "entries left to prune"
            )
        return int(amount)
    if not 0.0 <= float(amount) <= 1.0:
        raise ValueError(f"amount={amount} is a fraction outside [0, 1]")
    return round(float(amount) * size)


def _check_not_all(amount, size: int, what: str) -> None:
    # a layer without weights computes nothing: never what a fraction of 1.0 was meant to do
    if _check_amount(amount, size, what) >= size > 0:
        raise ValueError(
            f"amount={amount} would prune all {size} remaining weights of {what}, leaving "
            "nothing to compute with; use an amount below 1 (e.g. 0.99)"
        )


def _mask(module: nn.Module, name: str = "weight") -> torch.Tensor:
    """The current mask of ``module.name`` (ones if it is not pruned)."""
    mask = getattr(module, name + "_mask", None)
    return mask if mask is not None else torch.ones_like(getattr(module, name))


def _effective(module: nn.Module, name: str = "weight") -> torch.Tensor:
    """``name_orig * name_mask`` for a pruned tensor (computed afresh), else the tensor."""
    if hasattr(module, name + "_orig"):
        return getattr(module, name + "_orig") * getattr(module, name + "_mask")
    return getattr(module, name)


# --------------------------------------------------------------------------------------------
# Unstructured magnitude pruning
def magnitude_prune(
    model: nn.Module,
    amount: float | int | Mapping[str, float | int],
    scope: str = "layer",
    layers: Iterable[str] | None = None,
) -> nn.Module:
    r"""Zero the weights of smallest magnitude with ``torch.nn.utils.prune`` masks (in place).

    ``scope="layer"``: each layer loses ``amount`` of its own weights (``l1_unstructured``);
    ``scope="global"``: the smallest :math:`|w|` over all chosen layers together
    (``global_unstructured``). As in torch, ``amount`` counts among the weights still unmasked:
    0.5 twice leaves 25%. An amount that would mask every weight is refused.

    Args:
        model: the model (modified in place and returned).
        amount: fraction in [0, 1) or int count of the remaining weights; with
            ``scope="layer"`` also ``{layer: amount}`` (e.g. :meth:`Sensitivity.suggest`).
        scope: ``"layer"`` or ``"global"``.
        layers: layer names (default: every Linear/Conv).

    Example:
        >>> net = magnitude_prune(kdlib.model("lenet-300-100"), 0.9, scope="global")
        >>> round(sparsity_report(net).sparsity, 2)
        0.9
    """
    if scope not in ("layer", "global"):
        raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")
    if isinstance(amount, Mapping):
        if scope != "layer":
            raise ValueError("a dict of per-layer amounts needs scope='layer'")
        if layers is not None:
            raise ValueError("give either a dict of per-layer amounts or layers, not both")
        chosen = prunable_layers(model, list(amount))
        amounts = dict(amount)
    else:
        chosen = prunable_layers(model, layers)
        amounts = dict.fromkeys(chosen, amount)
    if scope == "global":
        left = sum(int(_mask(m).sum()) for m in chosen.values())
        _check_not_all(amount, left, "the chosen layers together")
        _prune_global(chosen, amount)
        return model
    # Check every layer first, so a bad amount leaves the model untouched.
    for name, m in chosen.items():
        _check_not_all(amounts[name], int(_mask(m).sum()), f"layer {name!r}")
    for name, m in chosen.items():
        torch_prune.l1_unstructured(m, "weight", amount=amounts[name])
    return model


def prune_to_sparsity(
    model: nn.Module,
    sparsity: float,
    scope: str = "global",
    layers: Iterable[str] | None = None,
) -> nn.Module:
    """Prune by magnitude until ``sparsity`` in [0, 1) of the chosen weights are masked.

    Existing masks are kept and counted: 0.5, then 0.8, then 0.9 leaves exactly 90% masked.
    ``scope="global"`` uses one threshold for all chosen layers, ``"layer"`` one per layer.
    """
    V.number("sparsity", sparsity, 0, 1, open_high=True)
    if scope not in ("layer", "global"):
        raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")
    chosen = prunable_layers(model, layers)
    groups = [chosen] if scope == "global" else [{n: m} for n, m in chosen.items()]
    for group in groups:
        total = sum(_mask(m).numel() for m in group.values())
        masked = sum(int((_mask(m) == 0).sum()) for m in group.values())
        more = max(round(sparsity * total) - masked, 0)
        _prune_global(group, more)
    return model


def _prune_global(chosen: dict[str, nn.Module], amount) -> None:
    """Mask the ``amount`` smallest ``|w|`` over the chosen layers together."""
    modules = [(m, "weight") for m in chosen.values()]
    torch_prune.global_unstructured(modules, torch_prune.L1Unstructured, amount=amount)


# --------------------------------------------------------------------------------------------
# Measuring, making permanent, saving and loading
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
    return [
        (m, hook._tensor_name)
        for m in model.modules()
        for hook in list(m._forward_pre_hooks.values())
        if isinstance(hook, torch_prune.BasePruningMethod)
    ]


def copy_pruned(model: nn.Module) -> nn.Module:
    """A deep copy of ``model``, masked or not (``copy.deepcopy`` fails on masked layers,
    whose ``weight`` is computed from ``weight_orig`` and ``weight_mask``)."""
    with torch.no_grad():
        for m, name in _pruned_tensors(model):
            setattr(m, name, _effective(m, name))
    return copy.deepcopy(model)


def make_permanent(model: nn.Module) -> nn.Module:
    """Fold every mask into its weight with ``prune.remove`` (in place); no smaller model."""
    for m, name in _pruned_tensors(model):
        torch_prune.remove(m, name)
    return model


def save_pruned(model: nn.Module, path: str | os.PathLike) -> Path:
    """Save a pruned model's state dict, masked (``*_orig`` + ``*_mask``) or permanent.

    The file holds only tensors and strings (read with ``torch.load(weights_only=True)``),
    with each layer's type, and is written atomically.
    """
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    layers = {n: type(m).__name__ for n, m in model.named_modules() if n}
    with V.atomic_path(path) as tmp:
        torch.save({"format": "kdlib-pruned-1", "state_dict": state, "layers": layers}, tmp)
    return Path(path)


def load_pruned(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load a file from :func:`save_pruned` into ``model`` (same architecture), in place.

    Masks in the file are re-created with ``torch.nn.utils.prune``; layers the file holds
    smaller, as :func:`shrink` leaves them, are rebuilt at that size. A file of another
    architecture (other layer names or types, a tensor the model lacks, a larger layer) is
    refused before ``model`` is touched.
    """
    saved = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(saved, dict) or saved.get("format") != "kdlib-pruned-1":
        raise ValueError(f"{path} is not a file written by kdlib.save_pruned")
    _load_into(copy_pruned(model), saved, path)  # every check on a copy first
    return _load_into(model, saved, path)


def _load_into(model: nn.Module, saved: dict, path) -> nn.Module:
    state = saved["state_dict"]
    layers = {n: type(m).__name__ for n, m in model.named_modules() if n}
    if saved.get("layers", layers) != layers:
        theirs = saved["layers"]
        diff = sorted(n for n in set(layers) | set(theirs) if layers.get(n) != theirs.get(n))
        pairs = [f"{n}: file {theirs.get(n)}, model {layers.get(n)}" for n in diff[:5]]
        raise ValueError(f"{path} holds another architecture: {'; '.join(pairs)}")
    make_permanent(model)
    plain = {k.removesuffix("_orig"): v for k, v in state.items() if not k.endswith("_mask")}
    ours = model.state_dict()
    for key in sorted(set(plain) ^ set(ours)):
        where = "the model lacks" if key in plain else "the file lacks"
        raise ValueError(f"{path} does not fit this model: {where} {key!r}")
    for mod_name, module in list(model.named_modules()):
        w = plain.get(f"{mod_name}.weight".lstrip("."))
        if w is not None and w.shape != module.weight.shape:
            if any(a > b for a, b in zip(w.shape, module.weight.shape, strict=True)):
                raise ValueError(
                    f"{path} holds layer {mod_name!r} with weight {tuple(w.shape)}, larger "
                    f"than the model's {tuple(module.weight.shape)}: another architecture"
                )
            _set_module(model, mod_name, _resized(module, *w.shape[:2]))
    for key in state:
        if key.endswith("_mask"):
            mod_name, _, tensor = key[: -len("_mask")].rpartition(".")
            torch_prune.identity(model.get_submodule(mod_name) if mod_name else model, tensor)
    model.load_state_dict(state)
    for m, name in _pruned_tensors(model):
        setattr(m, name, _effective(m, name))  # what the next forward would compute
    return model


# --------------------------------------------------------------------------------------------
# Structured pruning that physically shrinks
_BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d)
# Modules that act on each unit/channel separately and map 0 to 0, so a unit that is zero
# before them is zero after them and can be removed together with its inputs downstream.
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
            f"structured shrink follows nn.Sequential models only; the model is a "
            f"{type(model).__name__}; {_TORCH_PRUNING}"
        )
    out = []

    def walk(seq: nn.Sequential, prefix: str) -> None:
        for name, child in seq.named_children():
            full = f"{prefix}{name}"
            if isinstance(child, nn.Sequential):
                walk(child, full + ".")
            elif any(True for _ in child.children()):
                raise ValueError(
                    f"cannot follow module {full!r} ({type(child).__name__}): only "
                    f"nn.Sequential containers can be traced by structured shrink; "
                    f"{_TORCH_PRUNING}"
                )
            else:
                out.append((full, child))

    walk(model, "")
    return out


@dataclass
class _Group:
    """A layer whose output units can be removed, and what reads them."""

    name: str
    producer: nn.Module
    batchnorms: list[tuple[str, nn.Module]]  # channel-wise norms between producer and consumer
    consumer_name: str
    consumer: nn.Module
    spatial: int  # inputs of the consumer per removed unit (H·W after a Flatten, else 1)


@dataclass
class _Refusal:
    """Why the units of a layer cannot be removed."""

    message: str
    output_layer: bool = False  # nothing reads the units: they are the model's outputs


def _groups(model: nn.Module) -> dict[str, _Group | _Refusal]:
    """For each Linear/Conv2d: its group, or why its units cannot be removed."""
    leaves = _leaves(model)
    plan: dict[str, _Group | _Refusal] = {}
    for i, (name, producer) in enumerate(leaves):
        if not isinstance(producer, (nn.Linear, nn.Conv2d)):
            continue
        plan[name] = _follow(name, producer, leaves[i + 1 :])
    return plan


def _follow(name: str, producer: nn.Module, rest) -> _Group | _Refusal:
    units = producer.out_features if isinstance(producer, nn.Linear) else producer.out_channels
    if isinstance(producer, nn.Conv2d) and producer.groups != 1:
        return _Refusal(f"layer {name!r} is a grouped convolution; {_TORCH_PRUNING}")
    norms, flatten = [], None
    for next_name, m in rest:
        if isinstance(m, _BATCHNORM):
            if m.num_features != units or not m.affine:
                return _Refusal(
                    f"cannot follow {next_name!r} ({type(m).__name__}) after {name!r}: it "
                    "must have one affine parameter pair per unit"
                )
            norms.append((next_name, m))
        elif isinstance(m, _PASS_THROUGH):
            continue
        elif isinstance(m, nn.Flatten):
            if flatten is not None or m.start_dim != 1 or m.end_dim != -1:
                return _Refusal(
                    f"cannot follow {next_name!r} (Flatten) after {name!r}; {_TORCH_PRUNING}"
                )
            flatten = next_name
        elif isinstance(m, nn.Linear):
            spatial = 1
            if isinstance(producer, nn.Conv2d):
                if flatten is None:
                    return _Refusal(
                        f"cannot follow {next_name!r} (Linear) after conv {name!r} without a "
                        f"Flatten between them; {_TORCH_PRUNING}"
                    )
                spatial, left = divmod(m.in_features, units)
                if left:
                    return _Refusal(
                        f"{next_name!r} has {m.in_features} inputs, not a multiple of {units}"
                    )
            elif m.in_features != units:
                return _Refusal(
                    f"{next_name!r} has {m.in_features} inputs but {name!r} has {units} units"
                )
            return _Group(name, producer, norms, next_name, m, spatial)
        elif isinstance(m, nn.Conv2d):
            if flatten is not None or not isinstance(producer, nn.Conv2d):
                return _Refusal(
                    f"cannot follow {next_name!r} (Conv2d) after {name!r}; {_TORCH_PRUNING}"
                )
            if m.groups != 1 or m.in_channels != units:
                return _Refusal(
                    f"cannot follow {next_name!r} (Conv2d) after {name!r}; {_TORCH_PRUNING}"
                )
            return _Group(name, producer, norms, next_name, m, 1)
        else:
            return _Refusal(
                f"cannot follow module {next_name!r} ({type(m).__name__}) after {name!r}: "
                f"structured shrink knows Linear, Conv2d, BatchNorm, Flatten, pooling, dropout "
                f"and activations with f(0) = 0; {_TORCH_PRUNING}"
            )
    return _Refusal(f"layer {name!r} is the output layer: its units are the model's outputs", True)


def structured_prune(
    model: nn.Module,
    amount: float | int,
    norm: int | float = 1,
    layers: Iterable[str] | None = None,
) -> nn.Module:
    r"""Mask whole units (Linear) or channels (Conv) of smallest :math:`L_p` norm (in place).

    Each chosen layer loses ``amount`` of its remaining output units (``prune.ln_structured``,
    ``dim=0``). The bias and a following BatchNorm's weight and bias are masked too, so a removed
    unit outputs exactly zero; :func:`shrink` then removes it.

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
        names = [n for n, g in plan.items() if not (isinstance(g, _Refusal) and g.output_layer)]
        if not names:
            raise ValueError(f"{type(model).__name__} has no layer whose units can be removed")
    else:
        names = list(prunable_layers(model, layers))
    for n in names:
        if n not in plan:
            raise ValueError(f"layer {n!r} is not a Linear or Conv2d of the sequential chain")
        if not isinstance(plan[n], _Group):
            raise ValueError(plan[n].message)
    chosen = {n: plan[n] for n in names}
    for name, g in chosen.items():
        alive = int(_alive_units(g.producer).sum())
        k = _check_amount(amount, alive, f"layer {name!r}")
        if k >= alive:
            raise ValueError(
                f"amount={amount} would remove every unit of layer {name!r} ({k} of {alive} "
                "remaining); keep at least one"
            )
    for g in chosen.values():
        torch_prune.ln_structured(g.producer, "weight", amount=amount, n=norm, dim=0)
        keep = _alive_units(g.producer).to(g.producer.weight.dtype)
        targets = [(g.producer, "bias")] + [
            (bn, p) for _, bn in g.batchnorms for p in ("weight", "bias")
        ]
        for m, pname in targets:
            if getattr(m, pname, None) is not None:
                torch_prune.custom_from_mask(m, pname, keep)
    return model


def _alive_units(producer: nn.Module) -> torch.Tensor:
    """Boolean ``(out,)``: units whose weight mask is not all zero."""
    return _mask(producer).flatten(1).any(dim=1)


def _dead_units(g: _Group) -> torch.Tensor:
    """Boolean ``(out,)``: units whose output reaching the consumer is zero for any input."""
    if g.batchnorms:
        # A BatchNorm with zero scale and shift outputs 0 whatever comes in.
        _, bn = g.batchnorms[-1]
        return (bn.weight == 0) & (bn.bias == 0)
    dead = (g.producer.weight.flatten(1) == 0).all(dim=1)
    if g.producer.bias is not None:
        dead &= g.producer.bias == 0
    return dead


def shrink(model: nn.Module) -> nn.Sequential:
    """A new, smaller model without the units whose output is always zero (the argument is kept).

    Masks are made permanent on a copy; every zero unit (Linear) or channel (Conv) is removed
    from its layer and from the next layer's inputs, through BatchNorm, activations, pooling and
    a Flatten. The result computes the same outputs with fewer parameters and MACs.

    Raises:
        ValueError: zero units in a layer it cannot rebuild or whose consumer it cannot trace
            (the message names the module and its type), or a layer that would lose every unit.
    """
    net = make_permanent(copy_pruned(model))
    for name, m in _leaves(net):  # zero units in a layer shrink cannot rebuild: refuse by name
        w = getattr(m, "weight", None)
        known = isinstance(m, (nn.Linear, nn.Conv2d, *_BATCHNORM))
        if not known and isinstance(w, torch.Tensor) and w.ndim >= 2:
            if bool((w.detach().flatten(1) == 0).all(1).any()):
                raise ValueError(
                    f"layer {name!r} ({type(m).__name__}) has zero units, but shrink rebuilds "
                    f"only Linear, Conv2d and BatchNorm layers; {_TORCH_PRUNING}"
                )
    with torch.no_grad():
        keep_out: dict[str, torch.Tensor] = {}
        keep_in: dict[str, tuple[torch.Tensor, int]] = {}
        for name, g in _groups(net).items():
            if isinstance(g, _Refusal):
                zero_rows = (net.get_submodule(name).weight.flatten(1) == 0).all(dim=1)
                if zero_rows.any() and not g.output_layer:
                    raise ValueError(g.message)
                continue
            dead = _dead_units(g)
            if not dead.any():
                continue
            if dead.all():
                raise ValueError(f"every unit of layer {name!r} is zero; shrink would remove it")
            keep = torch.nonzero(~dead).flatten()
            keep_out[name] = keep
            for bn_name, _ in g.batchnorms:
                keep_out[bn_name] = keep
            keep_in[g.consumer_name] = (keep, g.spatial)
        for name, module in list(net.named_modules()):
            if name not in keep_out and name not in keep_in:
                continue
            if isinstance(module, _BATCHNORM):
                new = _sliced(module, keep_out[name])
            else:
                rows = keep_out.get(name, torch.arange(module.weight.shape[0]))
                new = _sliced(module, rows, _input_columns(module, *keep_in.get(name, (None, 1))))
            _set_module(net, name, new)
    return net


def _input_columns(module: nn.Module, keep: torch.Tensor | None, spatial: int) -> torch.Tensor:
    n_in = module.weight.shape[1]
    if keep is None:
        return torch.arange(n_in)
    # After Flatten, channel c of (N, C, H, W) fills inputs c·H·W ... c·H·W + H·W − 1.
    return (keep[:, None] * spatial + torch.arange(spatial)).flatten()


def _resized(old: nn.Module, n_out: int, n_in: int | None = None) -> nn.Module:
    """A fresh layer configured like ``old`` with ``n_out`` outputs and ``n_in`` inputs."""
    w = old.weight
    kw = dict(device=w.device if w is not None else None)
    if isinstance(old, nn.Linear):
        return nn.Linear(n_in, n_out, bias=old.bias is not None, dtype=w.dtype, **kw)
    if isinstance(old, nn.Conv2d) and old.groups == 1:
        return nn.Conv2d(
            n_in, n_out, old.kernel_size, stride=old.stride, padding=old.padding,
            dilation=old.dilation, bias=old.bias is not None, padding_mode=old.padding_mode,
            dtype=w.dtype, **kw,
        )  # fmt: skip
    if isinstance(old, _BATCHNORM):
        return type(old)(
            n_out, eps=old.eps, momentum=old.momentum, affine=old.affine,
            track_running_stats=old.track_running_stats, **kw,
        )  # fmt: skip
    raise ValueError(f"cannot resize a {type(old).__name__} layer; {_TORCH_PRUNING}")


def _sliced(old: nn.Module, rows: torch.Tensor, cols: torch.Tensor | None = None) -> nn.Module:
    """``old`` keeping output units ``rows`` and (Linear/Conv) input columns ``cols``."""
    new = _resized(old, len(rows), None if cols is None else len(cols))
    with torch.no_grad():
        if isinstance(old, _BATCHNORM):
            for name in ("weight", "bias", "running_mean", "running_var"):
                t = getattr(old, name, None)
                if t is not None:
                    getattr(new, name).copy_(t.detach()[rows])
            if old.num_batches_tracked is not None:
                new.num_batches_tracked.copy_(old.num_batches_tracked)
        else:
            new.weight.copy_(old.weight.detach()[rows][:, cols])
            if old.bias is not None:
                new.bias.copy_(old.bias.detach()[rows])
    return new.train(old.training)


def _set_module(model: nn.Module, dotted: str, new: nn.Module) -> None:
    parent_name, _, child = dotted.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


# --------------------------------------------------------------------------------------------
# Iterative and gradual pruning
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

    Step :math:`k` prunes by magnitude to sparsity :math:`s_k` (Zhu & Gupta's cubic
    :func:`agp_schedule`, or equal steps with ``schedule="linear"``), then fine-tunes with
    :func:`kdlib.train.fit` at ``lr * lr_scale``. The model is left masked.

    Args:
        model: a trained model (pruned in place).
        data: the data set to fine-tune on.
        target_sparsity: masked fraction of the chosen weights at the end, in [0, 1).
        steps: prune → fine-tune cycles; finetune_epochs: epochs after each pruning step.
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
    chosen = list(prunable_layers(model, layers))
    start = _masked_fraction(model, chosen)
    if schedule == "cubic":
        sched = agp_schedule(start, target_sparsity, 0, steps, 1)
        targets = [sched(k) for k in range(1, steps + 1)]
    else:
        targets = [start + (target_sparsity - start) * k / steps for k in range(1, steps + 1)]
    history = History()
    for k, s in enumerate(targets, start=1):
        prune_to_sparsity(model, s, scope=scope, layers=chosen)
        pruned_acc = evaluate(model, data)["accuracy"]
        first = len(history)
        step_seed = None if seed is None else seed + k
        fit(model, data, finetune_epochs, lr * lr_scale, seed=step_seed, progress=progress,
            history=history, desc=f"prune step {k}/{steps}", **fit_kwargs)  # fmt: skip
        sparsity = _masked_fraction(model, chosen)
        for row in history.rows[first:]:
            row["step"], row["sparsity"] = k, sparsity
        history.rows[first]["pruned_acc"] = pruned_acc
        # a copy of every mask after this step, so a lesson can check that they only grow
        masks = {n: _mask(m).bool().clone() for n, m in prunable_layers(model, chosen).items()}
        history.info.setdefault("masks", []).append(masks)
    history.info["target_sparsity"] = target_sparsity
    return history


def _masked_fraction(model: nn.Module, layers: Sequence[str]) -> float:
    chosen = prunable_layers(model, layers)
    masked = sum(int((_mask(m) == 0).sum()) for m in chosen.values())
    return masked / sum(_mask(m).numel() for m in chosen.values())


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
            t = history.epochs
            chosen = list(prunable_layers(model, names))
            if t in times:
                prune_to_sparsity(model, self(t), scope=scope, layers=chosen)
            history.rows[-1]["sparsity"] = _masked_fraction(model, chosen)

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


# --------------------------------------------------------------------------------------------
# Accuracy against sparsity, and per-layer sensitivity
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
        r"""Per-layer amounts reaching ``target_sparsity`` overall at the least predicted loss.

        Each layer's accuracy drop against weights removed is made monotone and convex (its lower
        hull); treating drops as additive, the hull segments are taken in order of drop per weight,
        so robust layers take most of the sparsity. Returns ``{layer: amount}`` for
        :func:`magnitude_prune`.
        """
        if not 0 <= target_sparsity < 1:
            raise ValueError(f"target_sparsity must be in [0, 1), got {target_sparsity!r}")
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
        # A stable sort keeps each layer's segments in order when slopes tie.
        for _, name, width in sorted(segments, key=lambda seg: seg[0]):
            if need <= 0:
                break
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

    The default evaluates on the *train* split, so choosing amounts never looks at the test set.
    ``amounts`` are increasing fractions in (0, 1].
    """
    amounts = [float(a) for a in amounts]
    if not amounts or any(not 0 < a <= 1 for a in amounts) or amounts != sorted(amounts):
        raise ValueError(f"amounts must be increasing fractions in (0, 1], got {amounts}")
    names = list(prunable_layers(model, layers))
    baseline = evaluate(model, data, split=split)["accuracy"]
    accuracy, sizes = {}, {}
    for name in names:
        accuracy[name] = []
        for a in amounts:
            net = copy_pruned(model)
            torch_prune.l1_unstructured(net.get_submodule(name), "weight", amount=a)
            accuracy[name].append(evaluate(net, data, split=split)["accuracy"])
        sizes[name] = int(_mask(model.get_submodule(name)).numel())
    return Sensitivity(baseline, amounts, accuracy, sizes, split)
