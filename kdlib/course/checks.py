"""Checkers that teach: run a learner's exercise function against kdlib and explain any miss.

Each ``check_<exercise>(fn)`` calls ``fn`` on fixed cases (small enough to work out by hand)
and random ones (drawn from a fixed seed, so a message never changes between runs), compares
what comes back with kdlib's reference implementation, and prints either a one-line pass or
which case failed, the expected value, what came back and a hint. The hint is aimed at the
likely mistake: when a wrong answer equals what a classic mistake gives (a missing T²,
probabilities fed to ``F.kl_div``, ``reduction="mean"``, a mask that keeps the smallest
weights, ...), the hint names that mistake. A checker never raises because of the learner's
code: an exception, a wrong type or a wrong shape is reported as a failed case. Checkers of
training loops (``check_distill_epoch``, ``check_hint_stage``, ``check_prune_finetune``)
build tiny seeded models and batches, run the learner's loop and a reference loop from the
same start, and compare what each left behind (weights, the teacher's state, masks, losses);
checkers of questions (``check_t2_answer``, ``check_sparsity_answer``) take the number the
learner read off a printed result. Every checker
returns a :class:`CheckResult`; :data:`EXERCISES` lists the exercises of the exercise
notebooks with their checkers and points. The grader never trusts a verdict reached in a
submission's kernel: :mod:`kdlib.course.record` records there what the learner's code returned and
replays it to the same checker in the grader's own process.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .. import losses as L
from ..data import load
from ..metrics import count_params
from ..params import inherit
from ..prune import agp_schedule, shrink, structured_prune
from ..train import predict

__all__ = [
    "CheckResult",
    "Exercise",
    "EXERCISES",
    "CHALLENGE",
    "check_exercise",
    "check_notebook",
    "check_soften",
    "check_mse_logit_loss",
    "check_soft_target_loss",
    "check_kd_loss",
    "check_distill_epoch",
    "check_t2_answer",
    "check_inherit_top_units",
    "check_attention_map",
    "check_hint_regressor",
    "check_hint_loss",
    "check_hint_stage",
    "check_magnitude_mask",
    "check_prune_finetune",
    "check_sparsity_answer",
    "check_shrink_layer",
    "check_cubic_schedule",
    "check_fake_quant",
    "check_clamp_answer",
    "check_challenge",
    "challenge_score",
    "challenge_transfer_set",
]


# ============================================================================================
# Results and the machinery every checker shares
# ============================================================================================
@dataclass
class CheckResult:
    """The outcome of one checker run. True when every case passed.

    ``message`` is what the checker printed. In a notebook, the result shows nothing more
    when it is a cell's last value (the checker has already printed it).
    """

    exercise: str  # e.g. "soft_target_loss"
    passed: bool  # every case passed
    cases_run: int  # cases tried (up to and including a failing one)
    cases: int  # cases in the checker
    case: str = ""  # the failing case, in words
    expected: str = ""  # what the reference gives on it
    got: str = ""  # what the learner's function gave (or raised)
    hint: str = ""  # what to look at
    score: float | None = None  # share of the points earned; 1 if passed, else 0
    detail: str = ""  # extra facts shown with the result (the challenge's numbers)
    measures: dict = field(default_factory=dict)  # numbers for a leaderboard (the challenge)

    def __post_init__(self):
        if self.score is None:
            self.score = 1.0 if self.passed else 0.0
        self._shown = False

    def __bool__(self) -> bool:
        return self.passed

    @property
    def message(self) -> str:
        if self.passed:
            lines = [f"✓ {self.exercise}: all {self.cases} checks passed."]
        else:
            lines = [
                f"✗ {self.exercise} failed on check {self.cases_run} of {self.cases}: {self.case}",
            ]
            if self.expected:
                lines.append(f"  expected: {self.expected}")
            if self.got:
                lines.append(f"  got:      {self.got}")
            if self.hint:
                lines.append(f"  hint:     {self.hint}")
        if self.detail:
            lines.append(f"  {self.detail}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        state = "passed" if self.passed else "failed"
        return f"<CheckResult {self.exercise}: {state}, score {self.score:g}>"

    def _ipython_display_(self) -> None:
        if not self._shown:
            print(self.message)

    def to_dict(self) -> dict:
        keys = ("exercise", "passed", "cases_run", "cases", "case", "expected", "got", "hint")
        return {
            **{k: getattr(self, k) for k in keys},
            "score": self.score,
            "message": self.message,
            "measures": dict(self.measures),
        }


class _Miss(Exception):
    """One case went wrong: what was expected, what came back, and what to look at."""

    def __init__(self, expected: str, got: str, hint: str):
        super().__init__(hint)
        self.expected, self.got, self.hint = expected, got, hint


class _Raised(Exception):
    """The learner's code raised ``exc`` (reported, never propagated)."""

    def __init__(self, exc: BaseException):
        super().__init__(repr(exc))
        self.exc = exc


# A case is (what it tries, in words; a function of the learner's fn that raises _Miss).
Case = tuple[str, Callable[[Callable], None]]
# A known mistake is (does this wrong answer match it?; the hint for it).
Mistake = tuple[Callable[[object], bool], str]


def _call(fn: Callable, *args, **kwargs):
    """Call learner code; any exception it raises (even SystemExit) becomes :class:`_Raised`.

    KeyboardInterrupt is let through, so an interrupted (or timed-out) run still stops.
    """
    try:
        return fn(*args, **kwargs)
    except (Exception, SystemExit) as e:
        raise _Raised(e) from e


def _describe_exception(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".strip(": ")


def _if_name_error(hint: str) -> Callable[[BaseException], str | None]:
    """A ``raised_hint`` for :func:`_run`: ``hint`` when the learner's code hit a NameError."""
    return lambda e: hint if isinstance(e, NameError) else None


def _run(
    exercise: str,
    fn,
    cases: list[Case],
    hint: str,
    quiet: bool,
    raised_hint: Callable[[BaseException], str | None] | None = None,
) -> CheckResult:
    """Run ``cases`` on ``fn`` in order and stop at the first failure."""
    if not callable(fn):
        result = CheckResult(
            exercise,
            False,
            0,
            len(cases),
            case="calling it",
            expected="a function",
            got=f"{type(fn).__name__}: {_show(fn)}",
            hint=f"pass the function itself, e.g. check_{exercise}({exercise}), not its result",
        )
        return _report(result, quiet)
    for i, (what, case) in enumerate(cases, start=1):
        try:
            case(fn)
        except _Miss as m:
            result = CheckResult(exercise, False, i, len(cases), what, m.expected, m.got, m.hint)
            return _report(result, quiet)
        except _Raised as r:
            e = r.exc
            if isinstance(e, NotImplementedError):
                stub = str(e).strip()
                why = f"not implemented yet ({stub})" if stub else "not implemented yet"
                got = f"NotImplementedError: {why}"
                advice = (
                    f"replace the `raise NotImplementedError(...)` line with your code. {hint}"
                )
            else:
                got = f"an exception, {_describe_exception(e)}"
                specific = raised_hint(e) if raised_hint is not None else None
                advice = specific or f"your code raised an exception on this case. {hint}"
            result = CheckResult(exercise, False, i, len(cases), what, "", got, advice)
            return _report(result, quiet)
        except Exception as e:  # an answer too odd to compare (e.g. a complex tensor)
            result = CheckResult(
                exercise,
                False,
                i,
                len(cases),
                what,
                "",
                _show(e),
                f"the checker could not use what came back. {hint}",
            )
            return _report(result, quiet)
    return _report(CheckResult(exercise, True, len(cases), len(cases)), quiet)


def _report(result: CheckResult, quiet: bool) -> CheckResult:
    if not quiet:
        print(result.message)
        result._shown = True
    return result


def _show(x) -> str:
    """A short, readable rendering of a value for a failure message."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.ndim == 0:
            return f"{x.item():.6g}"
        if x.is_floating_point():
            x = x.double().apply_(lambda v: float(f"{v:.4g}"))
        if x.numel() <= 8:
            return str(x.tolist())
        shape = " × ".join(map(str, x.shape))
        return f"tensor of shape {shape}, first values {x.flatten()[:6].tolist()} ..."
    if isinstance(x, float):
        return f"{x:.6g}"
    text = repr(x)
    return text if len(text) <= 120 else text[:117] + "..."


def _as_tensor(got, expected: torch.Tensor, name: str = "value") -> torch.Tensor:
    """The learner's return value as a tensor like ``expected``, or a :class:`_Miss`."""
    if got is None:
        raise _Miss(
            _show(expected),
            "None",
            "your function returns nothing: add a `return` with the result",
        )
    if not isinstance(got, torch.Tensor):
        if isinstance(got, bool) or not isinstance(got, (int, float)):
            raise _Miss(
                _show(expected),
                f"a {type(got).__name__}: {_show(got)}",
                f"return the {name} as a torch tensor (or a number for a scalar)",
            )
        got = torch.tensor(float(got))
    if got.is_complex():
        shape = tuple(got.shape)
        raise _Miss(_show(expected), f"a complex tensor of shape {shape}", "return real numbers")
    if got.shape != expected.shape and got.numel() == 1 and expected.numel() == 1:
        got = got.reshape(expected.shape)
    return got


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-4, atol: float = 1e-5) -> bool:
    a = a.detach().to(torch.float64).cpu()
    b = b.detach().to(torch.float64).cpu()
    return a.shape == b.shape and bool(torch.allclose(a, b, rtol=rtol, atol=atol))


def _equals(candidate: Callable[[], torch.Tensor], rtol: float = 1e-4) -> Callable:
    """A mistake matcher: the wrong answer equals what ``candidate()`` computes."""

    def match(got) -> bool:
        try:
            with torch.no_grad():
                value = candidate()
        except Exception:  # a candidate that cannot be formed never matches
            return False
        return isinstance(got, torch.Tensor) and _close(got, value, rtol=rtol)

    return match


def _compare(
    got,
    expected: torch.Tensor,
    hint: str,
    mistakes: list[Mistake] = (),
    shape_hint: str | None = None,
    nonfinite_hint: str | None = None,
    rtol: float = 1e-4,
    atol: float = 1e-5,
    name: str = "value",
) -> torch.Tensor:
    """Check ``got`` against ``expected``; on a miss, name the first matching mistake."""
    got = _as_tensor(got, expected, name)
    same_shape = got.shape == expected.shape
    finite = not got.is_floating_point() or bool(torch.isfinite(got).all())
    if same_shape and finite and _close(got, expected, rtol, atol):
        return got
    for matches, mistake_hint in mistakes:
        if _safe(matches, got):
            raise _Miss(_show(expected), _show(got), mistake_hint)
    if not same_shape:
        default = f"expected shape {tuple(expected.shape)} but got {tuple(got.shape)}"
        raise _Miss(_show(expected), _show(got), shape_hint or default)
    if not finite:
        raise _Miss(_show(expected), _show(got), nonfinite_hint or f"NaN or inf came back. {hint}")
    raise _Miss(_show(expected), _show(got), hint)


def _safe(matches: Callable, got) -> bool:
    try:
        return bool(matches(got))
    except Exception:
        return False


def _unchanged(before: list[torch.Tensor], after: list[torch.Tensor], hint: str) -> None:
    """Inputs must come back as they went in (no in-place edits of the caller's tensors)."""
    for b, a in zip(before, after, strict=True):
        if not torch.equal(b, a.detach()):
            raise _Miss("the inputs left as they were", "an input was modified in place", hint)


_IN_PLACE = (
    "your function changed its input tensor in place (e.g. `logits /= T` or `w[...] = 0`); "
    "compute a new tensor instead (`logits / T`), so the caller's data stays intact"
)


def _loss_grad_case(
    fn: Callable,
    args: tuple,
    reference: Callable[..., torch.Tensor],
    hint: str,
    wrt: int = 0,
) -> None:
    """The loss must be differentiable in ``args[wrt]`` with the reference's gradient."""
    leaf = args[wrt].detach().clone().requires_grad_(True)
    call_args = list(args)
    call_args[wrt] = leaf
    loss = _call(fn, *call_args)
    expected_leaf = args[wrt].detach().clone().requires_grad_(True)
    ref_args = list(args)
    ref_args[wrt] = expected_leaf
    reference(*ref_args).backward()
    no_graph = (
        "the loss does not depend on the student's logits through autograd: don't call "
        "`.item()`, `.detach()`, `.numpy()` or work under `torch.no_grad()`, or the student "
        "cannot learn from it"
    )
    if not isinstance(loss, torch.Tensor) or loss.grad_fn is None:
        raise _Miss("a tensor with a gradient", _show(loss), no_graph)
    try:
        _call(loss.sum().backward)
    except _Raised:
        raise _Miss("a tensor with a gradient", _show(loss), no_graph) from None
    if leaf.grad is None:
        raise _Miss(_show(expected_leaf.grad), "no gradient", no_graph)
    _compare(leaf.grad, expected_leaf.grad, f"the gradient differs from the reference. {hint}")


def _randn(gen: torch.Generator, *shape: int, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=gen) * scale


# --------------------------------------------------------------------------------------------
# Training loops: tiny seeded models and data, a reference loop, and what a loop left behind
def _seeded(module: nn.Module, gen: torch.Generator, scale: float = 0.5) -> nn.Module:
    """``module`` with every parameter drawn from ``gen`` (the same weights on every run)."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * scale)
    return module


def _seeded_bn(bn: nn.Module, gen: torch.Generator) -> nn.Module:
    """Batch norm whose running statistics differ from any batch's, so that train and eval
    modes give clearly different outputs."""
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(bn.running_mean.shape, generator=gen) * 0.5)
        bn.running_var.copy_(torch.rand(bn.running_var.shape, generator=gen) + 0.5)
    return bn


def _flat(module: nn.Module) -> torch.Tensor:
    """Every parameter of ``module`` (effective weights for pruned layers), as one vector."""
    tensors = []
    for m in module.modules():
        # by name: pruning re-registers `weight` as `weight_orig` after `bias`
        for name, p in sorted(m._parameters.items(), key=lambda kv: kv[0].removesuffix("_orig")):
            if p is None:
                continue
            if name.endswith("_orig") and hasattr(m, name.removesuffix("_orig") + "_mask"):
                p = p * getattr(m, name.removesuffix("_orig") + "_mask")
            tensors.append(p.detach().flatten())
    return torch.cat(tensors) if tensors else torch.zeros(0)


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and buffers of ``module``, by name, cloned."""
    out = {f"param {n}": p.detach().clone() for n, p in module.named_parameters()}
    out.update({f"buffer {n}": b.detach().clone() for n, b in module.named_buffers()})
    return out


def _frozen_teacher(teacher: nn.Module, before: dict[str, torch.Tensor]) -> None:
    """The teacher must come back exactly as it went in, in eval mode, with no gradients."""
    after = _snapshot(teacher)
    for name, value in before.items():
        if name.startswith("param") and not torch.equal(value, after.get(name, value)):
            raise _Miss(
                "the teacher's weights unchanged",
                f"teacher {name.removeprefix('param ')} changed",
                "only the student (and a regressor) may be trained: give the optimizer the "
                "student's parameters, never the teacher's",
            )
    for name, value in before.items():
        if name.startswith("buffer") and not torch.equal(value, after.get(name, value)):
            raise _Miss(
                "the teacher's batch-norm statistics unchanged",
                f"teacher {name.removeprefix('buffer ')} changed",
                "the teacher ran in train mode, so batch norm used each batch's statistics "
                "and updated its running ones: call teacher.eval() before the loop",
            )
    if any(m.training for m in teacher.modules()):
        raise _Miss(
            "the teacher in eval mode (teacher.training == False)",
            "the teacher in train mode",
            "call teacher.eval() before the loop: a frozen teacher runs in eval mode "
            "(batch norm with its running statistics, no dropout)",
        )
    with_grad = [n for n, p in teacher.named_parameters() if p.grad is not None]
    if with_grad:
        raise _Miss(
            "no gradients in the teacher",
            f"a gradient in teacher {with_grad[0]}",
            "run the teacher under torch.no_grad(): it is not trained, and tracking its "
            "graph costs memory and time",
        )


def _loss_list(got, n: int, what: str) -> torch.Tensor:
    """The loop's return value as numbers: one loss per batch, or a :class:`_Miss`."""
    hint = f"return a list with one number per batch: {what}"
    if got is None:
        raise _Miss(f"a list of {n} losses", "None", f"your function returns nothing; {hint}")
    if isinstance(got, torch.Tensor) and got.ndim == 1:
        got = list(got)
    if not isinstance(got, (list, tuple)):
        raise _Miss(f"a list of {n} losses", f"a {type(got).__name__}: {_show(got)}", hint)
    if len(got) != n:
        raise _Miss(f"a list of {n} losses", f"a list of {len(got)}", hint)
    values = []
    for v in got:
        if isinstance(v, torch.Tensor) and v.numel() == 1 and not v.is_complex():
            v = v.detach().item()
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise _Miss(f"{n} numbers", f"a list holding {_show(v)}", hint)
        values.append(float(v))
    return torch.tensor(values, dtype=torch.float64)


def _losses(got: torch.Tensor, expected: list[float], what: str) -> None:
    """The loop's losses (from :func:`_loss_list`) must be the reference loop's."""
    _compare(
        got,
        torch.tensor(expected, dtype=torch.float64),
        "the weights are right but the losses are not: return a list with one number per "
        f"batch, {what}",
        name="list of losses",
    )


# Questions that ask the learner to read a result: (name, the right answer, how close a
# number must be, [(a wrong answer, its hint)], the hint when nothing matches).
def _check_answer(
    exercise: str,
    answer,
    expected: float,
    tol: float,
    wrong: list[tuple[float, str]],
    hint: str,
    quiet: bool,
) -> CheckResult:
    """Check a numeric answer to a question about a result the notebook printed."""
    what = "your answer"
    if isinstance(answer, torch.Tensor) and answer.numel() == 1:
        answer = answer.item()
    if callable(answer) or isinstance(answer, bool) or not isinstance(answer, (int, float)):
        result = CheckResult(
            exercise,
            False,
            1,
            1,
            what,
            "a number",
            f"a {type(answer).__name__}: {_show(answer)}",
            f"set {exercise} to a number (e.g. {exercise} = 0.5). {hint}",
        )
        return _report(result, quiet)
    value = float(answer)
    if math.isfinite(value) and abs(value - expected) <= tol:
        return _report(CheckResult(exercise, True, 1, 1), quiet)
    specific = next((h for w, h in wrong if abs(value - w) <= tol), hint)
    result = CheckResult(exercise, False, 1, 1, what, "", f"{value:g}", specific)
    return _report(result, quiet)


# ============================================================================================
# 02 soft targets and temperature
# ============================================================================================
_SOFTEN_HINT = (
    "p(T) = softmax(z / T) over each row: exp(z_i / T) / Σ_j exp(z_j / T), i.e. "
    "torch.softmax(logits / T, dim=1)"
)


def check_soften(fn: Callable, *, quiet: bool = False, seed: int = 0) -> CheckResult:
    """Check ``fn(logits, T)`` against :func:`kdlib.losses.soften`, the softmax at
    temperature ``T`` of each row of logits.

    Shape:
        logits: ``(N, C)``; output ``(N, C)``, each row a probability distribution.

    Example:
        >>> check_soften(lambda logits, T: torch.softmax(logits / T, dim=1))
        ✓ soften: all 5 checks passed.
        <CheckResult soften: passed, score 1>
    """
    gen = torch.Generator().manual_seed(seed)

    def case(logits: torch.Tensor, T: float) -> Callable:
        def run(f):
            before = [logits.clone()]
            got = _call(f, logits, T)
            _unchanged(before, [logits], _IN_PLACE)
            expected = L.soften(logits, T)
            mistakes = [
                (
                    _equals(lambda: torch.softmax(logits * T, dim=1)),
                    "you multiplied the logits by T; divide them: softmax(z / T). A larger T "
                    "must give a flatter distribution",
                ),
                (
                    _equals(lambda: torch.softmax(logits, dim=1)),
                    "T is ignored: divide the logits by T before the softmax",
                ),
                (
                    _equals(lambda: torch.softmax(logits / T, dim=0)),
                    "the softmax runs over the batch (dim=0); it must run over the classes of "
                    "each example: dim=1, so every row sums to 1",
                ),
                (
                    _equals(lambda: torch.log_softmax(logits / T, dim=1)),
                    "these are log-probabilities; return probabilities (torch.softmax)",
                ),
                (
                    _equals(lambda: torch.exp(logits / T)),
                    "exp(z / T) alone does not sum to 1: divide by the row's sum",
                ),
                (
                    _equals(lambda: torch.softmax(logits, dim=1) / T),
                    "divide the logits by T before the softmax, not the probabilities after",
                ),
            ]
            _compare(
                got,
                expected,
                _SOFTEN_HINT,
                mistakes,
                nonfinite_hint="exp of large logits overflows to inf: subtract each row's "
                "maximum first (softmax is unchanged by it), or use torch.softmax",
            )

        return run

    z = torch.tensor([[1.0, 2.0, 3.0]])
    cases = [
        ("logits [[1, 2, 3]] at T=1 (plain softmax)", case(z, 1.0)),
        ("logits [[1, 2, 3]] at T=4 (flatter)", case(z, 4.0)),
        ("random logits, batch of 6, 10 classes, T=2.5", case(_randn(gen, 6, 10, scale=3), 2.5)),
        ("random logits, batch of 3, 5 classes, T=0.5 (sharper)", case(_randn(gen, 3, 5), 0.5)),
        ("large logits (about ±1000), T=2", case(_randn(gen, 4, 10, scale=1000), 2.0)),
    ]
    return _run("soften", fn, cases, _SOFTEN_HINT, quiet)


# ============================================================================================
# 03 MSE logit matching
# ============================================================================================
_MSE_HINT = (
    "the mean over all N·C entries of (z_s − z_t)², on logits: "
    "((student_logits - teacher_logits) ** 2).mean(), the same as F.mse_loss"
)


def check_mse_logit_loss(fn: Callable, *, quiet: bool = False, seed: int = 0) -> CheckResult:
    """Check ``fn(student_logits, teacher_logits)`` against :func:`kdlib.losses.mse_logits`.

    Shape:
        student_logits, teacher_logits: ``(N, C)``; output: scalar.
    """
    gen = torch.Generator().manual_seed(seed)

    def case(s: torch.Tensor, t: torch.Tensor) -> Callable:
        def run(f):
            before = [s.clone(), t.clone()]
            got = _call(f, s, t)
            _unchanged(before, [s, t], _IN_PLACE)
            N, C = s.shape
            mse = L.mse_logits(s, t)
            p_s, p_t = torch.softmax(s, 1), torch.softmax(t, 1)
            mistakes = [
                (
                    _equals(lambda: F.mse_loss(p_s, p_t)),
                    "you matched probabilities (after a softmax); Ba & Caruana match the "
                    "logits themselves, which keeps the information a softmax squashes",
                ),
                (
                    _equals(lambda: mse * C),
                    "you summed over the classes; average over them too (divide by C)",
                ),
                (
                    _equals(lambda: mse * N * C),
                    "you summed the squared differences; take their mean",
                ),
                (_equals(lambda: mse * N), "you summed over the batch; average over it"),
                (
                    _equals(lambda: mse.sqrt()),
                    "no square root: the loss is the mean squared difference",
                ),
                (
                    _equals(lambda: (s - t).abs().mean()),
                    "square the differences instead of taking their absolute value",
                ),
                (
                    _equals(lambda: mse / 2),
                    "no ½ factor here: the mean of the squared differences, as F.mse_loss",
                ),
                (
                    lambda g: g.ndim == 1 and g.shape[0] == N,
                    "you returned one loss per example; average them into one number",
                ),
            ]
            _compare(got, mse, _MSE_HINT, mistakes)

        return run

    def grad_case(f):
        s, t = _randn(gen, 4, 10, scale=2), _randn(gen, 4, 10, scale=2)
        _loss_grad_case(f, (s, t), L.mse_logits, _MSE_HINT)

    s_shift = _randn(gen, 5, 10, scale=2)
    cases = [
        (
            "student [[1, 2]] vs teacher [[0, 0]] (expect (1 + 4) / 2)",
            case(torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 0.0]])),
        ),
        (
            "random logits, batch of 8, 10 classes",
            case(_randn(gen, 8, 10, scale=3), _randn(gen, 8, 10, scale=3)),
        ),
        ("teacher = student + 3: same softmax, different logits", case(s_shift, s_shift + 3.0)),
        ("random logits, batch of 3, 4 classes", case(_randn(gen, 3, 4), _randn(gen, 3, 4))),
        ("the gradient reaches the student's logits", grad_case),
    ]
    return _run("mse_logit_loss", fn, cases, _MSE_HINT, quiet)


# ============================================================================================
# 04 soft-target distillation: the soft loss and the combined loss
# ============================================================================================
_SOFT_HINT = (
    "T²·KL(p_t(T) ‖ p_s(T)) averaged over the batch, from log-probabilities: "
    "F.kl_div(F.log_softmax(student_logits / T, dim=1), F.log_softmax(teacher_logits / T, "
    "dim=1), reduction='batchmean', log_target=True) * T**2"
)


def _soft_mistakes(s: torch.Tensor, t: torch.Tensor, T: float) -> list[Mistake]:
    """The classic wrong soft-target losses, each with the hint that fixes it."""
    N, C = s.shape
    ref = L.soft_target_kl(s, t, T)
    log_p_s, log_p_t = F.log_softmax(s / T, 1), F.log_softmax(t / T, 1)
    p_s, p_t = log_p_s.exp(), log_p_t.exp()

    def kl_probs():  # F.kl_div(p_s, p_t): probabilities where log-probabilities belong
        return (p_t * (log_p_t - p_s)).sum() / N

    no_t2 = (
        f"your value is the right one divided by T² = {T**2:g}: multiply the KL by T**2. "
        "Softening divides the gradients by T², and the T² factor restores their scale, so "
        "changing T does not change how hard the student is pulled"
    )
    probs = (
        "F.kl_div expects log-probabilities as its first argument (the student's): use "
        "F.log_softmax(student_logits / T, dim=1), not F.softmax"
    )
    mean = (
        "reduction='mean' also averages over the classes, dividing the loss by C = "
        f"{C}; use reduction='batchmean' (sum over classes, mean over the batch)"
    )
    return [
        (_equals(lambda: ref / T**2), no_t2),
        (_equals(lambda: ref / T), "you multiplied by T; the factor is T² (T**2)"),
        (_equals(lambda: kl_probs() * T**2), probs),
        (_equals(lambda: kl_probs()), probs + "; and multiply by T**2"),
        (_equals(lambda: kl_probs() * T**2 / C), probs + "; and " + mean),
        (_equals(lambda: kl_probs() / C), probs + "; also use reduction='batchmean' and T**2"),
        (_equals(lambda: ref / C), mean),
        (_equals(lambda: ref / C / T**2), mean + "; and multiply by T**2"),
        (
            _equals(lambda: ref * N),
            "you summed over the batch; average over it (reduction='batchmean')",
        ),
        (
            _equals(lambda: (p_s * (log_p_s - log_p_t)).sum() / N * T**2),
            "the KL is the wrong way round: KL(p_teacher ‖ p_student) = Σ p_t (log p_t − log "
            "p_s). In F.kl_div(input, target) the input is the student's log-probabilities and "
            "the target the teacher's",
        ),
        (
            _equals(lambda: L.soft_target_kl(s * T, t * T, T)),
            "the logits are not softened: divide both student and teacher logits by T "
            "before the (log-)softmax",
        ),
        (
            _equals(lambda: (p_t * (log_p_t - F.log_softmax(s, 1))).sum() / N * T**2),
            "only the teacher is softened: divide the student's logits by T too",
        ),
        (
            _equals(lambda: (F.softmax(t, 1) * (F.log_softmax(t, 1) - log_p_s)).sum() / N * T**2),
            "only the student is softened: divide the teacher's logits by T too",
        ),
        (
            _equals(lambda: L.soft_target_ce(s, t, T)),
            "this is the cross-entropy form −T²·Σ p_t log p_s, larger than the KL by T² times "
            "the teacher's entropy; the exercise asks for the KL (F.kl_div), which is 0 when "
            "the student matches the teacher",
        ),
        (
            lambda g: g.ndim == 1 and g.shape[0] == N,
            "you returned one loss per example; average them over the batch",
        ),
    ]


def check_soft_target_loss(fn: Callable, *, quiet: bool = False, seed: int = 0) -> CheckResult:
    """Check ``fn(student_logits, teacher_logits, T)`` against
    :func:`kdlib.losses.soft_target_kl` (Hinton et al.'s T²·KL, batchmean).

    Shape:
        student_logits, teacher_logits: ``(N, C)``; output: scalar.
    """
    gen = torch.Generator().manual_seed(seed)

    def case(s: torch.Tensor, t: torch.Tensor, T: float) -> Callable:
        def run(f):
            before = [s.clone(), t.clone()]
            got = _call(f, s, t, T)
            _unchanged(before, [s, t], _IN_PLACE)
            _compare(
                got,
                L.soft_target_kl(s, t, T),
                _SOFT_HINT,
                _soft_mistakes(s, t, T),
                nonfinite_hint="log of a softmax underflows to log(0) = −inf for confident "
                "logits; compute log-probabilities directly with F.log_softmax",
            )

        return run

    def grad_case(f):
        s, t = _randn(gen, 6, 10, scale=3), _randn(gen, 6, 10, scale=3)
        _loss_grad_case(
            f,
            (s, t, 4.0),
            lambda a, b, T: L.soft_target_kl(a, b, T),
            _SOFT_HINT + "; gradient T·(p_s − p_t)/N",
        )

    two = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 2.0]])
    same = _randn(gen, 4, 10, scale=3)
    cases = [
        ("student [[2, 0]] vs teacher [[0, 2]] at T=1", case(*two, 1.0)),
        ("the same logits at T=4", case(*two, 4.0)),
        (
            "random logits, batch of 8, 10 classes, T=4",
            case(_randn(gen, 8, 10, scale=3), _randn(gen, 8, 10, scale=3), 4.0),
        ),
        (
            "random logits, batch of 5, 10 classes, T=2",
            case(_randn(gen, 5, 10, scale=3), _randn(gen, 5, 10, scale=3), 2.0),
        ),
        ("identical student and teacher logits at T=3 (expect 0)", case(same, same.clone(), 3.0)),
        (
            "confident logits (about ±300) at T=1",
            case(_randn(gen, 4, 10, scale=300), _randn(gen, 4, 10, scale=300), 1.0),
        ),
        ("the gradient reaches the student's logits (T=4)", grad_case),
    ]
    return _run("soft_target_loss", fn, cases, _SOFT_HINT, quiet)


_KD_HINT = (
    "alpha·T²·KL(p_t(T) ‖ p_s(T)) + (1 − alpha)·F.cross_entropy(student_logits, y): the "
    "soft part is your soft_target_loss, the hard part uses the raw logits (T = 1)"
)


def check_kd_loss(fn: Callable, *, quiet: bool = False, seed: int = 0) -> CheckResult:
    """Check ``fn(student_logits, teacher_logits, y, T, alpha)`` against
    :func:`kdlib.losses.kd_loss` (Hinton et al.'s combined loss).

    Shape:
        student_logits, teacher_logits: ``(N, C)``; y: ``(N,)`` class indices; output: scalar.
    """
    gen = torch.Generator().manual_seed(seed)

    def case(N: int, C: int, T: float, alpha: float) -> Callable:
        s, t = _randn(gen, N, C, scale=3), _randn(gen, N, C, scale=3)
        y = torch.randint(0, C, (N,), generator=gen)

        def run(f):
            before = [s.clone(), t.clone(), y.clone()]
            got = _call(f, s, t, y, T, alpha)
            _unchanged(before, [s, t, y], _IN_PLACE)
            soft = L.soft_target_kl(s, t, T)
            ce = F.cross_entropy(s, y)
            mistakes = [
                (
                    _equals(lambda: (1 - alpha) * soft + alpha * ce),
                    "the weights are swapped: alpha weighs the soft (teacher) part, 1 − alpha "
                    "the hard-label cross-entropy",
                ),
                (
                    _equals(lambda: alpha * soft / T**2 + (1 - alpha) * ce),
                    f"the soft part lacks its T² = {T**2:g} factor: multiply the KL by T**2",
                ),
                (
                    _equals(lambda: alpha * soft + (1 - alpha) * F.cross_entropy(s / T, y)),
                    "the hard-label cross-entropy uses the raw logits (T = 1), not logits / T",
                ),
                (
                    _equals(lambda: alpha * soft + ce),
                    "the cross-entropy is not weighted: multiply it by (1 − alpha)",
                ),
                (
                    _equals(lambda: soft + (1 - alpha) * ce),
                    "the soft part is not weighted: multiply it by alpha",
                ),
                (
                    _equals(lambda: alpha * soft / s.shape[1] + (1 - alpha) * ce),
                    "the soft part uses reduction='mean' (divides by C); use 'batchmean'",
                ),
            ]
            _compare(got, L.kd_loss(s, t, y, T, alpha), _KD_HINT, mistakes)

        return run

    def grad_case(f):
        s, t = _randn(gen, 6, 10, scale=3), _randn(gen, 6, 10, scale=3)
        y = torch.randint(0, 10, (6,), generator=gen)
        _loss_grad_case(
            f, (s, t, y, 4.0, 0.7), lambda a, b, yy, T, al: L.kd_loss(a, b, yy, T, al), _KD_HINT
        )

    cases = [
        ("alpha=0: only the hard labels count (T=4)", case(6, 10, 4.0, 0.0)),
        ("alpha=1: only the teacher counts (T=4)", case(6, 10, 4.0, 1.0)),
        ("alpha=0.5, T=4, batch of 8", case(8, 10, 4.0, 0.5)),
        ("alpha=0.9, T=2, batch of 5", case(5, 10, 2.0, 0.9)),
        ("the gradient reaches the student's logits", grad_case),
    ]
    return _run("kd_loss", fn, cases, _KD_HINT, quiet)


_KD_LOOP_HINT = (
    "teacher.eval() and student.train() first; then for each (X, y): teacher logits under "
    "torch.no_grad(), student logits, loss = kd_loss(student_logits, teacher_logits, y, T, "
    "alpha), optimizer.zero_grad(), loss.backward(), optimizer.step(); return the list of "
    "loss.item()"
)


def _kd_loop_setup(seed: int, n_batches: int) -> tuple[nn.Module, nn.Module, list]:
    """A tiny student and teacher (both with batch norm) and seeded batches; the student
    starts in eval mode and the teacher in train mode, as a learner may find them."""
    gen = torch.Generator().manual_seed(seed)
    student = nn.Sequential(
        OrderedDict(
            fc1=nn.Linear(6, 8), bn1=nn.BatchNorm1d(8), act1=nn.ReLU(), fc2=nn.Linear(8, 3)
        )
    )
    teacher = nn.Sequential(
        OrderedDict(
            fc1=nn.Linear(6, 16), bn1=nn.BatchNorm1d(16), act1=nn.ReLU(), fc2=nn.Linear(16, 3)
        )
    )
    _seeded(student, gen)
    _seeded(teacher, gen, scale=1.0)
    _seeded_bn(student.bn1, gen)
    _seeded_bn(teacher.bn1, gen)
    student.eval()
    teacher.train()
    batches = [
        (_randn(gen, 8, 6), torch.randint(0, 3, (8,), generator=gen)) for _ in range(n_batches)
    ]
    return student, teacher, batches


def _kd_loop_reference(*args, **kwargs) -> tuple[nn.Module, list[float]]:
    """One epoch of distillation on copies of the models (``loss`` and the flags make the
    classic wrong loops, for recognising them); trains even under ``torch.no_grad()``."""
    with torch.enable_grad():
        return _kd_loop_reference_impl(*args, **kwargs)


def _kd_loop_reference_impl(
    student: nn.Module,
    teacher: nn.Module,
    batches: list,
    T: float,
    alpha: float,
    *,
    teacher_train: bool = False,
    student_train: bool = True,
    zero_grad: bool = True,
    step: bool = True,
    loss: str = "kd",
) -> tuple[nn.Module, list[float]]:
    """One epoch of distillation on copies of the models (``loss`` and the flags make the
    classic wrong loops, for recognising them)."""
    student, teacher = copy.deepcopy(student), copy.deepcopy(teacher)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9)
    teacher.train(teacher_train)
    student.train(student_train)
    losses = []
    for X, y in batches:
        with torch.no_grad():
            teacher_logits = teacher(X)
        student_logits = student(X)
        if loss == "kd":
            value = L.kd_loss(student_logits, teacher_logits, y, T, alpha)
        elif loss == "ce":
            value = F.cross_entropy(student_logits, y)
        else:
            value = L.soft_target_kl(student_logits, teacher_logits, T)
        if zero_grad:
            optimizer.zero_grad()
        value.backward()
        if step:
            optimizer.step()
        losses.append(value.detach().item())
    return student, losses


def check_distill_epoch(fn: Callable, *, quiet: bool = False, seed: int = 0) -> CheckResult:
    """Check ``fn(student, teacher, batches, optimizer, T, alpha)``: one epoch of
    distillation, as :func:`kdlib.distill` runs it.

    ``batches`` is a list of ``(X, y)``; ``optimizer`` is ``torch.optim.SGD`` over the
    student's parameters (lr 0.1, momentum 0.9). The student must end with the weights the
    reference loop gives, the teacher exactly as it was (in eval mode, no gradients), and
    ``fn`` returns the batch losses.
    """

    def case(case_seed: int, n_batches: int, T: float, alpha: float) -> Callable:
        def run(f):
            student, teacher, batches = _kd_loop_setup(seed + case_seed, n_batches)
            ref, ref_losses = _kd_loop_reference(student, teacher, batches, T, alpha)
            teacher_before = _snapshot(teacher)
            optimizer = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9)
            got = _call(f, student, teacher, batches, optimizer, T, alpha)
            losses = _loss_list(got, len(batches), "loss.item() of each batch, in order")
            _frozen_teacher(teacher, teacher_before)

            def wrong(**kw):
                def run_wrong():
                    fresh = _kd_loop_setup(seed + case_seed, n_batches)
                    return _flat(_kd_loop_reference(*fresh, T, alpha, **kw)[0])

                return run_wrong

            start = _flat(_kd_loop_setup(seed + case_seed, n_batches)[0])
            mistakes = [
                (
                    lambda g: _close(g, start),
                    "the student's weights did not change: call loss.backward() and "
                    "optimizer.step() for every batch",
                ),
                (
                    _equals(wrong(zero_grad=False)),
                    "the gradients piled up from batch to batch: call optimizer.zero_grad() "
                    "at every step, before loss.backward()",
                ),
                (
                    _equals(wrong(student_train=False)),
                    "the student trained in eval mode (its batch norm used its running "
                    "statistics): call student.train() before the loop",
                ),
                (
                    _equals(wrong(teacher_train=True)),
                    "the teacher's logits came from train mode: call teacher.eval() first",
                ),
                (
                    _equals(wrong(loss="ce")),
                    "the student learned from the labels only: the loss is kd_loss(student_"
                    "logits, teacher_logits, y, T, alpha), with the teacher's logits",
                ),
                (
                    _equals(wrong(loss="soft")),
                    "the student learned from the teacher only: kd_loss also has the labels' "
                    "cross-entropy, weighted by 1 − alpha",
                ),
            ]
            _compare(
                _flat(student),
                _flat(ref),
                f"the student's weights after the epoch differ from the reference's. "
                f"{_KD_LOOP_HINT}",
                mistakes,
                name="student's weights",
            )
            _losses(losses, ref_losses, "loss.item() of each batch, in order")

        return run

    cases = [
        (
            "4 batches of 8, T=4, alpha=0.9 (the teacher starts in train mode)",
            case(0, 4, 4.0, 0.9),
        ),
        ("3 batches of 8, T=2, alpha=0.5", case(1, 3, 2.0, 0.5)),
    ]
    return _run(
        "distill_epoch",
        fn,
        cases,
        _KD_LOOP_HINT,
        quiet,
        raised_hint=_if_name_error("define kd_loss above (Exercise 2) and run its cell first"),
    )


def check_t2_answer(answer, *, quiet: bool = False) -> CheckResult:
    """Check the answer to: at T = 8, how many times larger is the soft loss's gradient with
    the T² factor than without it? (``T² = 64``: softening scales the gradient by 1/T².)"""
    return _check_answer(
        "t2_answer",
        answer,
        64.0,
        0.5,
        [
            (8.0, "that is T; the printed norms differ by T² (divide the two norms at T=8)"),
            (1 / 64, "the other way round: the norm with T² divided by the norm without it"),
            (1.0, "look again at the norms without T²: they shrink as T grows"),
            (4096.0, "that is T⁴; divide the two gradient norms at T=8"),
        ],
        "divide the gradient norm with T² by the one without it, at T=8, in the output above",
        quiet,
    )


# ============================================================================================
# 05 parameter distillation: inheriting the teacher's top units
# ============================================================================================
_INHERIT_HINT = (
    "score each hidden unit j of the teacher by ‖fc1.weight[j, :]‖ · ‖fc2.weight[:, j]‖ "
    "(how strongly it listens times how loudly it speaks), keep the k best (k = the "
    "student's width), and copy fc1.weight[keep], fc1.bias[keep], fc2.weight[:, keep] and "
    "fc2.bias into the student's layers with .copy_() under torch.no_grad()"
)


def _mlp1(n_in: int, hidden: int, n_out: int, gen: torch.Generator) -> nn.Sequential:
    """A one-hidden-layer MLP named like kdlib.mlp's, with weights drawn from ``gen``."""
    net = nn.Sequential(
        OrderedDict(
            flatten=nn.Flatten(),
            fc1=nn.Linear(n_in, hidden),
            act1=nn.ReLU(),
            fc2=nn.Linear(hidden, n_out),
        )
    )
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(max(p.shape[-1], 1)))
    return net


def _inherit_reference(student: nn.Module, teacher: nn.Module) -> nn.Module:
    """kdlib's own top-units inheritance."""
    return inherit(student, teacher, "top-units")


def _inherit_by(student, teacher, score, largest=True, biases=True) -> nn.Module:
    """Top-units inheritance with a given unit score (used to recognise mistakes)."""
    w1, b1 = teacher.fc1.weight, teacher.fc1.bias
    w2, b2 = teacher.fc2.weight, teacher.fc2.bias
    k = student.fc1.out_features
    keep = torch.topk(score(w1, w2), k, largest=largest).indices
    with torch.no_grad():
        student.fc1.weight.copy_(w1[keep])
        student.fc2.weight.copy_(w2[:, keep])
        if biases:
            student.fc1.bias.copy_(b1[keep])
            student.fc2.bias.copy_(b2)
    return student


def check_inherit_top_units(fn: Callable, *, quiet: bool = False, seed: int = 0) -> CheckResult:
    """Check ``fn(student, teacher)``: copy the teacher's top hidden units into the student.

    Both are one-hidden-layer MLPs with layers ``fc1`` and ``fc2`` (as ``kdlib.mlp`` names
    them); the student is narrower. ``fn`` fills the student's weights in place (returning it
    or nothing) and must leave the teacher untouched. The result is compared with
    :func:`kdlib.params.inherit` (strategy ``"top-units"``) by the outputs the student
    computes, which do not depend on the order of the kept units.
    """
    gen = torch.Generator().manual_seed(seed)

    def crafted() -> tuple[nn.Module, nn.Module]:
        # Unit 0 listens hard but speaks softly, unit 1 the reverse; units 2 and 3 are
        # moderate on both sides, so the product ranks them first, while either norm alone
        # would pick unit 0 or unit 1.
        teacher = _mlp1(3, 4, 2, gen)
        with torch.no_grad():
            teacher.fc1.weight.copy_(
                torch.tensor([[4.0, 0.0, 0.0], [0.1, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 1.0, 1.2]])
            )
            teacher.fc1.bias.copy_(torch.tensor([0.1, 0.2, 0.3, 0.4]))
            teacher.fc2.weight.copy_(torch.tensor([[0.1, 4.0, 1.0, 1.2], [0.0, 0.0, 1.0, 1.0]]))
            teacher.fc2.bias.copy_(torch.tensor([0.5, -0.5]))
        return _mlp1(3, 2, 2, gen), teacher

    def random_pair(n_in: int, h_t: int, h_s: int, n_out: int) -> Callable:
        return lambda: (_mlp1(n_in, h_s, n_out, gen), _mlp1(n_in, h_t, n_out, gen))

    def case(make: Callable) -> Callable:
        student, teacher = make()
        n_in = teacher.fc1.in_features
        X = _randn(gen, 16, n_in)

        def run(f):
            fresh = copy.deepcopy(student)
            teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
            shapes = {k: v.shape for k, v in fresh.state_dict().items()}
            out = _call(f, fresh, teacher)
            got_model = fresh if out is None else out
            for k, v in teacher.state_dict().items():
                if not torch.equal(v, teacher_before[k]):
                    raise _Miss(
                        "the teacher unchanged",
                        f"teacher's {k} was modified",
                        "read the teacher's weights, write only into the student's",
                    )
            if not isinstance(got_model, nn.Module):
                raise _Miss(
                    "the student (or None)",
                    f"a {type(got_model).__name__}",
                    "fill the student's layers in place and return the student",
                )
            got_shapes = {k: v.shape for k, v in got_model.state_dict().items()}
            if got_shapes != shapes:
                raise _Miss(
                    str({k: tuple(v) for k, v in shapes.items()}),
                    str({k: tuple(v) for k, v in got_shapes.items()}),
                    "keep the student's layer sizes: copy the kept rows and columns into its "
                    "existing weights with .copy_()",
                )
            t_ptrs = {p.data_ptr() for p in teacher.parameters()}
            if any(p.data_ptr() in t_ptrs for p in got_model.parameters()):
                raise _Miss(
                    "student weights of its own",
                    "student weights that share memory with the teacher's",
                    "copy the values (.copy_() or .clone()): shared tensors would let "
                    "training the student change the teacher",
                )
            ref = _inherit_reference(copy.deepcopy(student), teacher)

            def wrong(**kw):
                return lambda: _inherit_by(copy.deepcopy(student), teacher, **kw)(X)

            def prod(w1, w2):
                return w1.norm(dim=1) * w2.norm(dim=0)

            mistakes = [
                (
                    _equals(wrong(score=prod, largest=False)),
                    "you kept the units with the smallest scores; keep the largest "
                    "(torch.topk(score, k).indices)",
                ),
                (
                    _equals(wrong(score=lambda w1, w2: w1.norm(dim=1))),
                    "you ranked units by their incoming weights only; multiply by the norm of "
                    "their outgoing weights (fc2.weight[:, j]): a unit the next layer ignores "
                    "is not worth keeping",
                ),
                (
                    _equals(wrong(score=lambda w1, w2: w2.norm(dim=0))),
                    "you ranked units by their outgoing weights only; multiply by the norm of "
                    "their incoming weights (fc1.weight[j, :])",
                ),
                (
                    _equals(wrong(score=prod, biases=False)),
                    "the weights are right but the biases are not: copy fc1.bias[keep] and "
                    "the whole fc2.bias",
                ),
            ]
            with torch.no_grad():
                got = _call(got_model, X)
                _compare(got, ref(X), _INHERIT_HINT, mistakes, name="output")

        return run

    cases = [
        (
            "a hand-made teacher (3 → 4 → 2) where the score matters, student width 2",
            case(crafted),
        ),
        ("a random teacher 20 → 12 → 5, student width 4", case(random_pair(20, 12, 4, 5))),
        (
            "a student as wide as the teacher (8 → 6 → 3): it must compute the same function",
            case(random_pair(8, 6, 6, 3)),
        ),
    ]
    return _run("inherit_top_units", fn, cases, _INHERIT_HINT, quiet)


# ============================================================================================
# 06 feature distillation: attention maps, the hint regressor and the hint loss
# ============================================================================================
_AT_HINT = (
    "a(F) = normalize(mean over channels of F², flattened): "
    "F.normalize(f.pow(2).mean(dim=1).flatten(1), dim=1), shape (N, H·W), one unit-length "
    "row per example"
)


def check_attention_map(fn: Callable, *, quiet: bool = False, seed: int = 0) -> CheckResult:
    """Check ``fn(f)`` against :func:`kdlib.losses.attention_map` (p = 2).

    Shape:
        f: ``(N, C, H, W)``; output ``(N, H·W)``.
    """
    gen = torch.Generator().manual_seed(seed)

    def case(f: torch.Tensor) -> Callable:
        def run(fn_):
            before = [f.clone()]
            got = _call(fn_, f)
            _unchanged(before, [f], _IN_PLACE)
            N, C, H, W = f.shape  # batch, channels, height, width
            v = f.pow(2).mean(dim=1).flatten(1)  # (N, H*W)
            mistakes = [
                (
                    _equals(lambda: v),
                    "the map is not normalised: scale each example's map "
                    "to unit L2 length, F.normalize(v, dim=1), so maps of layers with different "
                    "sizes compare",
                ),
                (
                    _equals(lambda: F.normalize(f.abs().mean(dim=1).flatten(1), dim=1)),
                    "square the activations (p = 2) before averaging over channels",
                ),
                (
                    _equals(lambda: F.normalize(f.mean(dim=1).flatten(1), dim=1)),
                    "square the activations before averaging: signed values cancel out",
                ),
                (
                    _equals(lambda: v / v.norm()),
                    "you normalised the whole batch at once; normalise each example's map "
                    "separately (dim=1)",
                ),
                (
                    _equals(lambda: F.normalize(v, p=1, dim=1)),
                    "normalise to unit L2 length (F.normalize's default p=2), not to sum 1",
                ),
                (
                    lambda g: tuple(g.shape) == (N, H, W),
                    "flatten the map: shape (N, H·W), e.g. with .flatten(1), then normalise",
                ),
                (
                    lambda g: tuple(g.shape) == (N, C),
                    "you averaged over the positions; average over the channels (dim=1) and "
                    "keep one value per position",
                ),
            ]
            expected = L.attention_map(f)
            _compare(
                got,
                expected,
                _AT_HINT,
                mistakes,
                shape_hint=f"expected shape (N, H·W) = {tuple(expected.shape)}",
            )

        return run

    top_left = torch.zeros(1, 2, 2, 2)
    top_left[0, :, 0, 0] = torch.tensor([1.0, 3.0])
    cases = [
        (
            "all-ones map, 1 × 3 × 2 × 2 (expect [[0.5, 0.5, 0.5, 0.5]])",
            case(torch.ones(1, 3, 2, 2)),
        ),
        ("activity only at the top-left position (expect [[1, 0, 0, 0]])", case(top_left)),
        (
            "random pre-activation features (negative values too), 4 × 8 × 5 × 5",
            case(_randn(gen, 4, 8, 5, 5)),
        ),
        ("random features, 3 × 16 × 7 × 7", case(_randn(gen, 3, 16, 7, 7, scale=2).relu())),
    ]
    return _run("attention_map", fn, cases, _AT_HINT, quiet)


_REGRESSOR_HINT = (
    "for feature maps (N, C_s, H, W) → (N, C_t, H, W) use nn.Conv2d(C_s, C_t, kernel_size=1); "
    "for vectors (N, D_s) → (N, D_t) use nn.Linear(D_s, D_t). Ignore the batch size shape[0]"
)


def check_hint_regressor(fn: Callable, *, quiet: bool = False, seed: int = 0) -> CheckResult:
    """Check ``fn(f_s_shape, f_t_shape)``: build FitNets' regressor from student to teacher
    feature shape, as :func:`kdlib.features.projector` does for maps of equal size.

    The module must map a batch of student features (any batch size) to the teacher's shape,
    be trainable, and have the parameters of a 1×1 conv (maps) or a Linear (vectors), with
    or without bias.
    """
    gen = torch.Generator().manual_seed(seed)

    def case(s_shape: tuple, t_shape: tuple) -> Callable:
        def run(f):
            r = _call(f, s_shape, t_shape)
            if not isinstance(r, nn.Module):
                raise _Miss(
                    "an nn.Module",
                    f"a {type(r).__name__}",
                    "return a module (e.g. nn.Conv2d(...)): its weights are learned with the "
                    "student",
                )
            x = _randn(gen, 5, *s_shape[1:])
            out = _call(r, x)
            want = (5, *t_shape[1:])
            if not isinstance(out, torch.Tensor) or tuple(out.shape) != want:
                got_shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out)
                swapped = (
                    len(want) == 4
                    and isinstance(out, torch.Tensor)
                    and tuple(out.shape) == (5, s_shape[1], *want[2:])
                )
                hint = (
                    "in_channels is the student's channel count f_s_shape[1], "
                    "out_channels the teacher's f_t_shape[1]"
                    if swapped
                    else _REGRESSOR_HINT
                )
                raise _Miss(f"output shape {want}", f"output shape {got_shape}", hint)
            n_params = sum(p.numel() for p in r.parameters() if p.requires_grad)
            c_s, c_t = s_shape[1], t_shape[1]
            allowed = {c_s * c_t, c_s * c_t + c_t}
            if n_params not in allowed:
                kind = "1×1 conv" if len(s_shape) == 4 else "Linear"
                if len(s_shape) == 4 and n_params in {9 * c_s * c_t, 9 * c_s * c_t + c_t}:
                    hint = (
                        "kernel_size=1: a 1×1 conv maps channels at each position; a "
                        "3×3 kernel has 9× the weights and blurs positions together"
                    )
                elif n_params == 0:
                    hint = "the regressor has no trainable parameters; it must be learned"
                else:
                    hint = _REGRESSOR_HINT
                raise _Miss(
                    f"{c_s * c_t + c_t:,} trainable parameters (a {kind}, with bias)",
                    f"{n_params:,}",
                    hint,
                )
            x2 = _randn(gen, 5, *s_shape[1:])
            with torch.no_grad():
                same = torch.allclose(_call(r, x2), out.detach())
            if same:
                raise _Miss(
                    "outputs that depend on the input",
                    "the same output for different inputs",
                    _REGRESSOR_HINT,
                )

        return run

    cases = [
        ("maps 8 × 7 × 7 (student) → 32 × 7 × 7 (teacher)", case((128, 8, 7, 7), (128, 32, 7, 7))),
        ("maps 16 × 14 × 14 → 4 × 14 × 14", case((64, 16, 14, 14), (64, 4, 14, 14))),
        ("vectors 64 → 100", case((128, 64), (128, 100))),
    ]

    def raised_hint(e: BaseException) -> str | None:
        if "channels" in str(e) or "mat1 and mat2" in str(e):
            return (
                "the regressor does not accept the student's features: in_channels (or "
                "in_features) is the student's size f_s_shape[1], out_channels the "
                "teacher's f_t_shape[1]"
            )
        return None

    return _run("hint_regressor", fn, cases, _REGRESSOR_HINT, quiet, raised_hint)


_HINT_LOSS_HINT = (
    "the mean squared difference between the regressed student feature and the teacher's: "
    "((regressor(f_s) - f_t) ** 2).mean(), the same as F.mse_loss(regressor(f_s), f_t)"
)


def check_hint_loss(fn: Callable, *, quiet: bool = False, seed: int = 0) -> CheckResult:
    """Check ``fn(f_s, f_t, regressor)`` against :func:`kdlib.losses.hint_loss` (FitNets).

    Shape:
        f_s: ``(N, *)``; f_t: ``(N, *)`` equal to ``regressor(f_s).shape``; output: scalar.
    """
    gen = torch.Generator().manual_seed(seed)

    def conv(c_s: int, c_t: int) -> nn.Module:
        r = nn.Conv2d(c_s, c_t, kernel_size=1)
        with torch.no_grad():
            for p in r.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
        return r

    def case(f_s: torch.Tensor, f_t: torch.Tensor, r: nn.Module) -> Callable:
        def run(f):
            before = [f_s.clone(), f_t.clone()]
            got = _call(f, f_s, f_t, r)
            _unchanged(before, [f_s, f_t], _IN_PLACE)
            with torch.no_grad():
                diff2 = (r(f_s) - f_t).pow(2)
            N = len(f_s)
            mistakes = [
                (
                    _equals(lambda: diff2.sum()),
                    "you summed the squared differences; take their mean",
                ),
                (
                    _equals(lambda: diff2.sum() / 2),
                    "that is the paper's ½‖·‖² summed; this course uses the mean (F.mse_loss), "
                    "which keeps the loss's size independent of the layer's size",
                ),
                (
                    _equals(lambda: diff2.flatten(1).sum(1).mean()),
                    "you summed over each example's features; average over them too",
                ),
                (_equals(lambda: diff2.mean() / 2), "no ½ factor: the plain mean"),
                (_equals(lambda: diff2.mean().sqrt()), "no square root: the mean of squares"),
                (
                    lambda g: g.ndim == 1 and g.shape[0] == N,
                    "you returned one loss per example; average them into one number",
                ),
            ]
            with torch.no_grad():
                expected = L.hint_loss(f_s, f_t, r)
            _compare(got, expected, _HINT_LOSS_HINT, mistakes)

        return run

    def grad_case(f):
        f_s, f_t, r = _randn(gen, 3, 4, 5, 5), _randn(gen, 3, 6, 5, 5), conv(4, 6)
        r_ref = copy.deepcopy(r)
        loss = _call(f, f_s, f_t, r)
        L.hint_loss(f_s, f_t, r_ref).backward()
        if not isinstance(loss, torch.Tensor) or loss.grad_fn is None:
            raise _Miss(
                "a tensor with a gradient",
                _show(loss),
                "the loss must stay differentiable: no .item(), .detach() or torch.no_grad(), "
                "or the regressor and the student cannot learn from it",
            )
        _call(loss.backward)
        for (name, p), p_ref in zip(r.named_parameters(), r_ref.parameters(), strict=True):
            if p.grad is None:
                raise _Miss(
                    "a gradient for the regressor",
                    f"no gradient for regressor.{name}",
                    "apply the regressor inside the loss (regressor(f_s)), so it is trained",
                )
            _compare(p.grad, p_ref.grad, f"the regressor's gradient is off. {_HINT_LOSS_HINT}")

    ones, zeros = torch.ones(2, 3), torch.zeros(2, 3)
    cases = [
        (
            "f_s = ones(2, 3), f_t = zeros(2, 3), identity regressor (expect 1)",
            case(ones, zeros, nn.Identity()),
        ),
        (
            "maps 4 × 8 × 5 × 5 → 4 × 16 × 5 × 5 through a 1×1 conv",
            case(_randn(gen, 4, 8, 5, 5), _randn(gen, 4, 16, 5, 5), conv(8, 16)),
        ),
        (
            "vectors 6 × 10 → 6 × 7 through a Linear",
            case(_randn(gen, 6, 10), _randn(gen, 6, 7), nn.Linear(10, 7)),
        ),
        ("the gradient reaches the regressor's weights", grad_case),
    ]
    return _run("hint_loss", fn, cases, _HINT_LOSS_HINT, quiet)


_HINT_STAGE_HINT = (
    "teacher_lower.eval(); optimizer = torch.optim.SGD([*student_lower.parameters(), "
    "*regressor.parameters()], lr=lr); for each X: f_t under torch.no_grad(), loss = "
    "hint_loss(student_lower(X), f_t, regressor), optimizer.zero_grad(), loss.backward(), "
    "optimizer.step(); return the list of loss.item()"
)


def _hint_stage_setup(seed: int, n_batches: int):
    """Tiny lower layers (student 4 channels, teacher 8 with batch norm, in train mode), a
    1×1 regressor and seeded batches of 1 × 6 × 6 images."""
    gen = torch.Generator().manual_seed(seed)
    student = nn.Sequential(OrderedDict(conv=nn.Conv2d(1, 4, 3, padding=1), act=nn.ReLU()))
    teacher = nn.Sequential(
        OrderedDict(conv=nn.Conv2d(1, 8, 3, padding=1), bn=nn.BatchNorm2d(8), act=nn.ReLU())
    )
    regressor = nn.Conv2d(4, 8, kernel_size=1)
    for m in (student, teacher, regressor):
        _seeded(m, gen)
    _seeded_bn(teacher.bn, gen)
    teacher.train()
    batches = [_randn(gen, 4, 1, 6, 6) for _ in range(n_batches)]
    return student, teacher, regressor, batches


def _hint_stage_reference(*args, **kwargs):
    """The hint stage on copies (the flags make the classic wrong loops); trains even under
    ``torch.no_grad()``."""
    with torch.enable_grad():
        return _hint_stage_reference_impl(*args, **kwargs)


def _hint_stage_reference_impl(
    student,
    teacher,
    regressor,
    batches,
    lr,
    *,
    with_regressor=True,
    teacher_train=False,
    zero_grad=True,
    optimizer="sgd",
):
    """The hint stage on copies (the flags make the classic wrong loops)."""
    student, teacher, regressor = (copy.deepcopy(m) for m in (student, teacher, regressor))
    params = [*student.parameters(), *(regressor.parameters() if with_regressor else ())]
    if optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=lr)
    else:
        opt = torch.optim.Adam(params, lr=lr)
    teacher.train(teacher_train)
    student.train()
    losses = []
    for X in batches:
        with torch.no_grad():
            f_t = teacher(X)
        loss = L.hint_loss(student(X), f_t, regressor)
        if zero_grad:
            opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.detach().item())
    return student, regressor, losses


def check_hint_stage(fn: Callable, *, quiet: bool = False, seed: int = 0) -> CheckResult:
    """Check ``fn(student_lower, teacher_lower, regressor, batches, lr)``: FitNets' hint
    stage, which trains the student's lower layers and the regressor on the hint loss.

    ``batches`` is a list of input batches ``X`` (no labels: the hint stage uses none). The
    optimizer is plain ``torch.optim.SGD(..., lr=lr)`` over the student's and the
    regressor's parameters. Both must end with the reference's weights, the teacher exactly
    as it was, and ``fn`` returns the batch losses.
    """

    def case(case_seed: int, n_batches: int, lr: float) -> Callable:
        def run(f):
            student, teacher, regressor, batches = _hint_stage_setup(seed + case_seed, n_batches)
            ref_s, ref_r, ref_losses = _hint_stage_reference(
                student, teacher, regressor, batches, lr
            )
            teacher_before = _snapshot(teacher)
            regressor_before = _flat(regressor)
            got = _call(f, student, teacher, regressor, batches, lr)
            what = "hint_loss(...).item() of each batch, in order"
            losses = _loss_list(got, len(batches), what)
            _frozen_teacher(teacher, teacher_before)

            def wrong(**kw):
                def run_wrong():
                    fresh = _hint_stage_setup(seed + case_seed, n_batches)
                    s, r, _ = _hint_stage_reference(*fresh, lr, **kw)
                    return torch.cat([_flat(s), _flat(r)])

                return run_wrong

            got_weights = torch.cat([_flat(student), _flat(regressor)])
            if _close(_flat(regressor), regressor_before) and not _close(
                _flat(ref_r), regressor_before
            ):
                raise _Miss(
                    "the regressor trained with the student",
                    "the regressor unchanged",
                    "give the optimizer the regressor's parameters too: "
                    "torch.optim.SGD([*student_lower.parameters(), *regressor.parameters()], "
                    "lr=lr); an untrained regressor maps the student's features nowhere useful",
                )
            mistakes = [
                (
                    _equals(wrong(zero_grad=False)),
                    "the gradients piled up from batch to batch: call optimizer.zero_grad() "
                    "at every step, before loss.backward()",
                ),
                (
                    _equals(wrong(teacher_train=True)),
                    "the teacher's features came from train mode: call teacher_lower.eval()",
                ),
                (
                    _equals(wrong(optimizer="adam")),
                    "this exercise uses plain torch.optim.SGD(params, lr=lr), not Adam, so "
                    "that every correct loop gives the same weights",
                ),
            ]
            _compare(
                got_weights,
                torch.cat([_flat(ref_s), _flat(ref_r)]),
                "the weights of the student's lower layers and the regressor differ from the "
                f"reference's. {_HINT_STAGE_HINT}",
                mistakes,
                name="weights",
            )
            _losses(losses, ref_losses, what)

        return run

    cases = [
        ("3 batches of 4 images, lr=0.1 (the teacher starts in train mode)", case(0, 3, 0.1)),
        ("2 batches of 4 images, lr=0.05", case(1, 2, 0.05)),
    ]
    return _run(
        "hint_stage",
        fn,
        cases,
        _HINT_STAGE_HINT,
        quiet,
        raised_hint=_if_name_error("define hint_loss above (Exercise 3) and run its cell first"),
    )


# ============================================================================================
# 07 magnitude pruning
# ============================================================================================
_MASK_HINT = (
    "zero the round(amount · n) weights of smallest |w| over the whole tensor and keep the "
    "rest: mask = 1 where a weight stays, 0 where it is pruned (what "
    "torch.nn.utils.prune.l1_unstructured computes)"
)


def _reference_mask(weight: torch.Tensor, amount: float) -> torch.Tensor:
    import torch.nn.utils.prune as torch_prune

    method = torch_prune.L1Unstructured(amount)
    return method.compute_mask(weight, default_mask=torch.ones_like(weight))


def check_magnitude_mask(fn: Callable, *, quiet: bool = False, seed: int = 0) -> CheckResult:
    """Check ``fn(weight, amount)``: the 0/1 mask of unstructured magnitude pruning, as
    ``torch.nn.utils.prune.L1Unstructured`` (what :func:`kdlib.prune.magnitude_prune` uses).

    Shape:
        weight: any shape; output: the same shape, 1 = keep, 0 = prune (float or bool).
    """
    gen = torch.Generator().manual_seed(seed)

    def case(w: torch.Tensor, amount: float) -> Callable:
        def run(f):
            before = [w.clone()]
            got = _call(f, w, amount)
            _unchanged(
                before,
                [w],
                "your function changed the weights; only compute the mask (pruning applies it "
                "later, and torch keeps the original weights in weight_orig)",
            )
            expected = _reference_mask(w, amount)
            if isinstance(got, torch.Tensor) and got.dtype == torch.bool:
                got = got.to(expected.dtype)
            if isinstance(got, torch.Tensor) and got.shape == w.shape:
                values = set(torch.unique(got.detach().float()).tolist())
                if not values <= {0.0, 1.0}:
                    raise _Miss(
                        "a mask of 0s and 1s",
                        f"values {sorted(values)[:5]}",
                        "return the mask (1 = keep, 0 = prune), not the pruned weights",
                    )
            n = w.numel()
            k = round(amount * n)
            a = w.abs().flatten()

            def keeps_smallest(g) -> bool:
                kept, dropped = a[g.flatten() > 0], a[g.flatten() == 0]
                return 0 < len(kept) < n and len(dropped) > 0 and kept.max() <= dropped.min()

            mistakes = [
                (
                    keeps_smallest,
                    "your mask keeps the smallest weights and zeros the largest; magnitude "
                    "pruning removes the smallest |w| (they matter least) and keeps the largest",
                ),
                (
                    _equals(lambda: _reference_mask(w, amount).logical_not().float()),
                    "your mask is inverted: 1 must mean keep, 0 prune",
                ),
                (
                    _equals(lambda: _signed_mask(w, k)),
                    "you ranked the signed weights; rank by magnitude |w|, so large negative "
                    "weights are kept",
                ),
                (
                    _equals(lambda: _reference_mask(w, math.floor(amount * n))),
                    f"you prune {math.floor(amount * n)} weights; torch prunes "
                    f"round(amount · n) = {k} (use round, not int or floor)",
                ),
                (
                    _equals(lambda: _per_row_mask(w, amount)),
                    "you ranked each row separately; rank the whole tensor at once (that is "
                    "unstructured pruning)",
                ),
            ]
            _compare(
                got,
                expected,
                _MASK_HINT,
                mistakes,
                shape_hint=f"the mask must have the weight's shape {tuple(w.shape)}",
                name="mask",
            )

        return run

    fixed = torch.tensor([[0.1, -0.5], [0.3, -0.05]])
    cases = [
        (
            "[[0.1, -0.5], [0.3, -0.05]] with amount 0.5 (expect [[0, 1], [1, 0]])",
            case(fixed, 0.5),
        ),
        ("random 20 × 30 weights, amount 0.3", case(_randn(gen, 20, 30), 0.3)),
        ("random conv weights 8 × 4 × 3 × 3, amount 0.9", case(_randn(gen, 8, 4, 3, 3), 0.9)),
        ("amount 0: nothing is pruned", case(_randn(gen, 5, 6), 0.0)),
        (
            "random 10 × 11 weights, amount 0.17 (0.17 · 110 = 18.7 weights)",
            case(_randn(gen, 10, 11), 0.17),
        ),
    ]
    return _run("magnitude_mask", fn, cases, _MASK_HINT, quiet)


def _signed_mask(w: torch.Tensor, k: int) -> torch.Tensor:
    mask = torch.ones(w.numel())
    if k:
        mask[torch.topk(w.flatten(), k, largest=False).indices] = 0
    return mask.reshape(w.shape)


def _per_row_mask(w: torch.Tensor, amount: float) -> torch.Tensor:
    return torch.stack([_reference_mask(row, amount) for row in w])


_PRUNE_LOOP_HINT = (
    "optimizer = torch.optim.SGD(model.parameters(), lr=lr); then `rounds` times: "
    "prune.l1_unstructured(layer, 'weight', amount=amount) on every nn.Linear, and one pass "
    "over batches (cross-entropy, zero_grad, backward, step) with the masks left on; "
    "return model"
)


def _prune_loop_setup(seed: int, n_batches: int):
    """A tiny 10 → 16 → 8 → 3 MLP with seeded weights, and seeded (X, y) batches."""
    gen = torch.Generator().manual_seed(seed)
    model = nn.Sequential(
        OrderedDict(
            fc1=nn.Linear(10, 16),
            act1=nn.ReLU(),
            fc2=nn.Linear(16, 8),
            act2=nn.ReLU(),
            fc3=nn.Linear(8, 3),
        )
    )
    _seeded(model, gen)
    batches = [
        (_randn(gen, 16, 10), torch.randint(0, 3, (16,), generator=gen)) for _ in range(n_batches)
    ]
    return model, batches


def _prune_loop_reference(*args, **kwargs) -> nn.Module:
    """Prune → fine-tune cycles on a copy (the options make the classic wrong loops); trains
    even under ``torch.no_grad()``."""
    with torch.enable_grad():
        return _prune_loop_reference_impl(*args, **kwargs)


def _prune_loop_reference_impl(
    model,
    batches,
    amount,
    rounds,
    lr,
    *,
    scope="layer",
    keep_masks=True,
    order="prune-first",
    zero_grad=True,
    prune_once=False,
):
    """Prune → fine-tune cycles on a copy (the options make the classic wrong loops)."""
    model = copy.deepcopy(model)
    from torch.nn.utils import prune as torch_prune

    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)

    def prune_step():
        if scope == "global":
            torch_prune.global_unstructured(
                [(m, "weight") for m in layers], torch_prune.L1Unstructured, amount=amount
            )
        else:
            for m in layers:
                torch_prune.l1_unstructured(m, "weight", amount=amount)
        if not keep_masks:
            for m in layers:
                torch_prune.remove(m, "weight")

    def finetune():
        model.train()
        for X, y in batches:
            loss = F.cross_entropy(model(X), y)
            if zero_grad:
                optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    for k in range(rounds):
        if order == "finetune-first":
            finetune()
        if not prune_once or k == 0:
            prune_step()
        if order == "prune-first":
            finetune()
    return model


def _zeros_per_layer(model: nn.Module) -> dict[str, int]:
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            w = m.weight_orig * m.weight_mask if hasattr(m, "weight_mask") else m.weight
            out[name] = int((w.detach() == 0).sum())
    return out


def check_prune_finetune(fn: Callable, *, quiet: bool = False, seed: int = 0) -> CheckResult:
    """Check ``fn(model, batches, amount, rounds, lr)``: iterative pruning, each round a
    per-layer magnitude prune of every ``nn.Linear`` (``torch.nn.utils.prune``, the masks
    held) and then one pass of plain SGD over ``batches``, as Han et al. (2015) describe.

    The model is pruned in place and returned; its effective weights must be the reference
    loop's. Whether the masks are made permanent at the very end does not matter.
    """

    def case(case_seed: int, amount: float, rounds: int, lr: float) -> Callable:
        def run(f):
            model, batches = _prune_loop_setup(seed + case_seed, 3)
            ref = _prune_loop_reference(model, batches, amount, rounds, lr)
            got = _call(f, model, batches, amount, rounds, lr)
            if got is None:
                raise _Miss(
                    "the pruned, fine-tuned model",
                    "None",
                    "return the model at the end (return model)",
                )
            if not isinstance(got, nn.Module):
                raise _Miss(
                    "the pruned, fine-tuned model (an nn.Module)",
                    f"a {type(got).__name__}: {_show(got)}",
                    "return the model itself",
                )

            def wrong(**kw):
                def run_wrong():
                    fresh, _ = _prune_loop_setup(seed + case_seed, 3)
                    return _flat(_prune_loop_reference(fresh, batches, amount, rounds, lr, **kw))

                return run_wrong

            mistakes = [
                (
                    _equals(wrong(keep_masks=False)),
                    "pruned weights came back to life while fine-tuning: leave torch.nn.utils."
                    "prune's masks on (they zero the pruned weights at every forward), so "
                    "don't call prune.remove (or zero weights by hand) before fine-tuning",
                ),
                (
                    _equals(wrong(prune_once=True)),
                    f"you pruned once; prune every round: each round removes amount = {amount} "
                    "of the weights still there, then fine-tunes",
                ),
                (
                    _equals(wrong(scope="global")),
                    "you pruned globally (one threshold for all layers); this exercise prunes "
                    "each layer on its own: prune.l1_unstructured on every nn.Linear",
                ),
                (
                    _equals(wrong(order="finetune-first")),
                    "fine-tune after pruning, not before: each round prunes, then lets the "
                    "surviving weights make up for the lost ones",
                ),
                (
                    _equals(wrong(zero_grad=False)),
                    "the gradients piled up from batch to batch: call optimizer.zero_grad() "
                    "at every step, before loss.backward()",
                ),
            ]
            generic = (
                "the weights after pruning and fine-tuning differ from the reference's. "
                f"{_PRUNE_LOOP_HINT}"
            )
            try:
                _compare(_flat(got), _flat(ref), generic, mistakes, name="weights")
            except _Miss as miss:
                if miss.hint != generic:
                    raise
                try:
                    got_zeros = _zeros_per_layer(got)
                except Exception:  # not the model's layers: the generic miss says so
                    raise miss from None
                sparsity = 1 - (1 - amount) ** rounds
                for name, zeros in _zeros_per_layer(ref).items():
                    have = got_zeros.get(name, zeros)
                    if have < zeros:
                        raise _Miss(
                            f"{zeros} zero weights in {name} ({sparsity:.1%} after {rounds} "
                            "rounds)",
                            f"{have} zero weights",
                            "pruned weights came back to life while fine-tuning: prune with "
                            "torch.nn.utils.prune and leave its masks on (they zero the "
                            "pruned weights at every forward); zeroing weights by hand does "
                            "not hold them at zero",
                        ) from None
                raise

        return run

    cases = [
        ("3 rounds of amount 0.5, lr 0.1, on a 10 → 16 → 8 → 3 MLP", case(0, 0.5, 3, 0.1)),
        ("2 rounds of amount 0.3, lr 0.05", case(1, 0.3, 2, 0.05)),
    ]
    return _run(
        "prune_finetune",
        fn,
        cases,
        _PRUNE_LOOP_HINT,
        quiet,
        raised_hint=_if_name_error(
            "`prune` is torch.nn.utils.prune: import torch.nn.utils.prune as prune"
        ),
    )


def check_sparsity_answer(answer, *, quiet: bool = False) -> CheckResult:
    """Check the answer to: after 3 rounds of ``amount=0.5`` with the masks held, what
    fraction of a layer's weights is zero? (``1 − 0.5³ = 0.875``; torch counts ``amount``
    among the weights still unmasked.)"""
    return _check_answer(
        "sparsity_answer",
        answer,
        0.875,
        0.005,
        [
            (
                1.5,
                "a fraction cannot exceed 1: each round prunes half of the weights that are "
                "still there, not half of all of them",
            ),
            (0.5, "each round prunes again: half of what is left after the round before"),
            (0.125, "that is the fraction that survives; the question asks for the zeros"),
            (0.75, "three rounds, not two: look at the sparsity printed after round 3"),
            (87.5, "give a fraction between 0 and 1, not a percentage"),
        ],
        "read fc1's sparsity after round 3 in the output above: each round prunes amount of "
        "the weights still unmasked, so the surviving fraction is multiplied by 1 − amount",
        quiet,
    )


# ============================================================================================
# 08 structured pruning and the cubic schedule
# ============================================================================================
_SHRINK_HINT = (
    "rank fc1's output units by the L1 norm of their weights (fc1.weight.abs().sum(dim=1)), "
    "drop the round(amount · fc1.out_features) smallest, and build smaller layers: fc1 keeps "
    "those rows of weight and bias, fc2 keeps those columns of its weight (its inputs) and "
    "all its bias"
)


def _shrink_reference(fc1: nn.Linear, fc2: nn.Linear, amount: float) -> nn.Module:
    """fc1 → ReLU → fc2 after kdlib.prune removes fc1's weakest units (L1), as one model."""
    net = nn.Sequential(
        OrderedDict(fc1=copy.deepcopy(fc1), act1=nn.ReLU(), fc2=copy.deepcopy(fc2))
    )
    return shrink(structured_prune(net, amount, norm=1, layers=["fc1"]))


def _shrink_by(fc1, fc2, amount, score, largest=True) -> nn.Module:
    """The pair shrunk with a given unit score (used to recognise mistakes)."""
    h = fc1.out_features
    keep = torch.topk(score(fc1.weight), h - round(amount * h), largest=largest).indices
    new1, new2 = nn.Linear(fc1.in_features, len(keep)), nn.Linear(len(keep), fc2.out_features)
    with torch.no_grad():
        new1.weight.copy_(fc1.weight[keep])
        new1.bias.copy_(fc1.bias[keep])
        new2.weight.copy_(fc2.weight[:, keep])
        new2.bias.copy_(fc2.bias)
    return nn.Sequential(OrderedDict(fc1=new1, act1=nn.ReLU(), fc2=new2))


def _same_rows(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal up to the order of the rows (units may be kept in any order)."""
    if a.shape != b.shape:
        return False
    a, b = a.detach(), b.detach()
    return _close(a[a.sum(1).argsort()], b[b.sum(1).argsort()])


def check_shrink_layer(fn: Callable, *, quiet: bool = False, seed: int = 0) -> CheckResult:
    """Check ``fn(fc1, fc2, amount)``: remove the weakest units of ``fc1`` for real.

    ``fn`` returns new, smaller ``(fc1, fc2)``; with a ReLU between them they must compute
    what :func:`kdlib.prune.structured_prune` (L1, on ``fc1``) then :func:`kdlib.prune.shrink`
    compute, and the layers given must be left unchanged.
    """
    gen = torch.Generator().manual_seed(seed)

    def linear(n_in: int, n_out: int) -> nn.Linear:
        m = nn.Linear(n_in, n_out)
        with torch.no_grad():
            m.weight.copy_(torch.randn(m.weight.shape, generator=gen))
            m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.5)
        return m

    def crafted() -> tuple[nn.Linear, nn.Linear]:
        # L1 and L2 rank these four units differently: unit 0 (one big weight) has the
        # largest L2 norm but the smallest L1 norm.
        fc1, fc2 = linear(3, 4), linear(4, 2)
        with torch.no_grad():
            fc1.weight.copy_(
                torch.tensor([[2.0, 0.0, 0.0], [1.0, 1.0, 0.5], [0.8, 0.8, 0.8], [0.1, 0.1, 0.1]])
            )
        return fc1, fc2

    def case(make: Callable, amount: float) -> Callable:
        fc1, fc2 = make()
        X = _randn(gen, 16, fc1.in_features)

        def run(f):
            before = [p.detach().clone() for p in (*fc1.parameters(), *fc2.parameters())]
            out = _call(f, fc1, fc2, amount)
            _unchanged(
                before,
                [*fc1.parameters(), *fc2.parameters()],
                "build new layers and leave fc1 and fc2 as they were",
            )
            if (
                not isinstance(out, (tuple, list))
                or len(out) != 2
                or not all(isinstance(m, nn.Linear) for m in out)
            ):
                raise _Miss(
                    "a pair (new_fc1, new_fc2) of nn.Linear",
                    f"a {type(out).__name__}: {_show(out)}",
                    "return the two new layers as a tuple: return new_fc1, new_fc2",
                )
            new1, new2 = out
            h = fc1.out_features
            k = h - round(amount * h)
            if new1.out_features != k:
                raise _Miss(
                    f"fc1 with {k} output units ({h} − round({amount} · {h}))",
                    f"{new1.out_features} output units",
                    _SHRINK_HINT,
                )
            if new2.in_features != new1.out_features:
                raise _Miss(
                    f"fc2 with {k} inputs",
                    f"{new2.in_features} inputs",
                    "fc2's inputs are fc1's units: keep the same columns of fc2.weight "
                    "(fc2.weight[:, keep])",
                )
            ref = _shrink_reference(fc1, fc2, amount)

            def l1(w):
                return w.abs().sum(dim=1)

            def wrong(**kw):
                return lambda: _shrink_by(fc1, fc2, amount, **kw)(X)

            def weights_right_biases_wrong(_) -> bool:
                pairs = [(new1.weight, ref.fc1.weight), (new2.weight.T, ref.fc2.weight.T)]
                weights = all(_same_rows(a, b) for a, b in pairs)
                rows = torch.cat([ref.fc1.weight, ref.fc1.bias[:, None]], 1)
                mine = torch.cat([new1.weight, new1.bias[:, None]], 1)
                biases = _same_rows(mine, rows) and _close(new2.bias, ref.fc2.bias)
                return weights and not biases

            mistakes = [
                (
                    _equals(wrong(score=l1, largest=False)),
                    "you removed the units with the largest norms; remove the smallest",
                ),
                (
                    _equals(wrong(score=lambda w: w.norm(dim=1))),
                    "you ranked by the L2 norm; this exercise ranks by the L1 norm "
                    "(w.abs().sum(dim=1)), as structured_prune(norm=1) does",
                ),
                (
                    weights_right_biases_wrong,
                    "the weights are right but the biases are not: copy fc1.bias[keep] and "
                    "the whole fc2.bias into the new layers",
                ),
            ]
            with torch.no_grad():
                got = _call(lambda x: new2(torch.relu(new1(x))), X)
                _compare(got, ref(X), _SHRINK_HINT, mistakes, name="output")

        return run

    cases = [
        ("a hand-made fc1 (3 → 4) where L1 and L2 disagree, amount 0.5", case(crafted, 0.5)),
        ("random 20 → 10 → 5, amount 0.3", case(lambda: (linear(20, 10), linear(10, 5)), 0.3)),
        ("amount 0: same sizes, same outputs", case(lambda: (linear(6, 5), linear(5, 3)), 0.0)),
    ]
    return _run(
        "shrink_layer",
        fn,
        cases,
        _SHRINK_HINT,
        quiet,
        raised_hint=lambda e: (
            "a shape does not fit: fc1 keeps rows (fc1.weight[keep]), fc2 keeps columns "
            "(fc2.weight[:, keep])"
            if "shape" in str(e) or "size" in str(e)
            else None
        ),
    )


_CUBIC_HINT = (
    "s_t = s_f + (s_i − s_f)·(1 − (t − t0)/(n·dt))³ for t0 ≤ t ≤ t0 + n·dt; s_i before t0 "
    "and s_f after t0 + n·dt"
)


def _cubic_reference(t: float, s_i: float, s_f: float, t0: float, n: int, dt: float) -> float:
    return agp_schedule(s_i, s_f, t0, n, dt)(t)


def check_cubic_schedule(fn: Callable, *, quiet: bool = False) -> CheckResult:
    """Check ``fn(t, s_i, s_f, t0, n, dt)`` against Zhu & Gupta's cubic schedule
    (:func:`kdlib.prune.agp_schedule`)."""

    def case(t, s_i, s_f, t0, n, dt) -> Callable:
        def run(f):
            got = _call(f, t, s_i, s_f, t0, n, dt)
            if isinstance(got, torch.Tensor) and got.numel() == 1:
                got = float(got)
            expected = torch.tensor(_cubic_reference(t, s_i, s_f, t0, n, dt), dtype=torch.float64)
            frac = (t - t0) / (n * dt)
            clamped = min(max(frac, 0.0), 1.0)

            def value(v):
                return lambda: torch.tensor(float(v), dtype=torch.float64)

            mistakes = [
                (
                    _equals(value(s_f + (s_i - s_f) * (1 - clamped))),
                    "that is a straight line; the schedule uses the cube (1 − progress)**3, so "
                    "it prunes fast early, while many redundant weights remain, then slowly",
                ),
                (
                    _equals(value(s_f + (s_i - s_f) * (1 - clamped) ** 2)),
                    "the power is 3, not 2: (1 − progress)**3",
                ),
                (
                    _equals(value(s_i + (s_f - s_i) * (1 - clamped) ** 3)),
                    "s_i and s_f are swapped: at t0 the sparsity is s_i, at the end s_f",
                ),
                (
                    _equals(value(s_i + (s_f - s_i) * clamped**3)),
                    "the cube goes on (1 − progress): s_f + (s_i − s_f)(1 − progress)³ rises "
                    "fast first; progress³ would rise slowly first",
                ),
                (
                    _equals(value(s_f + (s_i - s_f) * (1 - min(max((t - t0) / n, 0), 1)) ** 3)),
                    "divide the elapsed time by n·dt (the schedule's length), not by n",
                ),
                (
                    _equals(value(s_f + (s_i - s_f) * (1 - frac) ** 3)),
                    "clamp the progress to [0, 1]: before t0 the sparsity is s_i, after "
                    "t0 + n·dt it stays at s_f",
                ),
            ]
            _compare(got, expected, _CUBIC_HINT, mistakes, rtol=1e-6, atol=1e-9)

        return run

    cases = [
        ("t=0 at the start (s_i=0, s_f=0.9, t0=0, n=10, dt=1)", case(0, 0.0, 0.9, 0, 10, 1)),
        ("t=5, halfway", case(5, 0.0, 0.9, 0, 10, 1)),
        ("t=10, the end", case(10, 0.0, 0.9, 0, 10, 1)),
        ("t=3 (s_i=0.1, s_f=0.8, t0=2, n=4, dt=2)", case(3, 0.1, 0.8, 2, 4, 2)),
        ("t=6, same schedule", case(6, 0.1, 0.8, 2, 4, 2)),
        ("t=0, before t0=2", case(0, 0.1, 0.8, 2, 4, 2)),
        ("t=15, after the end (t0 + n·dt = 10)", case(15, 0.1, 0.8, 2, 4, 2)),
    ]
    return _run("cubic_schedule", fn, cases, _CUBIC_HINT, quiet)


# ============================================================================================
# 09 the compression challenge
# ============================================================================================
# The open-ended exercise: compress the course's CNN teacher (kdlib.course.trained_teacher, trained
# on all 4,000 training digits) into a model this small that is still this accurate, training
# on a transfer set of the first 300 training digits only. The budget is set so that the
# best small models trained from scratch on the transfer set fall short of the bar (measured
# in the instructor guide): reaching it takes compression (pruning, distillation, or both).
CHALLENGE: dict = {
    "data": "mnist-5k",  # scored on this set's 1,000 test digits
    "teacher": "cnn-teacher",  # the starting point: kdlib.course.trained_teacher(data)
    "transfer": 300,  # the student trains on the first this many training digits only
    "max_params": 5_000,  # nonzero parameters (kdlib.count_params(model, nonzero=True))
    "min_accuracy": 0.95,  # test accuracy: the bar
    "partial_accuracy": 0.93,  # within the budget and this accurate: a third of the points
}


def challenge_transfer_set(data):
    """The challenge's transfer set: ``data`` with only its first ``CHALLENGE["transfer"]``
    training examples (the test split unchanged). The teacher saw all of them; a compressed
    model may learn from these only."""
    n = CHALLENGE["transfer"]
    return dataclasses.replace(data, X_train=data.X_train[:n], y_train=data.y_train[:n])


@functools.lru_cache(maxsize=2)
def _challenge_data(name: str):
    return load(name)


def challenge_score(nonzero_params: int, accuracy: float) -> float:
    """The challenge's share of its points, from a model's size and accuracy.

    - at the bar and within the budget: 1;
    - at the bar but over the budget: ``2/3 · budget / nonzero_params`` (twice the budget
      earns a third), so a smaller model always scores more;
    - within the budget, below the bar but at ``partial_accuracy``: 1/3;
    - otherwise 0.

    Among models that reach the bar, the leaderboard ranks by nonzero parameters.
    """
    c = CHALLENGE
    if accuracy >= c["min_accuracy"]:
        if nonzero_params <= c["max_params"]:
            return 1.0
        return 2 / 3 * c["max_params"] / nonzero_params
    if nonzero_params <= c["max_params"] and accuracy >= c["partial_accuracy"]:
        return 1 / 3
    return 0.0


def check_challenge(model, *, quiet: bool = False) -> CheckResult:
    """Score the compression challenge: ``model`` should have at most
    ``CHALLENGE["max_params"]`` nonzero parameters and reach ``CHALLENGE["min_accuracy"]``
    on the mnist-5k test split; :func:`challenge_score` gives the share of the points, and
    ``measures`` the numbers the grader's leaderboard ranks. The model is evaluated, never
    changed.
    """
    name = "challenge"
    c = CHALLENGE
    goal = f"≤ {c['max_params']:,} nonzero parameters and ≥ {c['min_accuracy']:.1%} test accuracy"
    if not isinstance(model, nn.Module):
        return _report(
            CheckResult(
                name,
                False,
                1,
                2,
                "the model",
                "an nn.Module",
                _show(model),
                "`compressed` must be your compressed model (an nn.Module)",
            ),
            quiet,
        )
    n = count_params(model, nonzero=True)
    data = _challenge_data(c["data"])
    try:
        logits = _call(predict, model, data.X_test)
    except _Raised as r:
        return _report(
            CheckResult(
                name,
                False,
                2,
                2,
                "running the model on the test digits",
                "",
                f"an exception, {_describe_exception(r.exc)}",
                "the model must map a batch (N, 1, 28, 28) to (N, 10) logits",
            ),
            quiet,
        )
    if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != (len(data.X_test), 10):
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits)
        return _report(
            CheckResult(
                name,
                False,
                2,
                2,
                "running the model on the test digits",
                f"logits of shape ({len(data.X_test)}, 10)",
                f"{shape}",
                "the model must output one logit per class",
            ),
            quiet,
        )
    acc = float((logits.argmax(1).cpu() == data.y_test).float().mean())
    small, accurate = n <= c["max_params"], acc >= c["min_accuracy"]
    score = challenge_score(n, acc)
    measures = {
        "nonzero_params": n,
        "accuracy": round(acc, 4),
        "reached_bar": accurate,
        "within_budget": small,
    }
    detail = (
        f"nonzero parameters: {n:,} (budget {c['max_params']:,}) {'✓' if small else '✗'}; "
        f"test accuracy: {acc:.1%} (bar {c['min_accuracy']:.1%}) {'✓' if accurate else '✗'}; "
        f"score {score:.2f}"
    )
    if small and accurate:
        return _report(CheckResult(name, True, 2, 2, detail=detail, measures=measures), quiet)
    if not small and accurate:
        hint = (
            "accurate enough but too big (a smaller model scores more): prune further "
            "(prune → fine-tune, with distillation from the teacher to recover), or shrink "
            "layers; only nonzero parameters count"
        )
    elif not small:
        hint = (
            "too many parameters and not accurate enough: start from the teacher, prune it "
            "gradually and fine-tune (or distill) after each step"
        )
    else:
        hint = (
            "small enough but not accurate enough: a small model trained from scratch on "
            "the transfer set does not reach the bar; compress the teacher instead (prune it "
            "gradually, distilling from the unpruned teacher after each step)"
        )
    result = CheckResult(
        name,
        False,
        2,
        2,
        f"the goal, {goal}",
        goal,
        f"{n:,} parameters, {acc:.1%}",
        hint,
        score=score,
        detail=detail,
        measures=measures,
    )
    return _report(result, quiet)


# ============================================================================================
# 12 quantization: fake quantization and its straight-through gradient
# ============================================================================================
_FAKE_QUANT_HINT = (
    "x̂ = scale · (clamp(round(x / scale) + zero_point, qmin, qmax) − zero_point), and its "
    "gradient is 1 where round(x / scale) + zero_point lies in [qmin, qmax], 0 outside: round "
    "with r + (torch.round(r) − r).detach() so the gradient passes straight through"
)
_QRANGES = {(-8, 7): (4, True), (-128, 127): (8, True), (0, 15): (4, False), (0, 255): (8, False)}


def _fake_quant_reference(x, scale, zero_point, qmin, qmax) -> torch.Tensor:
    from ..quant import fake_quantize  # torchao loads only when this exercise is checked

    bits, symmetric = _QRANGES[(qmin, qmax)]
    return fake_quantize(x, scale, zero_point, bits, symmetric=symmetric)


def _away_from_ties(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``x`` nudged so that no x / scale sits within 0.01 of a rounding tie (k + ½): there,
    ``x / s`` and ``x · (1/s)`` could round apart, and neither answer is wrong."""
    r = x / scale
    near = ((r - r.floor()) - 0.5).abs() < 0.01
    return torch.where(near, x + 0.05 * scale, x)


def check_fake_quant(fn: Callable, *, quiet: bool = False, seed: int = 0) -> CheckResult:
    """Check ``fn(x, scale, zero_point, qmin, qmax)``: affine fake quantization with the
    straight-through estimator, as :func:`kdlib.quant.fake_quantize` (and torchao's).

    Shape:
        x: any; scale and zero_point broadcast against it (a number, or one per row);
        output: like ``x``, differentiable in ``x``.
    """
    gen = torch.Generator().manual_seed(seed)

    def value_case(x, scale, zero_point, qmin, qmax) -> Callable:
        def run(f):
            before = [x.clone()]
            got = _call(f, x, scale, zero_point, qmin, qmax)
            _unchanged(before, [x], "leave x unchanged: return x̂ as a new tensor")
            expected = _fake_quant_reference(x, scale, zero_point, qmin, qmax).detach()
            z, s = zero_point, scale

            def dq(q, zz=z):
                return lambda: s * (q - zz)

            r = torch.round(x / s)
            mistakes = [
                (
                    _equals(dq(r + z)),
                    "you round but never clamp: a value beyond the range must saturate at "
                    "qmin or qmax (torch.clamp), or it needs more bits than there are",
                ),
                (
                    _equals(lambda: torch.clamp(r + z, qmin, qmax)),
                    "that is the integer code q; return the float x̂ = scale · (q − zero_point)",
                ),
                *(
                    (
                        _equals(dq(torch.clamp(r + z + d, qmin, qmax))),
                        f"your zero-point is off by one ({d:+d} when quantizing): q = "
                        "round(x / scale) + zero_point exactly, the same zero_point you "
                        "subtract when dequantizing",
                    )
                    for d in (1, -1)
                ),
                *(
                    (
                        _equals(dq(torch.clamp(r + z, qmin, qmax), z + d)),
                        f"your zero-point is off by one ({d:+d} when dequantizing): x̂ = "
                        "scale · (q − zero_point), with the zero_point you added",
                    )
                    for d in (1, -1)
                ),
                (
                    _equals(dq(torch.clamp(r - z, qmin, qmax), -z)),
                    "the zero-point's sign is flipped: add it when quantizing "
                    "(round(x / scale) + zero_point), subtract it when dequantizing",
                ),
                (
                    _equals(dq(torch.clamp(torch.trunc(x / s) + z, qmin, qmax))),
                    "round to the nearest code (torch.round), not toward zero (int, trunc)",
                ),
                (
                    _equals(dq(torch.clamp(torch.floor(x / s) + z, qmin, qmax))),
                    "round to the nearest code (torch.round), not down (floor)",
                ),
            ]
            _compare(got, expected, _FAKE_QUANT_HINT, mistakes, rtol=1e-5, atol=1e-6)

        return run

    def grad_case(x, scale, zero_point, qmin, qmax) -> Callable:
        def run(f):
            leaf = x.detach().clone().requires_grad_(True)
            got = _call(f, leaf, scale, zero_point, qmin, qmax)
            ref_leaf = x.detach().clone().requires_grad_(True)
            ref = _fake_quant_reference(ref_leaf, scale, zero_point, qmin, qmax)
            (expected,) = torch.autograd.grad(ref.sum(), ref_leaf)
            no_graph = (
                "no gradient reaches x: compute x̂ from x with torch operations (no .item(), "
                ".detach() of x, .numpy() or torch.no_grad()), so training can move x"
            )
            if not isinstance(got, torch.Tensor) or not got.requires_grad:
                raise _Miss(_show(expected), "no gradient", no_graph)
            try:
                (grad,) = _call(torch.autograd.grad, got.sum(), leaf, allow_unused=True)
            except _Raised:
                raise _Miss(_show(expected), "no gradient", no_graph) from None
            if grad is None:
                raise _Miss(_show(expected), "no gradient", no_graph)
            # A code that rounds exactly onto qmin or qmax is inside the range, yet PyTorch's
            # clamp gives it gradient 1 before 2.14 and 0 from 2.14 on: accept either there.
            code = torch.round(x * (1.0 / scale)) + zero_point
            edge = ((code == qmin) | (code == qmax)) & ((grad == 0) | (grad == 1))
            raw, grad = grad, torch.where(edge, expected, grad)
            mistakes = [  # recognised on the learner's own gradient
                (
                    lambda g: bool((raw == 0).all()),
                    "the gradient is 0 everywhere: the gradient of round is left at zero, "
                    "so nothing could learn. Let it pass straight through: "
                    "r + (torch.round(r) − r).detach() rounds forward and has gradient 1",
                ),
                (
                    lambda g: _close(raw, torch.ones_like(raw)),
                    "the gradient is 1 everywhere, even where the clamp cuts x off; there x̂ "
                    "does not change with x, so the gradient must be 0 (apply the "
                    "straight-through trick to round only, then clamp)",
                ),
            ]
            _compare(
                grad,
                expected,
                "the gradient differs from the straight-through estimator's. " + _FAKE_QUANT_HINT,
                mistakes,
                rtol=1e-5,
                atol=1e-6,
                name="gradient",
            )

        return run

    fixed = torch.tensor([-9.0, -0.3, 0.0, 0.26, 3.4, 9.0])
    half, zero = torch.tensor(0.5), torch.tensor(0)
    asym = torch.tensor([-1.2, -1.0, -0.32, 0.0, 0.26, 0.55, 2.0, 2.6])
    s8, z8 = torch.tensor(3 / 255), torch.tensor(85)
    w = _randn(gen, 6, 10, scale=2.0)
    s4 = w.abs().amax(1, keepdim=True) / 6.0  # a little small: the largest weights clamp
    w = _away_from_ties(w, s4)
    v = _randn(gen, 5, 8) + 0.5
    lo = v.amin(1, keepdim=True).clamp(max=0)
    hi = v.amax(1, keepdim=True).clamp(min=0)
    sa = (hi - lo) / 13.0  # 15 steps' range squeezed into 13: both ends clamp
    za = torch.clamp(-torch.round(lo / sa) + 1, 0, 15).to(torch.int32)
    v = _away_from_ties(v, sa)
    cases = [
        (
            "x = [-9, -0.3, 0, 0.26, 3.4, 9], scale 0.5, zero_point 0, codes -8..7 "
            "(expect [-4, -0.5, 0, 0.5, 3.5, 3.5])",
            value_case(fixed, half, zero, -8, 7),
        ),
        (
            "8-bit asymmetric: scale 3/255, zero_point 85, codes 0..255, two values out of range",
            value_case(asym, s8, z8, 0, 255),
        ),
        (
            "random 6 × 10 weights, 4-bit symmetric, one scale per row",
            value_case(w, s4, torch.zeros(6, 1, dtype=torch.int32), -8, 7),
        ),
        (
            "random 5 × 8 values, 4-bit asymmetric, one scale and zero_point per row",
            value_case(v, sa, za, 0, 15),
        ),
        (
            "the gradient of x̂.sum() on the first case (expect [0, 1, 1, 1, 1, 0])",
            grad_case(fixed, half, zero, -8, 7),
        ),
        (
            "the gradient on the 4-bit asymmetric case",
            grad_case(v, sa, za, 0, 15),
        ),
    ]
    return _run("fake_quant", fn, cases, _FAKE_QUANT_HINT, quiet)


def check_clamp_answer(answer, *, quiet: bool = False) -> CheckResult:
    """Check the answer to: with scale 0.1, zero_point 0 and 4-bit codes −8…7, what does
    fake quantization return for x = 2.0? (``round(20) = 20`` is clamped to 7: ``0.7``.)"""
    return _check_answer(
        "clamp_answer",
        answer,
        0.7,
        1e-6,
        [
            (2.0, "2.0 needs the code 20, beyond qmax = 7: the clamp saturates it"),
            (7.0, "7 is the code q; x̂ = scale · (q − zero_point)"),
            (20.0, "20 is round(x / scale) before the clamp, and a code, not x̂"),
            (0.8, "the largest 4-bit signed code is 7, not 8 (codes −8 … 7)"),
            (-0.8, "2.0 is positive: it saturates at the top code, 7"),
        ],
        "compute round(2.0 / 0.1) + 0, clamp it to [−8, 7], then multiply by 0.1",
        quiet,
    )


# ============================================================================================
# The exercises of the course, for the notebooks and the grader
# ============================================================================================
@dataclass(frozen=True)
class Exercise:
    """One graded exercise: where it lives, what the learner defines, how it is checked."""

    notebook: str  # exercise notebook stem, e.g. "04_soft_target_kd"
    name: str  # the name the learner's notebook defines (a function, or the challenge model)
    check: Callable[..., CheckResult]  # the checker, called with that object
    points: int  # points when every check passes
    title: str  # one line for reports
    kind: str = "function"  # "function"; "answer": a value read off a result; "model"


EXERCISES: dict[str, Exercise] = {
    "soften": Exercise("02_soft_targets", "soften", check_soften, 1, "softmax with temperature"),
    "mse_logit_loss": Exercise(
        "03_mse_logits", "mse_logit_loss", check_mse_logit_loss, 2, "MSE logit matching"
    ),
    "soft_target_loss": Exercise(
        "04_soft_target_kd", "soft_target_loss", check_soft_target_loss, 2, "soft-target loss"
    ),
    "kd_loss": Exercise("04_soft_target_kd", "kd_loss", check_kd_loss, 2, "combined loss"),
    "t2_answer": Exercise(
        "04_soft_target_kd",
        "t2_answer",
        check_t2_answer,
        1,
        "question: the T² experiment",
        "answer",
    ),
    "distill_epoch": Exercise(
        "04_soft_target_kd",
        "distill_epoch",
        check_distill_epoch,
        3,
        "distillation training loop",
    ),
    "inherit_top_units": Exercise(
        "05_parameter_distillation",
        "inherit_top_units",
        check_inherit_top_units,
        2,
        "weight inheritance (top units)",
    ),
    "attention_map": Exercise(
        "06_feature_distillation", "attention_map", check_attention_map, 2, "attention map"
    ),
    "hint_regressor": Exercise(
        "06_feature_distillation", "hint_regressor", check_hint_regressor, 1, "hint regressor"
    ),
    "hint_loss": Exercise(
        "06_feature_distillation", "hint_loss", check_hint_loss, 1, "FitNets hint loss"
    ),
    "hint_stage": Exercise(
        "06_feature_distillation",
        "hint_stage",
        check_hint_stage,
        3,
        "FitNets hint stage (training loop)",
    ),
    "magnitude_mask": Exercise(
        "07_magnitude_pruning", "magnitude_mask", check_magnitude_mask, 2, "magnitude mask"
    ),
    "prune_finetune": Exercise(
        "07_magnitude_pruning",
        "prune_finetune",
        check_prune_finetune,
        3,
        "prune → fine-tune cycles (training loop)",
    ),
    "sparsity_answer": Exercise(
        "07_magnitude_pruning",
        "sparsity_answer",
        check_sparsity_answer,
        1,
        "question: sparsity after rounds",
        "answer",
    ),
    "shrink_layer": Exercise(
        "08_structured_pruning", "shrink_layer", check_shrink_layer, 2, "structured shrink"
    ),
    "cubic_schedule": Exercise(
        "08_structured_pruning", "cubic_schedule", check_cubic_schedule, 1, "cubic schedule"
    ),
    "challenge": Exercise(
        "09_compression_challenge",
        "compressed",
        check_challenge,
        3,
        "compression challenge",
        "model",
    ),
    "fake_quant": Exercise(
        "12_fake_quant",
        "fake_quant",
        check_fake_quant,
        3,
        "fake quantization with the straight-through gradient",
    ),
    "clamp_answer": Exercise(
        "12_fake_quant",
        "clamp_answer",
        check_clamp_answer,
        1,
        "question: a value beyond the clamp",
        "answer",
    ),
}


def check_exercise(
    exercise_id: str, namespace: Mapping[str, object], *, quiet: bool = True
) -> CheckResult:
    """Run exercise ``exercise_id``'s checker on what ``namespace`` defines for it.

    The grader calls this in its own process, with the learner's outputs replayed from the
    submission's sandbox (:mod:`kdlib.course.record`). A name that is not defined (its cell
    deleted, or failed before defining it) fails the exercise with that reason. Never raises for
    the learner's code.
    """
    if exercise_id not in EXERCISES:
        raise ValueError(f"unknown exercise {exercise_id!r}; known: {', '.join(EXERCISES)}")
    ex = EXERCISES[exercise_id]
    if ex.name not in namespace:
        r = CheckResult(
            exercise_id,
            False,
            0,
            1,
            f"`{ex.name}` is not defined",
            f"a definition of `{ex.name}`",
            "nothing",
            f"the cell that defines `{ex.name}` is missing, or raised an error before defining it",
        )
        return _report(r, quiet)
    try:
        return ex.check(namespace[ex.name], quiet=quiet)
    except Exception as e:  # a checker bug must not cost the learner the other exercises
        r = CheckResult(
            exercise_id,
            False,
            0,
            1,
            "running the checker",
            "",
            repr(e),
            "the checker itself failed; tell your instructor",
        )
        return _report(r, quiet)


def check_notebook(
    notebook: str, namespace: Mapping[str, object], *, quiet: bool = True
) -> list[CheckResult]:
    """:func:`check_exercise` for every exercise of exercise notebook ``notebook``."""
    ids = [i for i, ex in EXERCISES.items() if ex.notebook == notebook]
    if not ids:
        known = sorted({ex.notebook for ex in EXERCISES.values()})
        raise ValueError(f"no exercises in notebook {notebook!r}; notebooks: {', '.join(known)}")
    return [check_exercise(i, namespace, quiet=quiet) for i in ids]
