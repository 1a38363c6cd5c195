"""kdlib: the small library behind the course on knowledge distillation, pruning and
quantization.

One topic per module: ``data``, ``models``, ``train`` (and ``parallel``, its device,
multi-process and mixed-precision side), ``metrics``, ``losses``, ``distill``, ``features``,
``params``, ``prune``, ``quant``, ``guards`` and ``validate`` (argument checks shared by all).
Their public functions are re-exported here, except ``quant``'s: ``kdlib.quant`` loads on first
use, since importing torchao takes a few seconds.

The course's own machinery (trained teachers and their cache, results tables, plots, widgets,
exercise checkers, the grader, the notebook runner) lives in :mod:`kdlib.course`, which
``import kdlib`` does not load: ``kdlib.course`` is imported on first use.
"""

from . import guards, parallel, validate
from .data import Dataset, DownloadError, batches, known_datasets, load
from .distill import (
    LOSS_NAMES,
    DistillBatch,
    DistillSweep,
    distill,
    distill_sweep,
    frozen,
    random_shift,
)
from .features import (
    FeatureCapture,
    attention_maps,
    distill_features,
    get_features,
    layer_names,
    projector,
)
from .losses import (
    CosineFeatureLoss,
    HintLoss,
    attention_map,
    attention_transfer_loss,
    cosine_feature_loss,
    hint_loss,
    kd_loss,
    mse_kd_loss,
    mse_logits,
    soft_target_ce,
    soft_target_kl,
    soften,
)
from .metrics import (
    accuracy,
    agreement,
    compare_latency,
    count_params,
    latency,
    macs,
    mean_kl,
    pareto_front,
    size_bytes,
)
from .models import cnn, mlp, model, presets
from .params import STRATEGIES, distill_params, inherit, low_rank
from .prune import (
    AGPSchedule,
    Sensitivity,
    SparsityReport,
    SparsitySweep,
    agp_schedule,
    iterative_prune,
    load_pruned,
    magnitude_prune,
    make_permanent,
    prunable_layers,
    prune_to_sparsity,
    save_pruned,
    sensitivity_scan,
    shrink,
    sparsity_report,
    sparsity_sweep,
    structured_prune,
    unit_norms,
)
from .train import History, evaluate, fit, get_device, predict, seed_everything

__version__ = "0.1.0"

__all__ = [
    "parallel",
    "guards",
    "validate",
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
    "compare_latency",
    "count_params",
    "latency",
    "macs",
    "mean_kl",
    "pareto_front",
    "size_bytes",
    # prune
    "AGPSchedule",
    "Sensitivity",
    "SparsityReport",
    "SparsitySweep",
    "agp_schedule",
    "iterative_prune",
    "load_pruned",
    "magnitude_prune",
    "make_permanent",
    "prunable_layers",
    "prune_to_sparsity",
    "save_pruned",
    "sensitivity_scan",
    "shrink",
    "sparsity_report",
    "sparsity_sweep",
    "structured_prune",
    "unit_norms",
    # losses (logit losses)
    "kd_loss",
    "mse_kd_loss",
    "mse_logits",
    "soft_target_ce",
    "soft_target_kl",
    "soften",
    # distill
    "LOSS_NAMES",
    "DistillBatch",
    "DistillSweep",
    "distill",
    "distill_sweep",
    "frozen",
    "random_shift",
    # params (parameter distillation)
    "STRATEGIES",
    "distill_params",
    "inherit",
    "low_rank",
    # features (feature distillation) and the feature losses
    "FeatureCapture",
    "attention_maps",
    "distill_features",
    "get_features",
    "layer_names",
    "projector",
    "CosineFeatureLoss",
    "HintLoss",
    "attention_map",
    "attention_transfer_loss",
    "cosine_feature_loss",
    "hint_loss",
]


def __getattr__(name: str):
    # Two modules load on first use: the course's machinery (kdlib.course), so `import kdlib`
    # stays the library, and quantization (kdlib.quant), whose torchao import takes seconds.
    if name in ("course", "quant"):
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'kdlib' has no attribute {name!r}")
