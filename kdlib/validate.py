"""Argument checks shared by the core, each raising an error that names the argument and says
what was expected (a wrong call fails at once, not deep inside torch); and small mechanics: a
model's device, eval mode for a block, an atomic file write, a file's SHA-256.
"""

from __future__ import annotations

import hashlib
import math
import numbers
import os
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

__all__ = [
    "number", "integer", "flag", "tensor", "pair",
    "device_of", "eval_mode", "atomic_path", "sha256",
]  # fmt: skip


def number(name: str, value, low=None, high=None, *, open_low=False, open_high=False):
    """``value`` if it is a finite real number (not a bool) within the bounds, else ``ValueError``.

    Example:
        >>> number("alpha", 0.9, 0, 1)
        0.9
    """
    real = isinstance(value, numbers.Real) and not isinstance(value, bool)
    ok = real and math.isfinite(value)
    ok = ok and (low is None or (value > low if open_low else value >= low))
    ok = ok and (high is None or (value < high if open_high else value <= high))
    if ok:
        return value
    bounds = "" if low is None else f" {'>' if open_low else '>='} {low}"
    if low is not None and high is not None:
        bounds = f" in {'(' if open_low else '['}{low}, {high}{')' if open_high else ']'}"
    what = "a finite number" if real and not math.isfinite(value) else "a number"
    raise ValueError(f"{name} must be {what}{bounds}, got {value!r}")


def integer(name: str, value, low: int = 1) -> int:
    """Return ``value`` if it is an ``int`` (not a bool) ``>= low``; else ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        what = "a positive integer" if low == 1 else f"an integer >= {low}"
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return int(value)


def flag(name: str, value) -> bool:
    """Return ``value`` if it is ``True`` or ``False``; else ``TypeError`` naming ``name``."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def tensor(name: str, x, *, ndim=None, floating: bool = False, finite: bool = False):
    """``x`` if it is a tensor of an allowed rank (int or tuple), floating point and finite when
    asked; else an error naming ``name``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    ranks = (ndim,) if isinstance(ndim, int) else ndim
    if ranks is not None and x.ndim not in ranks:
        want = " or ".join(f"{r}-D" for r in ranks)
        raise ValueError(f"{name} must be {want}, got shape {tuple(x.shape)}")
    if floating and not x.is_floating_point():
        raise TypeError(
            f"{name} must be a floating-point tensor, got {x.dtype}; convert with .float()"
        )
    if finite and x.is_floating_point() and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or inf")
    return x


def pair(student: nn.Module, teacher: nn.Module) -> None:
    """Refuse a student that is not a module, is the teacher, or shares its parameters."""
    for name, m in (("student", student), ("teacher", teacher)):
        if not isinstance(m, nn.Module):
            raise TypeError(f"{name} must be an nn.Module, got {type(m).__name__}")
    if student is teacher:
        raise ValueError(
            "the teacher is the same object as the student: distillation would train the "
            "teacher; pass a separate student (e.g. a fresh kdlib.model(...))"
        )
    shared = {id(p) for p in student.parameters()} & {id(p) for p in teacher.parameters()}
    if shared:
        raise ValueError(
            f"student and teacher share {len(shared)} parameter tensor(s): training the student "
            "would modify the teacher; build the student with its own weights (copy.deepcopy)"
        )


def device_of(module: nn.Module, default: torch.device | None = None) -> torch.device | None:
    """The device of ``module``'s first parameter or buffer (``default`` if it has none)."""
    for t in (*module.parameters(), *module.buffers()):
        return t.device
    return default


@contextmanager
def eval_mode(model: nn.Module):
    """Eval mode inside the block; every submodule's previous train/eval mode after it."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, mode in modes:
            m.training = mode


@contextmanager
def atomic_path(path: str | os.PathLike):
    """A temporary path beside ``path``, renamed onto it only if the block succeeds.

    Example:
        >>> with atomic_path("model.pt") as tmp:
        ...     torch.save(state, tmp)
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
