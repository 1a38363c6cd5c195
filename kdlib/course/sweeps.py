"""Grids of runs computed once, so that a widget can look results up instead of training.

:func:`distill_sweep` runs :func:`kdlib.distill` over a grid of settings; :func:`sparsity_sweep`
prunes copies of a model to each sparsity and evaluates them.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..data import Dataset
from ..distill import distill
from ..prune import copy_pruned, prunable_layers, prune_to_sparsity
from ..train import History, evaluate, predict

__all__ = ["DistillSweep", "distill_sweep", "SparsitySweep", "sparsity_sweep"]


@dataclass
class DistillSweep:
    """The histories of :func:`kdlib.distill` runs over a grid, to look up without training."""

    keys: list[str]  # the swept arguments, e.g. ["alpha", "T"]
    settings: list[tuple]  # one tuple of values per run, in the order of ``keys``
    histories: list[History]  # one per run, same order

    def values(self, key: str) -> list:
        """The swept values of ``key``, in grid order."""
        if key not in self.keys:
            raise ValueError(f"{key!r} was not swept; swept: {self.keys}")
        i = self.keys.index(key)
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


def distill_sweep(
    make_student: Callable[[], nn.Module],
    teacher: nn.Module,
    data: Dataset,
    grid: dict[str, Sequence[float]],
    loss="kd",
    **kwargs,
) -> DistillSweep:
    """Run :func:`kdlib.distill` once for every combination of the values in ``grid``.

    Args:
        make_student: returns a fresh student (same initial weights each call).
        teacher, data, loss: shared by every run.
        grid: e.g. ``{"alpha": [0.5, 0.9], "T": [1, 4]}``, run in ``itertools.product`` order.
        **kwargs: the other arguments of :func:`kdlib.distill`.

    Example:
        >>> sweep = distill_sweep(lambda: kdlib.model("tiny", seed=0), teacher, data,
        ...                       {"alpha": [0.5, 0.9], "T": [1, 4]}, epochs=3)
        >>> sweep.lookup(alpha=0.9, T=4).last("test_acc")  # doctest: +SKIP
    """
    if not grid or any(len(v) == 0 for v in grid.values()):
        raise ValueError(f"grid needs at least one value per key, got {grid!r}")
    clash = set(grid) & set(kwargs)
    if clash:
        raise ValueError(f"{sorted(clash)} given both in grid and as fixed arguments")
    keys = list(grid)
    varying = {"augment", "extra_loss", "cache_teacher_logits", "teacher_logits"}
    if not varying & (set(kwargs) | set(keys)):  # the teacher runs once for the whole grid
        kwargs["teacher_logits"] = predict(teacher, data.X_train)
    settings, histories = [], []
    for values in itertools.product(*(grid[k] for k in keys)):
        setting = dict(zip(keys, values, strict=True))
        histories.append(distill(make_student(), teacher, data, loss, **kwargs, **setting))
        settings.append(tuple(values))
    return DistillSweep(keys, settings, histories)


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
    """Accuracy of one-shot magnitude pruning of copies of ``model`` at each sparsity.

    Args:
        model: the model to prune (left as it is: copies are pruned).
        data, split: where accuracy is measured.
        sparsities: fractions in [0, 1) of the chosen weights to mask.
        scope, layers: as in :func:`kdlib.prune_to_sparsity`.
        keep_masks: keep each copy's boolean masks (for the sparsity slider).
    """
    names = list(prunable_layers(model, layers))
    accs, masks = [], {}
    for s in sparsities:
        net = prune_to_sparsity(copy_pruned(model), s, scope=scope, layers=names)
        accs.append(evaluate(net, data, split=split)["accuracy"])
        if keep_masks:
            mods = prunable_layers(net, names)
            masks[s] = {n: m.weight_mask.bool().cpu() for n, m in mods.items()}
    return SparsitySweep([float(s) for s in sparsities], accs, masks)
