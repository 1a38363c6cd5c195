"""Run-time guards against classic distillation mistakes, each naming the fix: probabilities for
logits, a changed or untrained teacher, a student that is, shares or is not smaller than the
teacher.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .data import Dataset
from .metrics import count_params
from .train import evaluate

__all__ = [
    "looks_like_probabilities", "assert_logits", "Fingerprint", "fingerprint", "assert_unchanged",
    "assert_trained", "assert_distinct", "assert_smaller"
]  # fmt: skip


def looks_like_probabilities(x: torch.Tensor, atol: float = 1e-4) -> bool:
    """True if every row of ``x`` ``(N, C)`` is non-negative and sums to 1."""
    if x.ndim != 2 or x.numel() == 0:
        return False
    x = x.detach()
    return bool((x >= 0).all()) and torch.allclose(x.sum(1), torch.ones_like(x[:, 0]), atol=atol)


def assert_logits(x: torch.Tensor, name: str = "logits") -> torch.Tensor:
    """Return ``x`` if it can be logits; raise if its rows look like softmax probabilities."""
    if looks_like_probabilities(x):
        raise ValueError(
            f"{name} look like probabilities (every row is ≥ 0 and sums to 1). Pass raw "
            "logits: F.cross_entropy and the distillation losses apply softmax themselves"
        )
    return x


@dataclass(frozen=True)
class Fingerprint:
    """Everything about a module that distillation must leave alone."""

    state: dict[str, torch.Tensor]  # parameters and buffers (batch-norm statistics), cloned
    training: dict[str, bool]  # train/eval mode of every submodule
    requires_grad: dict[str, bool]  # flag of every parameter
    grads: dict[str, torch.Tensor | None]  # each parameter's .grad at snapshot time, cloned


def fingerprint(model: nn.Module) -> Fingerprint:
    """Snapshot ``model`` so that :func:`assert_unchanged` can prove nothing changed."""
    params = dict(model.named_parameters())
    return Fingerprint(
        state={k: v.detach().clone() for k, v in model.state_dict().items()},
        training={name: m.training for name, m in model.named_modules()},
        requires_grad={n: p.requires_grad for n, p in params.items()},
        grads={n: None if p.grad is None else p.grad.detach().clone() for n, p in params.items()},
    )


def _few(names: list[str]) -> str:
    return ", ".join(names[:5]) + (" ..." if len(names) > 5 else "")


def assert_unchanged(model: nn.Module, before: Fingerprint, name: str = "teacher") -> None:
    """Raise ``AssertionError`` naming what changed since ``before``: tensors, train/eval modes,
    ``requires_grad`` flags, or gradients received.
    """
    now, params = model.state_dict(), dict(model.named_parameters())
    changed = [k for k, v in before.state.items() if not torch.equal(v, now[k].detach())]
    modes = {n: m.training for n, m in model.named_modules()}
    flipped = [n or "(root)" for n in modes if modes[n] != before.training.get(n)]
    old = before.grads
    grads = [
        n
        for n, p in params.items()
        if p.grad is not None and (old.get(n) is None or not torch.equal(p.grad, old[n]))
    ]
    problems = []
    if changed:
        problems.append(f"tensors changed: {_few(changed)}")
    if modes != before.training:
        problems.append(f"train/eval mode changed for: {_few(flipped)}")
    if {n: p.requires_grad for n, p in params.items()} != before.requires_grad:
        problems.append("requires_grad flags changed")
    if grads:
        problems.append(f"parameters received gradients: {_few(grads)}")
    if problems:
        raise AssertionError(f"the {name} was modified: " + "; ".join(problems))


def assert_trained(teacher: nn.Module, data: Dataset, min_accuracy: float | None = None) -> float:
    """Return the teacher's test accuracy; raise below ``min_accuracy`` (default twice chance)."""
    threshold = 2 / data.num_classes if min_accuracy is None else min_accuracy
    acc = evaluate(teacher, data)["accuracy"]
    if acc < threshold:
        raise ValueError(
            f"the teacher's test accuracy is {acc:.1%} (chance is {1 / data.num_classes:.0%}): "
            "train the teacher first, then freeze it; a teacher trained jointly with its "
            "student from scratch has no knowledge to transfer"
        )
    return acc


def assert_distinct(student: nn.Module, teacher: nn.Module) -> None:
    """Raise if ``student`` is the ``teacher`` object or shares a parameter's memory with it."""
    if student is teacher:
        raise ValueError(
            "the student is the teacher object itself (one model under two names): training "
            "it trains the teacher, and nothing is compressed; build a separate, smaller "
            "student, e.g. kdlib.model('cnn-thin')"
        )
    owner = {p.untyped_storage().data_ptr(): n for n, p in teacher.named_parameters()}
    at = {n: p.untyped_storage().data_ptr() for n, p in student.named_parameters()}
    shared = [f"{n} = teacher's {owner[a]}" for n, a in at.items() if a in owner]
    if shared:
        raise ValueError(
            f"the student shares {len(shared)} parameter tensor(s) with the teacher "
            f"({', '.join(shared[:3])}{', ...' if len(shared) > 3 else ''}): training it "
            "changes the teacher too; copy what the student inherits (copy.deepcopy) instead of "
            "reusing the teacher's modules"
        )


def assert_smaller(student: nn.Module, teacher: nn.Module) -> float:
    """Return teacher/student parameters; raise unless the student is distinct and smaller."""
    assert_distinct(student, teacher)
    n_s, n_t = count_params(student), count_params(teacher)
    if n_s >= n_t:
        raise ValueError(
            f"the student has {n_s:,} parameters and the teacher {n_t:,}: a student as large as "
            "its teacher compresses nothing (one built from the teacher's own architecture, for "
            "example); give it fewer units or layers, or pick a larger teacher"
        )
    return n_t / n_s
