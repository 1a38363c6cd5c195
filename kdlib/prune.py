"""Weight pruning: masks that zero weights, and structured pruning that removes them.

Masks come from ``torch.nn.utils.prune``: a pruned layer keeps ``weight_orig`` (a parameter)
and ``weight_mask`` (a buffer), and a forward pre-hook recomputes ``weight = weight_orig *
weight_mask`` before every forward, so a masked weight stays exactly zero however
``weight_orig`` is trained. On top of that this module offers magnitude pruning per layer or
over several layers together (:func:`magnitude_prune`, :func:`prune_to_sparsity`), a report
measured on the effective weights (:func:`sparsity_report`), :func:`make_permanent`, saving
and loading masked or permanent models (:func:`save_pruned`, :func:`load_pruned`), iterative
prune → fine-tune cycles (Han et al. 2015, :func:`iterative_prune`, reusing
:func:`kdlib.train.fit`), Zhu & Gupta's cubic schedule (:func:`agp_schedule`, usable as a
``fit`` callback) and a per-layer sensitivity scan (:func:`sensitivity_scan`). Masking makes a
model neither smaller nor faster; :func:`structured_prune` masks whole units or channels
(ranked by L1/L2 norm) and :func:`shrink` then rebuilds the model without them, slicing the
next layer's inputs, for ``Linear → Linear``, ``Conv → BatchNorm → Conv`` and ``Conv →
Flatten → Linear`` in (nested) ``nn.Sequential`` models. For arbitrary graphs (residual
connections, concatenations, attention) use Torch-Pruning
(https://github.com/VainF/Torch-Pruning), which traces dependencies between layers.
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

from .data import Dataset
from .train import History, evaluate, fit

__all__ = [
    "prunable_layers",
    "magnitude_prune",
    "prune_to_sparsity",
    "SparsityReport",
    "sparsity_report",
    "make_permanent",
    "save_pruned",
    "load_pruned",
    "unit_norms",
    "structured_prune",
    "shrink",
    "iterative_prune",
    "AGPSchedule",
    "agp_schedule",
    "SparsitySweep",
    "sparsity_sweep",
    "Sensitivity",
    "sensitivity_scan",
]

# Layers whose ``weight`` the course prunes.
_PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_TORCH_PRUNING = "for arbitrary graphs use Torch-Pruning (https://github.com/VainF/Torch-Pruning)"


# --------------------------------------------------------------------------------------------
# Choosing layers and checking amounts
def prunable_layers(model: nn.Module, layers: Iterable[str] | None = None) -> dict[str, nn.Module]:
    """The layers pruning acts on: every ``Linear``/``Conv`` by its dotted name, or ``layers``.

    Args:
        model: any module.
        layers: names as in ``model.named_modules()`` (``"fc1"``, ``"stage2.conv"``);
            ``None`` takes every prunable layer.

    Returns:
        ``{name: module}`` in model order.

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


def _mask(module: nn.Module, name: str = "weight") -> torch.Tensor:
    """The current mask of ``module.name`` (ones if it is not pruned)."""
    mask = getattr(module, name + "_mask", None)
    return mask if mask is not None else torch.ones_like(getattr(module, name))


def _effective(module: nn.Module, name: str = "weight") -> torch.Tensor:
    """``name_orig * name_mask`` for a pruned tensor, else the tensor itself.

    Computed afresh rather than read from ``module.weight``, which the forward pre-hook only
    refreshes at the next forward.
    """
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
    r"""Zero the weights of smallest magnitude, with ``torch.nn.utils.prune`` masks (in place).

    With ``scope="layer"`` each layer loses ``amount`` of its own weights
    (``prune.l1_unstructured``); with ``scope="global"`` the smallest :math:`|w|` over all
    chosen layers together go (``prune.global_unstructured``), so layers with many small
    weights lose more. As in torch, ``amount`` counts among the weights still unmasked:
    pruning 0.5 twice leaves 25% (the masks compose like torch's ``PruningContainer``).
    Use :func:`prune_to_sparsity` to reach a given overall sparsity instead.

    Args:
        model: the model to prune (modified in place and returned).
        amount: fraction in [0, 1] or int count of the remaining weights to prune; with
            ``scope="layer"`` also a dict ``{layer: amount}`` (e.g. from
            :meth:`Sensitivity.suggest`).
        scope: ``"layer"`` or ``"global"``.
        layers: layer names (default: every Linear/Conv, the output layer included).

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
        _check_amount(amount, left, "the chosen layers together")
        torch_prune.global_unstructured(
            [(m, "weight") for m in chosen.values()],
            pruning_method=torch_prune.L1Unstructured,
            amount=amount,
        )
        return model
    # Check every layer first, so a bad amount leaves the model untouched.
    for name, m in chosen.items():
        _check_amount(amounts[name], int(_mask(m).sum()), f"layer {name!r}")
    for name, m in chosen.items():
        torch_prune.l1_unstructured(m, "weight", amount=amounts[name])
    return model


def prune_to_sparsity(
    model: nn.Module,
    sparsity: float,
    scope: str = "global",
    layers: Iterable[str] | None = None,
) -> nn.Module:
    """Prune by magnitude until ``sparsity`` of the chosen weights are masked (in place).

    The amount of each step is worked out from the masks already there, so calling this
    with 0.5, then 0.8, then 0.9 leaves exactly 90% masked; existing masks are kept (a
    sparsity below the current one prunes nothing more).

    Args:
        model: the model (modified in place and returned).
        sparsity: target fraction of masked weights in [0, 1).
        scope: ``"global"`` (one threshold for all chosen layers) or ``"layer"`` (each layer
            reaches ``sparsity`` on its own).
        layers: layer names (default: every Linear/Conv).
    """
    if isinstance(sparsity, bool) or not isinstance(sparsity, numbers.Real):
        raise TypeError(f"sparsity must be a number in [0, 1), got {sparsity!r}")
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity={sparsity} must be in [0, 1): 1 would remove every weight")
    if scope not in ("layer", "global"):
        raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")
    chosen = prunable_layers(model, layers)
    groups = [chosen] if scope == "global" else [{n: m} for n, m in chosen.items()]
    for group in groups:
        total = sum(_mask(m).numel() for m in group.values())
        masked = sum(int((_mask(m) == 0).sum()) for m in group.values())
        more = max(round(sparsity * total) - masked, 0)
        magnitude_prune(model, more, scope="global", layers=list(group))
    return model


# --------------------------------------------------------------------------------------------
# Measuring, making permanent, saving and loading
@dataclass
class SparsityReport:
    """Zeros per layer and in total, counted on the effective weights (``orig × mask``).

    ``report.sparsity`` is the total fraction of zero weights; ``report["fc1"]`` one layer's;
    ``str(report)`` a table. Biases are not counted: pruning acts on weights.
    """

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
    """Zero weights of each prunable layer and in total, on the *effective* weights.

    ``weight_orig`` keeps its values under a mask, so counting zeros there would report a
    pruned model as dense; the effective weight ``weight_orig * weight_mask`` is what the
    model computes with.

    Example:
        >>> net = kdlib.model("tiny")
        >>> print(sparsity_report(magnitude_prune(net, 0.5)))  # doctest: +SKIP
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


def _clone(model: nn.Module) -> nn.Module:
    """``copy.deepcopy`` that also works on masked models.

    A masked layer's ``weight`` is ``weight_orig * weight_mask``, a non-leaf tensor that
    deepcopy refuses; recomputing it without autograd (as the next forward would) fixes that.
    """
    with torch.no_grad():
        for m, name in _pruned_tensors(model):
            setattr(m, name, _effective(m, name))
    return copy.deepcopy(model)


def make_permanent(model: nn.Module) -> nn.Module:
    """Fold every mask into its weight with ``prune.remove`` (in place).

    Afterwards the zeros are ordinary values of ``weight``: no ``weight_orig``, no mask, no
    hook, and training would move them again. The model is not smaller (see :func:`shrink`).
    """
    for m, name in _pruned_tensors(model):
        torch_prune.remove(m, name)
    return model


def save_pruned(model: nn.Module, path: str | os.PathLike) -> Path:
    """Save a pruned model's state dict, masked (``*_orig`` + ``*_mask``) or permanent.

    The file holds only tensors and strings, so :func:`load_pruned` reads it with
    ``torch.load(weights_only=True)``; it is written to a temporary name and renamed, so an
    interrupted save never leaves a file that looks valid.
    """
    path = Path(path)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"format": "kdlib-pruned-1", "state_dict": state}, tmp)
    tmp.replace(path)
    return path


def load_pruned(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load a file from :func:`save_pruned` into ``model`` (same architecture), in place.

    Masks in the file are re-created with ``torch.nn.utils.prune`` (so the model is masked
    again, hooks included); layers the file holds at another size, as :func:`shrink` leaves
    them, are rebuilt at that size first.
    """
    saved = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(saved, dict) or saved.get("format") != "kdlib-pruned-1":
        raise ValueError(f"{path} is not a file written by kdlib.save_pruned")
    state = saved["state_dict"]
    make_permanent(model)
    for mod_name, module in list(model.named_modules()):
        for key in (f"{mod_name}.weight", f"{mod_name}.weight_orig"):
            key = key.lstrip(".")
            if key in state and state[key].shape != getattr(module, "weight", state[key]).shape:
                _set_module(model, mod_name, _blank_like(module, state[key].shape))
    for key in state:
        if key.endswith("_mask"):
            mod_name, _, tensor = key[: -len("_mask")].rpartition(".")
            module = model.get_submodule(mod_name) if mod_name else model
            if not isinstance(getattr(module, tensor, None), torch.Tensor):
                raise ValueError(f"{path} has a mask {key!r} for a tensor the model lacks")
            torch_prune.identity(module, tensor)
    model.load_state_dict(state)
    for m, name in _pruned_tensors(model):
        setattr(m, name, _effective(m, name))  # what the next forward would compute
    return model


def _blank_like(module: nn.Module, shape: torch.Size) -> nn.Module:
    """A layer like ``module`` with a weight of ``shape`` (values to be loaded)."""
    if isinstance(module, nn.Linear):
        return nn.Linear(shape[1], shape[0], bias=module.bias is not None)
    if isinstance(module, nn.Conv2d) and module.groups == 1:
        return nn.Conv2d(
            shape[1],
            shape[0],
            module.kernel_size,
            stride=module.stride,
            padding=module.padding,
            dilation=module.dilation,
            bias=module.bias is not None,
            padding_mode=module.padding_mode,
        )
    if isinstance(module, _BATCHNORM):
        return type(module)(
            shape[0],
            eps=module.eps,
            momentum=module.momentum,
            affine=module.affine,
            track_running_stats=module.track_running_stats,
        )
    raise ValueError(f"cannot resize {type(module).__name__} to the saved shape {tuple(shape)}")


# --------------------------------------------------------------------------------------------
# Structured pruning that physically shrinks
_BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d)
# Modules that act on each unit/channel separately and map 0 to 0, so a unit that is zero
# before them is zero after them and can be removed together with its inputs downstream.
_PASS_THROUGH = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Tanh,
    nn.Hardtanh,
    nn.Dropout,
    nn.Dropout2d,
    nn.Identity,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
)


def unit_norms(module: nn.Module, norm: int | float = 1) -> torch.Tensor:
    r"""The :math:`L_p` norm of each output unit's (Linear) or channel's (Conv) weights.

    Row :math:`j` of a Linear weight, or filter :math:`j` of a conv weight, is unit
    :math:`j`'s incoming weights; a small norm means the unit contributes little. Computed
    on the effective (masked) weights, as ``prune.ln_structured(..., dim=0)`` ranks them.

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

    Each chosen layer loses ``amount`` of its remaining output units, ranked by
    :func:`unit_norms` with ``prune.ln_structured(dim=0)``. Every parameter that feeds a
    removed unit is masked too (its bias, and the weight and bias of a BatchNorm after it),
    so the unit's output is exactly zero for any input. The model keeps its size until
    :func:`shrink` removes the zero units; the two give the same outputs.

    Args:
        model: a (nested) ``nn.Sequential`` model, modified in place and returned.
        amount: fraction in [0, 1) or int count of each layer's remaining units.
        norm: 1 (L1) or 2 (L2), the ``n`` of ``prune.ln_structured``.
        layers: Linear/Conv layers to prune (default: all but the output layer).

    Example:
        >>> net = kdlib.model("hinton-student")
        >>> small = shrink(structured_prune(net, 0.5))
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
    """A new, smaller ordinary model without the units whose output is always zero.

    Works on a copy (the argument is left as it was): masks are made permanent, then every
    unit (Linear) or channel (Conv) that is exactly zero — as :func:`structured_prune`
    leaves them — is removed from its layer and from the next layer's inputs (through
    BatchNorm, activations, pooling and a Flatten). The result has no masks, fewer
    parameters and fewer MACs, and computes the same outputs.

    Raises:
        ValueError: if zero units sit in a layer whose consumer cannot be traced (the
            message names the module), or if a layer would lose every unit.
    """
    net = make_permanent(_clone(model))
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
                new = _new_batchnorm(module, keep_out[name])
            else:
                out_units = module.weight.shape[0]
                rows = keep_out.get(name, torch.arange(out_units))
                cols = _input_columns(module, *keep_in.get(name, (None, 1)))
                make = _new_linear if isinstance(module, nn.Linear) else _new_conv
                new = make(module, rows, cols)
            _set_module(net, name, new)
    return net


def _input_columns(module: nn.Module, keep: torch.Tensor | None, spatial: int) -> torch.Tensor:
    n_in = module.weight.shape[1]
    if keep is None:
        return torch.arange(n_in)
    # After Flatten, channel c of (N, C, H, W) fills inputs c·H·W ... c·H·W + H·W − 1.
    return (keep[:, None] * spatial + torch.arange(spatial)).flatten()


def _new_linear(old: nn.Linear, rows: torch.Tensor, cols: torch.Tensor) -> nn.Linear:
    w = old.weight.detach()
    new = nn.Linear(
        len(cols), len(rows), bias=old.bias is not None, device=w.device, dtype=w.dtype
    )
    with torch.no_grad():
        new.weight.copy_(w[rows][:, cols])
        if old.bias is not None:
            new.bias.copy_(old.bias.detach()[rows])
    return new.train(old.training)


def _new_conv(old: nn.Conv2d, rows: torch.Tensor, cols: torch.Tensor) -> nn.Conv2d:
    w = old.weight.detach()
    new = nn.Conv2d(
        len(cols),
        len(rows),
        old.kernel_size,
        stride=old.stride,
        padding=old.padding,
        dilation=old.dilation,
        bias=old.bias is not None,
        padding_mode=old.padding_mode,
        device=w.device,
        dtype=w.dtype,
    )
    with torch.no_grad():
        new.weight.copy_(w[rows][:, cols])
        if old.bias is not None:
            new.bias.copy_(old.bias.detach()[rows])
    return new.train(old.training)


def _new_batchnorm(old: nn.Module, keep: torch.Tensor) -> nn.Module:
    new = type(old)(
        len(keep),
        eps=old.eps,
        momentum=old.momentum,
        affine=old.affine,
        track_running_stats=old.track_running_stats,
        device=old.weight.device if old.affine else None,
    )
    with torch.no_grad():
        for pname in ("weight", "bias", "running_mean", "running_var"):
            t = getattr(old, pname, None)
            if t is not None:
                getattr(new, pname).copy_(t.detach()[keep])
        if old.num_batches_tracked is not None:
            new.num_batches_tracked.copy_(old.num_batches_tracked)
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
    r"""Prune → fine-tune cycles (Han et al.), the masks held while fine-tuning (in place).

    Step :math:`k = 1..\text{steps}` prunes by magnitude to sparsity :math:`s_k` and then
    fine-tunes with :func:`kdlib.train.fit` at learning rate ``lr * lr_scale``. The masks
    stay on while fine-tuning, so pruned weights remain exactly zero and only the survivors
    adapt. With ``schedule="cubic"`` the :math:`s_k` follow Zhu & Gupta's
    :func:`agp_schedule` (big steps first, small ones near the target), with ``"linear"``
    equal steps. The default is therefore a hybrid: Han et al.'s cycles, one global magnitude
    threshold per step (``scope="global"``), and Zhu & Gupta's cubic spacing of the steps.
    The model is left masked; call :func:`make_permanent` when done.

    Args:
        model: a trained model (pruned in place).
        data: the data set to fine-tune on.
        target_sparsity: fraction of the chosen weights masked at the end, in [0, 1).
        steps: number of prune → fine-tune cycles (> 0).
        finetune_epochs: epochs of fine-tuning after each pruning step (> 0).
        lr_scale: fine-tuning learning rate as a fraction of ``lr`` (Han et al. lower it).
        lr: the learning rate the model was trained with.
        scope: ``"global"`` or ``"layer"``, as in :func:`prune_to_sparsity`.
        layers: layer names (default: every Linear/Conv).
        schedule: ``"cubic"`` or ``"linear"`` spacing of the sparsity steps.
        seed, progress, fit_kwargs: passed on to :func:`kdlib.train.fit`.

    Returns:
        One :class:`~kdlib.train.History` over all fine-tuning epochs; each row also has
        ``step``, ``sparsity`` (masked fraction during that epoch) and, on the first epoch of
        a step, ``pruned_acc`` (accuracy on ``data``'s test split right after pruning, before
        fine-tuning). ``history.info["masks"]`` holds a copy of every layer's boolean mask
        (True = kept) after each step, ``[{layer: mask}, ...]``.
    """
    if isinstance(target_sparsity, bool) or not isinstance(target_sparsity, numbers.Real):
        raise TypeError(f"target_sparsity must be a number, got {target_sparsity!r}")
    if not 0 <= target_sparsity < 1:
        raise ValueError(f"target_sparsity={target_sparsity} must be in [0, 1)")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps <= 0:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if not isinstance(finetune_epochs, int) or finetune_epochs <= 0:
        raise ValueError(f"finetune_epochs must be a positive integer, got {finetune_epochs!r}")
    if not lr_scale > 0:
        raise ValueError(f"lr_scale must be > 0, got {lr_scale!r}")
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
        fit(
            model,
            data,
            epochs=finetune_epochs,
            lr=lr * lr_scale,
            seed=None if seed is None else seed + k,
            progress=progress,
            history=history,
            desc=f"prune step {k}/{steps}",
            **fit_kwargs,
        )
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
    r"""Zhu & Gupta's gradual pruning schedule (2017): a callable ``t -> s_t``.

    .. math::
        s_t = s_f + (s_i - s_f)\left(1 - \frac{t - t_0}{n\,\Delta t}\right)^3
        \quad\text{for } t_0 \le t \le t_0 + n\,\Delta t,

    :math:`s_i` before :math:`t_0` and :math:`s_f` after. Pruning happens at
    :math:`t_0, t_0 + \Delta t, \dots, t_0 + n\Delta t` (:attr:`times`); sparsity rises fast
    while many redundant weights remain, then slowly. :meth:`callback` prunes inside
    :func:`kdlib.train.fit`, with ``t`` counted in finished epochs.
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
        """A ``fit`` callback pruning to ``s_t`` after epoch ``t`` at each pruning time.

        It writes ``sparsity`` (after pruning) into the epoch's history row.

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
    r"""Zhu & Gupta's cubic sparsity schedule :math:`s_t` (see :class:`AGPSchedule`).

    Args:
        s_i: initial sparsity in [0, 1).
        s_f: final sparsity in [s_i, 1).
        t0: the step (or epoch) at which pruning starts.
        n: number of pruning steps (> 0).
        dt: steps (or epochs) between two pruning steps (> 0).

    Example:
        >>> s = agp_schedule(0.0, 0.9, t0=0, n=10, dt=1)
        >>> s(0), round(s(5), 4), s(10)
        (0.0, 0.7875, 0.9)
    """
    for name, v in (("s_i", s_i), ("s_f", s_f)):
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not 0 <= v < 1:
            raise ValueError(f"{name} must be a sparsity in [0, 1), got {v!r}")
    if s_f < s_i:
        raise ValueError(f"s_f={s_f} is below s_i={s_i}: the schedule only adds sparsity")
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n <= 0:
        raise ValueError(f"n must be a positive integer number of pruning steps, got {n!r}")
    if not dt > 0:
        raise ValueError(f"dt must be > 0, got {dt!r}")
    return AGPSchedule(float(s_i), float(s_f), t0, int(n), dt)


# --------------------------------------------------------------------------------------------
# Accuracy against sparsity, and per-layer sensitivity
@dataclass
class SparsitySweep:
    """Accuracy of one-shot magnitude pruning at each sparsity (no fine-tuning)."""

    sparsities: list[float]  # overall masked fraction of the chosen layers
    accuracy: list[float]  # accuracy on the evaluated split at each sparsity
    masks: dict[float, dict[str, torch.Tensor]]  # sparsity -> layer -> bool mask (if kept)

    def lookup(self, sparsity: float) -> float:
        """Accuracy at ``sparsity`` (must be one of the swept values)."""
        for s, acc in zip(self.sparsities, self.accuracy, strict=True):
            if abs(s - sparsity) < 1e-9:
                return acc
        raise ValueError(f"sparsity {sparsity} was not swept; swept: {self.sparsities}")


def sparsity_sweep(
    model: nn.Module,
    data: Dataset,
    sparsities: Sequence[float],
    scope: str = "global",
    layers: Iterable[str] | None = None,
    split: str = "test",
    keep_masks: bool = False,
) -> SparsitySweep:
    """Prune copies of ``model`` by magnitude to each sparsity and measure accuracy.

    The model itself is not changed. With ``keep_masks`` the masks are returned too, so a
    widget can show them later without pruning again.
    """
    names = list(prunable_layers(model, layers))
    accs, masks = [], {}
    for s in sparsities:
        net = prune_to_sparsity(_clone(model), s, scope=scope, layers=names)
        accs.append(evaluate(net, data, split=split)["accuracy"])
        if keep_masks:
            mods = prunable_layers(net, names)
            masks[s] = {n: _mask(m).bool().cpu() for n, m in mods.items()}
    return SparsitySweep([float(s) for s in sparsities], accs, masks)


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
        head = f"{'layer':<14}" + "".join(f"{a:>8.0%}" for a in self.amounts)
        rows = [
            f"{n:<14}" + "".join(f"{a:>8.1%}" for a in accs) for n, accs in self.accuracy.items()
        ]
        return "\n".join(
            [
                f"{self.split} accuracy when pruned alone (baseline {self.baseline:.1%})",
                head,
                *rows,
            ]
        )

    def suggest(self, target_sparsity: float) -> dict[str, float]:
        r"""Per-layer amounts reaching ``target_sparsity`` overall at the least predicted loss.

        Each layer's scan gives its accuracy drop :math:`d_\ell` against the number of
        weights removed (never decreasing, and convexified: the lower convex hull through
        0). Treating the drops as additive, the cheapest way to remove
        :math:`s \cdot N` weights takes the hull segments in order of drop per weight
        removed, so every layer ends where one more weight would cost about as much as in
        any other layer. Robust layers take most of the sparsity; a fragile one may keep
        all its weights.

        Returns:
            ``{layer: amount}``, ready for ``magnitude_prune(model, amounts)``.
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
    """Accuracy with each layer pruned alone by magnitude, at each amount.

    Each point prunes a copy of ``model``; the model itself is not changed. The default
    evaluates on the *train* split: the amounts are then chosen without looking at the test
    set, which stays an honest final measurement.

    Args:
        model: a trained model.
        data: the data set.
        amounts: fractions of each layer's weights to prune, increasing, in (0, 1].
        layers: layer names (default: every Linear/Conv).
        split: ``"train"`` or ``"test"``.
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
            net = _clone(model)
            torch_prune.l1_unstructured(net.get_submodule(name), "weight", amount=a)
            accuracy[name].append(evaluate(net, data, split=split)["accuracy"])
        sizes[name] = int(_mask(model.get_submodule(name)).numel())
    return Sensitivity(baseline, amounts, accuracy, sizes, split)
