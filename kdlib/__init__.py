"""kdlib: the small library behind the course on knowledge distillation and pruning.

One topic per module: ``data``, ``models``, ``train``, ``metrics`` (and, as the course grows,
``losses``, ``distill``, ``params``, ``features``, ``prune``, ``viz``, ``widgets``, ``checks``,
``grade``). What the notebooks use is re-exported here.
"""

from . import parallel, viz
from .data import Dataset, DownloadError, batches, known_datasets, load
from .distill import LOSS_NAMES, DistillBatch, distill, frozen
from .losses import (
    KDLoss,
    MSEKDLoss,
    MSELogitLoss,
    SoftTargetCELoss,
    SoftTargetKLLoss,
    kd_loss,
    mse_kd_loss,
    mse_logits,
    soft_target_ce,
    soft_target_kl,
)
from .metrics import accuracy, agreement, count_params, latency, macs, mean_kl, size_bytes
from .models import cnn, mlp, model, presets
from .recipes import RECIPES, Recipe, train_preset, trained_teacher
from .train import History, evaluate, fit, get_device, predict, seed_everything

__version__ = "0.1.0"

__all__ = [
    "parallel",
    "viz",
    # data
    "Dataset",
    "DownloadError",
    "batches",
    "known_datasets",
    "load",
    # models
    "cnn",
    "mlp",
    "model",
    "presets",
    # recipes
    "RECIPES",
    "Recipe",
    "train_preset",
    "trained_teacher",
    # train
    "History",
    "evaluate",
    "fit",
    "get_device",
    "predict",
    "seed_everything",
    # metrics
    "accuracy",
    "agreement",
    "count_params",
    "latency",
    "macs",
    "mean_kl",
    "size_bytes",
    # losses (logit losses)
    "KDLoss",
    "MSEKDLoss",
    "MSELogitLoss",
    "SoftTargetCELoss",
    "SoftTargetKLLoss",
    "kd_loss",
    "mse_kd_loss",
    "mse_logits",
    "soft_target_ce",
    "soft_target_kl",
    # distill
    "LOSS_NAMES",
    "DistillBatch",
    "distill",
    "frozen",
]
