"""Small guards that catch the classic distillation and pruning mistakes at run time.

Notebook 10 (the pitfalls clinic) reproduces each mistake and shows which guard would have
caught it. Each guard is a plain function that raises ``ValueError`` (or ``AssertionError``
for "this should never happen" checks) with a message that names the mistake and the fix:

* :func:`assert_logits` refuses probabilities where logits belong (softmax before
  ``CrossEntropyLoss``, or probabilities fed to ``KLDivLoss`` as its input);
* :func:`fingerprint` and :func:`assert_unchanged` prove a teacher was not modified
  (weights, batch-norm statistics, train/eval mode, ``requires_grad``, stray ``.grad``);
* :func:`assert_trained` refuses a teacher that is no better than chance (the "train teacher
  and student jointly from scratch" mistake);
* :func:`assert_distinct` refuses a "student" that is the teacher object itself, or shares
  parameters with it (training the student would then train the teacher);
* :func:`assert_smaller` refuses a "student" that is not a separate, smaller model.

Sparsity measured on ``weight_orig`` instead of the effective weight is caught by
:func:`kdlib.prune.sparsity_report`, which always measures the effective weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .data import Dataset
from .metrics import count_params
from .train import evaluate

__all__ = [
    "looks_like_probabilities",
    "assert_logits",
    "Fingerprint",
    "fingerprint",
    "assert_unchanged",
    "assert_trained",
    "assert_distinct",
    "assert_smaller",
]


def looks_like_probabilities(x: torch.Tensor, atol: float = 1e-4) -> bool:
    """True if every row of ``x`` is non-negative and sums to 1 (a softmax output).

    Shape:
        x: ``(N, C)``.
    """
    if x.ndim != 2 or x.numel() == 0:
        return False
    x = x.detach()
    ones = torch.ones(x.shape[0], dtype=x.dtype, device=x.device)
    return bool((x >= 0).all()) and torch.allclose(x.sum(1), ones, atol=atol)


def assert_logits(x: torch.Tensor, name: str = "logits") -> torch.Tensor:
    """Return ``x`` if it can be logits; raise if its rows look like softmax probabilities.

    ``F.cross_entropy`` and the soft-target losses apply (log-)softmax themselves; feeding
    them probabilities applies softmax twice, which squashes the loss and its gradients.
    """
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
    return Fingerprint(
        state={k: v.detach().clone() for k, v in model.state_dict().items()},
        training={name: m.training for name, m in model.named_modules()},
        requires_grad={n: p.requires_grad for n, p in model.named_parameters()},
        grads={
            n: None if p.grad is None else p.grad.detach().clone()
            for n, p in model.named_parameters()
        },
    )


def assert_unchanged(model: nn.Module, before: Fingerprint, name: str = "teacher") -> None:
    """Raise ``AssertionError`` naming what changed in ``model`` since ``before``.

    Checks bit-identical parameters and buffers, the train/eval mode of every submodule,
    every ``requires_grad`` flag, and that no parameter received a gradient (its ``.grad`` is
    what it was at the snapshot).
    """
    problems = []
    now = model.state_dict()
    changed = [k for k, v in before.state.items() if not torch.equal(v, now[k].detach())]
    if changed:
        problems.append(
            f"tensors changed: {', '.join(changed[:5])}{' ...' if len(changed) > 5 else ''}"
        )
    modes = {n: m.training for n, m in model.named_modules()}
    if modes != before.training:
        flipped = [n or "(root)" for n in modes if modes[n] != before.training.get(n)]
        problems.append(f"train/eval mode changed for: {', '.join(flipped[:5])}")
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    if flags != before.requires_grad:
        problems.append("requires_grad flags changed")
    grads = [
        n
        for n, p in model.named_parameters()
        if p.grad is not None
        and (before.grads.get(n) is None or not torch.equal(p.grad, before.grads[n]))
    ]
    if grads:
        problems.append(f"parameters received gradients: {', '.join(grads[:5])}")
    if problems:
        raise AssertionError(f"the {name} was modified: " + "; ".join(problems))


def assert_trained(teacher: nn.Module, data: Dataset, min_accuracy: float | None = None) -> float:
    """Return the teacher's test accuracy; raise if it is not clearly better than chance.

    Args:
        teacher: the model to distill from.
        data: the data set it should have been trained on.
        min_accuracy: threshold (default: twice chance, ``2 / num_classes``).
    """
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
    """Raise if ``student`` is the ``teacher`` object, or shares any parameter with it.

    A student that is the teacher under another name (``student = teacher``, or a tutorial's
    student called ``teacher_model``) is trained in the teacher's place: the teacher changes,
    and nothing is compressed. A student that reuses some of the teacher's modules shares
    their parameters, so every student update also changes the teacher. Parameters count as
    shared when they are the same tensor or view the same memory.
    """
    if student is teacher:
        raise ValueError(
            "the student is the teacher object itself (one model under two names): training "
            "it trains the teacher, and nothing is compressed; build a separate, smaller "
            "student, e.g. kdlib.model('cnn-thin')"
        )
    memory = {p.untyped_storage().data_ptr(): n for n, p in teacher.named_parameters()}
    shared = [
        (n, memory[p.untyped_storage().data_ptr()])
        for n, p in student.named_parameters()
        if p.untyped_storage().data_ptr() in memory
    ]
    if shared:
        pairs = ", ".join(f"{s} = teacher's {t}" for s, t in shared[:3])
        raise ValueError(
            f"the student shares {len(shared)} parameter tensor(s) with the teacher ({pairs}"
            f"{', ...' if len(shared) > 3 else ''}): every student update changes the "
            "teacher too; copy what the student inherits (copy.deepcopy) instead of reusing "
            "the teacher's modules"
        )


def assert_smaller(student: nn.Module, teacher: nn.Module) -> float:
    """Return the compression ratio teacher/student parameters; raise if it is not > 1.

    Calls :func:`assert_distinct` first: a student that is, or shares parameters with, the
    teacher is refused with that message.
    """
    assert_distinct(student, teacher)
    n_s, n_t = count_params(student), count_params(teacher)
    if n_s >= n_t:
        raise ValueError(
            f"the student has {n_s:,} parameters and the teacher {n_t:,}: a student built "
            "from the teacher's own architecture compresses nothing; give it fewer units or layers"
        )
    return n_t / n_s
