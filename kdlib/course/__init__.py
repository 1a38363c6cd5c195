"""The course's machinery, beside the library: what the notebooks, exercises and CI use but a
reader of :mod:`kdlib` does not need.

- :mod:`~kdlib.course.recipes`: each preset's training recipe and the cache of trained
  teachers (:func:`trained_teacher`);
- :mod:`~kdlib.course.results`: the README's results tables (``python -m kdlib.course.results``);
- :mod:`~kdlib.course.viz` and :mod:`~kdlib.course.widgets`: plots and interactive widgets,
  and :mod:`~kdlib.course.sweeps`: the grids of runs the widgets look up;
- :mod:`~kdlib.course.checks`, :mod:`~kdlib.course.exercises`, :mod:`~kdlib.course.grade`,
  :mod:`~kdlib.course.record`, :mod:`~kdlib.course.sandbox`: exercise checkers, student
  versions, the grader and its sandbox;
- :mod:`~kdlib.course.notebooks`: the notebook runner; :mod:`~kdlib.course.run`: the command
  line for ``torchrun``.

The submodules load on first use (``kdlib.course.viz``), since matplotlib and ipywidgets take a
while to import.
"""

import importlib

from .recipes import RECIPES, Recipe, random_shift, train_preset, trained_teacher
from .sweeps import DistillSweep, SparsitySweep, distill_sweep, sparsity_sweep

__all__ = [
    "RECIPES", "Recipe", "train_preset", "trained_teacher", "random_shift",
    "DistillSweep", "SparsitySweep", "distill_sweep", "sparsity_sweep"
]  # fmt: skip

_SUBMODULES = {
    "checks", "exercises", "grade", "notebooks", "record", "results", "run", "sandbox", "viz",
    "widgets",
}  # fmt: skip


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'kdlib.course' has no attribute {name!r}")
