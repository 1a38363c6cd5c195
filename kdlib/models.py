"""The course's teachers and students: ``nn.Sequential`` models with named children (``"fc1"``,
``"stage2"``) so lessons address layers by name. :func:`mlp` and :func:`cnn` build them,
:func:`model` builds a preset by name and :func:`presets` lists the presets.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["mlp", "cnn", "model", "presets", "PRESETS"]


def mlp(
    in_features: int, hidden: Sequence[int], out_features: int, *, dropout: float = 0.0
) -> nn.Sequential:
    """A multilayer perceptron: ``flatten, fc1, act1, [drop1,] ..., fcK`` (``fcK`` the output).

    Shape:
        input ``(N, *)`` with ``prod(*) == in_features``; output ``(N, out_features)`` logits.

    Example:
        >>> mlp(784, [800, 800], 10)(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """
    if in_features <= 0 or out_features <= 0 or any(w <= 0 for w in hidden):
        raise ValueError(
            f"layer widths must be positive, got in={in_features}, hidden={list(hidden)}, "
            f"out={out_features}"
        )
    layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
    width = in_features
    for i, w in enumerate(hidden, start=1):
        layers[f"fc{i}"], layers[f"act{i}"] = nn.Linear(width, w), nn.ReLU()
        if dropout > 0:
            layers[f"drop{i}"] = nn.Dropout(dropout)
        width = w
    layers[f"fc{len(hidden) + 1}"] = nn.Linear(width, out_features)
    return nn.Sequential(layers)


def cnn(
    channels: Sequence[int],
    num_classes: int = 10,
    *,
    input_shape: Sequence[int] = (1, 28, 28),
    hidden: int | None = None,
) -> nn.Sequential:
    """A small CNN: stages ``Conv2d(3×3) → BatchNorm2d → ReLU → MaxPool2d(2)``, then a head
    ``Flatten → [Linear → ReLU →] Linear``.

    Shape:
        input ``(N, C, H, W)``; after ``stageK``: ``(N, channels[K-1], H / 2^K, W / 2^K)``;
        output ``(N, num_classes)``.

    Example:
        >>> cnn((8, 16))(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """
    c, h, w = input_shape
    stages: OrderedDict[str, nn.Module] = OrderedDict()
    for k, out_c in enumerate(channels, start=1):
        conv, bn = nn.Conv2d(c, out_c, kernel_size=3, padding=1), nn.BatchNorm2d(out_c)
        stage = OrderedDict(conv=conv, bn=bn, act=nn.ReLU(), pool=nn.MaxPool2d(2))
        stages[f"stage{k}"] = nn.Sequential(stage)
        c, h, w = out_c, h // 2, w // 2
    head: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
    if hidden:
        head["fc1"], head["act1"] = nn.Linear(c * h * w, hidden), nn.ReLU()
    head[f"fc{2 if hidden else 1}"] = nn.Linear(hidden or c * h * w, num_classes)
    stages["head"] = nn.Sequential(head)
    net = nn.Sequential(stages)
    net.input_shape = tuple(input_shape)  # read by kdlib.macs and kdlib.latency
    return net


# name -> (builder, keyword arguments, one line for learners)
PRESETS: dict[str, tuple[str, dict, str]] = {
    "hinton-teacher": ("mlp", {"hidden": [1200, 1200], "dropout": 0.2}, "Hinton's 1200-1200 MLP"),
    "hinton-student": ("mlp", {"hidden": [800, 800]}, "Hinton's 800-800 MLP student"),
    "lenet-300-100": ("mlp", {"hidden": [300, 100]}, "LeNet-300-100 (Han et al.'s pruning MLP)"),
    "tiny": ("mlp", {"hidden": [32]}, "a tiny 32-unit MLP"),
    "cnn-teacher": ("cnn", {"channels": (16, 32), "hidden": 64}, "the course's CNN teacher"),
    "cnn-student": ("cnn", {"channels": (8, 16)}, "a thin CNN student"),
    "cnn-thin": ("cnn", {"channels": (4, 8)}, "a very thin CNN student"),
    # CIFAR-10: a teacher of 1.4 M parameters (~40 M MACs per image), a student 40× smaller.
    "cifar-teacher": (
        "cnn",
        {"channels": (64, 128, 256), "hidden": 256, "input_shape": (3, 32, 32)},
        "CNN teacher for CIFAR-10",
    ),
    "cifar-student": (
        "cnn",
        {"channels": (16, 32, 64), "input_shape": (3, 32, 32)},
        "thin CNN student for CIFAR-10",
    ),
}


def presets() -> dict[str, str]:
    """Preset names with a one-line description each."""
    return {name: desc for name, (_, _, desc) in PRESETS.items()}


def model(
    name: str,
    *,
    input_shape: Sequence[int] | None = None,
    num_classes: int = 10,
    seed: int | None = None,
) -> nn.Sequential:
    """Build a preset by name (``input_shape``: default the preset's; ``seed``: fixed weights).

    Example:
        >>> model("hinton-student", seed=0).fc1
        Linear(in_features=784, out_features=800, bias=True)
    """
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; known presets: {', '.join(PRESETS)}")
    kind, kwargs, _ = PRESETS[name]
    kwargs = dict(kwargs)
    preset_shape = kwargs.pop("input_shape", (1, 28, 28))
    shape = preset_shape if input_shape is None else input_shape
    if seed is not None:
        torch.manual_seed(seed)
    if kind == "mlp":
        return mlp(math.prod(shape), out_features=num_classes, **kwargs)
    return cnn(num_classes=num_classes, input_shape=shape, **kwargs)
