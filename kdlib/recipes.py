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
from dataclasses import asdict, dataclass

import torch
from torch import nn

from . import parallel
from .data import Dataset, cache_dir
from .models import model as build_model
from .train import History, fit

__all__ = ["Recipe", "RECIPES", "train_preset", "trained_teacher"]


@dataclass(frozen=True)
class Recipe:
    """How a preset is trained from scratch on the course's data."""

    epochs: int  # passes over the training split
    lr: float  # Adam learning rate at the start
    schedule: str = "cosine"  # "cosine" decays the learning rate to 0 over the run
    batch_size: int = 128  # examples per step
    weight_decay: float = 0.0  # L2 penalty


RECIPES: dict[str, Recipe] = {
    "cnn-teacher": Recipe(epochs=10, lr=3e-3),
    "hinton-teacher": Recipe(epochs=20, lr=1e-3),
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


def _cache_key(name: str, data: Dataset, seed: int, recipe: Recipe) -> str:
    facts = {
        "preset": name,
        "data": data.name,
        "n_train": len(data.X_train),
        "data_sha256": _data_digest(data),  # the name alone would mix up splits
        "seed": seed,
        "recipe": asdict(recipe),
        "torch": torch.__version__.split("+")[0],
    }
    digest = hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:12]
    return f"{name}-{data.name}-seed{seed}-{digest}"


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
    history, written atomically. Training is deterministic on a given machine, so a cached
    and a freshly trained teacher are the same network.

    Returns:
        The teacher in eval mode, with ``teacher.history`` (a :class:`History`) attached.
    """
    recipe = RECIPES.get(preset)
    if recipe is None:
        raise ValueError(
            f"no recipe for preset {preset!r}; presets with recipes: {', '.join(RECIPES)}"
        )
    folder = cache_dir() / "teachers"
    path = folder / (_cache_key(preset, data, seed, recipe) + ".pt")
    hit = cache and path.exists()
    if parallel.is_distributed():
        # Under torchrun all ranks train together (DDP), so they must agree to load or train.
        hit = parallel._all_reduce([float(hit)])[0] == parallel.world_size()
    if hit:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        net = build_model(preset, input_shape=data.input_shape, num_classes=data.num_classes)
        net.load_state_dict(saved["state_dict"])
        net.history = History(rows=json.loads(saved["history"]))
        net.to(device if device is not None else data.device)
        return net.eval()
    net, hist = train_preset(preset, data, seed, device=device, progress=progress)
    net.history = hist
    if cache and parallel.is_main():  # one writer per cache, even under torchrun
        try:
            folder.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
            torch.save({"state_dict": state, "history": json.dumps(hist.rows)}, tmp)
            tmp.replace(path)
        except OSError:
            pass  # a read-only cache only costs time, never correctness
    return net.eval()
