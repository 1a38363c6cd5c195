"""Training recipes for the course's presets, and a cache of trained teachers.

A :class:`Recipe` says how a preset is trained from scratch (epochs, learning rate, schedule);
every notebook, test and results table uses the same ones, so their numbers agree.
:func:`train_preset` trains a preset by its recipe. :func:`teacher` returns a trained teacher,
training it once and then loading it from the cache (``$KDLIB_CACHE/teachers``), so the
notebooks do not each spend ten seconds retraining the same network.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .. import parallel
from .. import validate as V
from ..data import Dataset, cache_dir
from ..models import model as build_model
from ..train import History, fit, get_device

__all__ = ["Recipe", "RECIPES", "train_preset", "trained_teacher", "random_shift"]


def random_shift(max_shift: int = 2) -> Callable[[torch.Tensor], torch.Tensor]:
    """An ``augment`` that shifts each image by whole pixels, uniform in ``[-max_shift,
    max_shift]`` in each direction (the border repeats): a larger transfer set, labelled by the
    teacher per batch. Draws come from PyTorch's global generator, which ``fit(seed=...)`` seeds.

    Shape:
        X: ``(N, C, H, W)``; output: the same shape.

    Example:
        >>> hist = kdlib.distill(student, teacher, data, augment=random_shift(2))
        >>> hist.info["teacher_logits"]
        'per-batch'
    """
    V.integer("max_shift", max_shift, low=0)

    def shift(X: torch.Tensor) -> torch.Tensor:
        if X.ndim != 4:
            raise ValueError(f"random_shift needs images (N, C, H, W), got {tuple(X.shape)}")
        N, _, H, W = X.shape  # batch, channels, height, width
        d = torch.randint(-max_shift, max_shift + 1, (N, 2)).to(X.device, X.dtype)
        theta = torch.zeros(N, 2, 3, device=X.device, dtype=X.dtype)
        theta[:, 0, 0] = theta[:, 1, 1] = 1.0
        # affine_grid works in [-1, 1] coordinates: one pixel is 2 / width
        theta[:, 0, 2], theta[:, 1, 2] = 2 * d[:, 0] / W, 2 * d[:, 1] / H
        grid = F.affine_grid(theta, list(X.shape), align_corners=False)
        return F.grid_sample(X, grid, mode="nearest", padding_mode="border", align_corners=False)

    return shift


@dataclass(frozen=True)
class Recipe:
    """How a preset is trained from scratch on the course's data."""

    epochs: int  # passes over the training split
    lr: float  # Adam learning rate at the start
    schedule: str = "cosine"  # "cosine" decays the learning rate to 0 over the run
    batch_size: int = 128  # examples per step
    weight_decay: float = 0.0  # L2 penalty
    max_shift: int = 0  # move each training image by up to this many pixels (0: no jitter)


RECIPES: dict[str, Recipe] = {
    "cnn-teacher": Recipe(epochs=10, lr=3e-3),
    # Hinton et al. (2015) trained their big MLP with dropout and jittered the digits by up to
    # two pixels: a teacher clearly better than the students that train without it.
    "hinton-teacher": Recipe(epochs=20, lr=1e-3, max_shift=2),
    "hinton-student": Recipe(epochs=20, lr=1e-3),
    "lenet-300-100": Recipe(epochs=20, lr=1e-3),
    "tiny": Recipe(epochs=20, lr=3e-3),
    "cnn-student": Recipe(epochs=10, lr=3e-3),
    "cnn-thin": Recipe(epochs=10, lr=3e-3),
    # CIFAR-10 on a GPU (not tuned: no augmentation, so the teacher overfits after ~15 epochs)
    "cifar-teacher": Recipe(epochs=15, lr=1e-3, batch_size=256, weight_decay=5e-4),
    "cifar-student": Recipe(epochs=15, lr=3e-3, batch_size=256),
}


def train_preset(
    name: str,
    data: Dataset,
    seed: int = 0,
    *,
    epochs: int | None = None,
    device: str | torch.device | None = None,
    progress: bool | None = None,
) -> tuple[nn.Module, History]:
    """Build preset ``name`` with weights from ``seed`` and train it by its recipe.

    Args:
        name: a preset with a recipe (see ``RECIPES``).
        data: the data set.
        seed: seeds the initial weights and the shuffling.
        epochs: override the recipe's number of epochs (e.g. for a quick test).

    Returns:
        ``(model, history)``, the model in eval mode.
    """
    if name not in RECIPES:
        raise ValueError(
            f"no recipe for preset {name!r}; presets with recipes: {', '.join(RECIPES)}"
        )
    r = RECIPES[name]
    net = build_model(name, input_shape=data.input_shape, num_classes=data.num_classes, seed=seed)
    hist = fit(
        net,
        data,
        epochs=epochs or r.epochs,
        lr=r.lr,
        batch_size=r.batch_size,
        weight_decay=r.weight_decay,
        schedule=r.schedule,
        augment=random_shift(r.max_shift) if r.max_shift else None,
        seed=seed,
        device=device,
        progress=progress,
        desc=name,
    )
    return net, hist


def _data_digest(data: Dataset) -> str:
    """SHA-256 of the data's tensors: another split, subset or order is another data set."""
    h = hashlib.sha256()
    for t in (data.X_train, data.y_train, data.X_test, data.y_test):
        h.update(str((tuple(t.shape), str(t.dtype))).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


# Environment variables that choose the CPU instructions of oneDNN's and MKL's kernels.
_ISA_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "MKL_CBWR")


def _cache_key(name: str, data: Dataset, seed: int, recipe: Recipe, device: torch.device) -> str:
    """The teacher's cache file name: a digest of everything that decides its weights.

    Training is deterministic for a given torch build, thread count, device, CPU instruction
    set and process count, but any of them moves the last digits of the weights, and those
    move every printed number downstream. A teacher trained in another setting is therefore
    another file, side by side.
    """
    facts = {
        "preset": name,
        "data": data.name,
        "n_train": len(data.X_train),
        "data_sha256": _data_digest(data),  # the name alone would mix up splits
        "seed": seed,
        "recipe": asdict(recipe),
        "torch": torch.__version__,  # the full build: 2.13.0+cpu and +cu130 sum differently
        "threads": torch.get_num_threads(),  # float sums are split by thread
        "device": device.type,
        "machine": platform.machine(),
        # AVX2 and AVX-512 kernels add up in other orders
        "cpu_kernels": torch.backends.cpu.get_cpu_capability(),
        "isa_limits": {k: os.environ.get(k) for k in _ISA_VARIABLES},
        "processes": parallel.world_size(),
    }
    digest = hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:12]
    return f"{name}-{data.name}-seed{seed}-{digest}"


def _load_cached(path: Path, preset: str, data: Dataset) -> nn.Module | None:
    """The teacher stored at ``path``, or ``None`` (with a warning) if the file is unreadable."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        net = build_model(preset, input_shape=data.input_shape, num_classes=data.num_classes)
        net.load_state_dict(saved["state_dict"])
        net.history = History(rows=json.loads(saved["history"]))
    except Exception as e:  # truncated, corrupt or foreign file: a cache miss, not a crash
        warnings.warn(
            f"ignoring unreadable cached teacher {path} ({type(e).__name__}); training it again",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    return net


def _save_cached(path: Path, net: nn.Module, hist: History) -> None:
    """Write the teacher atomically: a reader never sees half a file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
        with V.atomic_path(path) as tmp:
            torch.save({"state_dict": state, "history": json.dumps(hist.rows)}, tmp)
    except OSError:
        pass  # a read-only cache only costs time, never correctness


def trained_teacher(
    data: Dataset,
    seed: int = 0,
    *,
    preset: str = "cnn-teacher",
    cache: bool = True,
    device: str | torch.device | None = None,
    progress: bool | None = None,
) -> nn.Module:
    """A trained teacher for ``data``: from the cache if it is there, else trained now.

    The cache holds only a state dict (loaded with ``weights_only=True``) and the training
    history, written atomically. Its key holds everything that decides the weights (data,
    recipe, seed, torch build, thread count, device, CPU instructions, process count), so a
    cached teacher is the very network this process would train. An unreadable cache file is
    a cache miss, with a warning.

    Returns:
        The teacher in eval mode, with ``teacher.history`` (a :class:`History`) attached.
    """
    recipe = RECIPES.get(preset)
    if recipe is None:
        raise ValueError(
            f"no recipe for preset {preset!r}; presets with recipes: {', '.join(RECIPES)}"
        )
    train_device = get_device(device)  # where train_preset (fit) would train it
    path = (
        cache_dir() / "teachers" / (_cache_key(preset, data, seed, recipe, train_device) + ".pt")
    )
    net = _load_cached(path, preset, data) if cache and path.exists() else None
    if parallel.is_distributed():
        # Under torchrun all ranks train together (DDP), so they must agree to load or train.
        if parallel.all_reduce([float(net is not None)])[0] < parallel.world_size():
            net = None
    if net is not None:
        net.to(device if device is not None else data.device)
        return net.eval()
    net, hist = train_preset(preset, data, seed, device=device, progress=progress)
    net.history = hist
    if cache and parallel.is_main():  # one writer per cache, even under torchrun
        _save_cached(path, net, hist)
    return net.eval()
