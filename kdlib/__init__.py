"""kdlib: the small library behind the course on knowledge distillation, pruning and
quantization.

One topic per module: ``data``, ``models``, ``train`` (with ``parallel``: devices, processes,
mixed precision), ``metrics``, ``losses``, ``distill``, ``features``, ``params``, ``prune``,
``quant``, ``guards`` and ``validate`` (the argument checks they share). Each module's public
names (its ``__all__``) are re-exported here, except ``guards``, ``parallel`` and ``validate``
(use them by module) and ``quant``, which loads on first use since importing torchao takes
seconds. The course's own machinery (trained teachers, results tables, plots, widgets, exercise
checkers, the grader) is :mod:`kdlib.course`, which ``import kdlib`` does not load.
"""

import importlib

from . import guards, parallel, validate
from .data import *  # noqa: F403
from .distill import *  # noqa: F403
from .features import *  # noqa: F403
from .losses import *  # noqa: F403
from .metrics import *  # noqa: F403
from .models import *  # noqa: F403
from .params import *  # noqa: F403
from .prune import *  # noqa: F403
from .train import *  # noqa: F403

__version__ = "0.1.0"
__all__ = ["guards", "parallel", "validate"]
for _name in "data models train metrics losses distill features params prune".split():
    __all__ += importlib.import_module(f".{_name}", __name__).__all__
del _name

_MOVED = ("random_shift", "distill_sweep", "sparsity_sweep")  # now in the course's machinery


def __getattr__(name: str):
    # kdlib.course (the machinery) and kdlib.quant (torchao) load on first use
    if name in ("course", "quant"):
        return importlib.import_module(f".{name}", __name__)
    moved = f"; it moved to kdlib.course.{name}" if name in _MOVED else ""
    raise AttributeError(f"module 'kdlib' has no attribute {name!r}{moved}")
