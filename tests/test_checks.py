"""kdlib.course.checks: each checker passes the solution source, fails the student stub with its
hint, recognises the classic wrong answers, and never crashes on what a learner's code does."""

import contextlib
import copy

import nbformat
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils import prune as torch_prune

import kdlib
from kdlib.course import checks
from kdlib.course.checks import CHALLENGE, EXERCISES, CheckResult
from kdlib.course.exercises import EXERCISES_DIR

FUNCTION_EXERCISES = [i for i, ex in EXERCISES.items() if ex.kind == "function"]
ANSWER_EXERCISES = [i for i, ex in EXERCISES.items() if ex.kind == "answer"]
LOOP_EXERCISES = ["distill_epoch", "hint_stage", "prune_finetune"]


def _namespace(path):
    """Run a notebook's first code cell (its imports) and its exercise cells (definitions)."""
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    ns = {}
    for cell in [code[0], *(c for c in code if "exercise" in c.metadata.get("kdlib", {}))]:
        try:
            exec(compile(cell.source, path.name, "exec"), ns)
        except NotImplementedError:  # a student's unanswered question: left undefined
            assert EXERCISES[cell.metadata["kdlib"]["exercise"]].kind == "answer"
    return ns


def _solution(exercise_id):
    ex = EXERCISES[exercise_id]
    return _namespace(EXERCISES_DIR / "source" / f"{ex.notebook}.ipynb")[ex.name]


def _stub(exercise_id):
    ex = EXERCISES[exercise_id]
    return _namespace(EXERCISES_DIR / f"{ex.notebook}.ipynb")[ex.name]


# --------------------------------------------------------------------------------------------
# Solutions pass, stubs fail with their hint
@pytest.mark.parametrize("exercise_id", FUNCTION_EXERCISES)
def test_checker_passes_on_the_solution_source(exercise_id):
    result = EXERCISES[exercise_id].check(_solution(exercise_id), quiet=True)
    assert result.passed, result.message
    assert result.score == 1.0
    assert result.message.startswith(f"✓ {exercise_id}: all {result.cases} checks passed")


@pytest.mark.parametrize("exercise_id", FUNCTION_EXERCISES)
def test_checker_fails_on_the_student_stub_with_its_hint(exercise_id):
    stub = _stub(exercise_id)
    with pytest.raises(NotImplementedError, match="^Hint: ") as info:
        stub(*([None] * stub.__code__.co_argcount))
    result = EXERCISES[exercise_id].check(stub, quiet=True)
    assert not result.passed and result.score == 0.0
    assert "not implemented yet" in result.got
    assert str(info.value) in result.message  # the stub's own one-line hint
    assert "replace the `raise NotImplementedError(...)` line" in result.hint
    assert result.cases_run == 1


@pytest.mark.parametrize("exercise_id", ANSWER_EXERCISES)
def test_an_answer_passes_in_the_key_and_is_undefined_in_the_student_version(exercise_id):
    ex = EXERCISES[exercise_id]
    assert ex.check(_solution(exercise_id), quiet=True).passed
    student = nbformat.read(EXERCISES_DIR / f"{ex.notebook}.ipynb", as_version=4)
    cell = next(c for c in student.cells if c.metadata.get("kdlib", {}).get("exercise") == ex.name)
    with pytest.raises(NotImplementedError, match="^Hint: "):
        exec(compile(cell.source, "answer", "exec"), {})
    result = checks.check_exercise(exercise_id, {})
    assert not result.passed and f"`{ex.name}` is not defined" in result.case


@pytest.mark.parametrize("exercise_id", ANSWER_EXERCISES)
@pytest.mark.parametrize("odd", ["64", None, [0.875], float("nan"), lambda: 64])
def test_an_answer_that_is_not_a_number_is_reported(exercise_id, odd):
    result = EXERCISES[exercise_id].check(odd, quiet=True)
    assert not result.passed and result.hint and result.got


def test_every_exercise_has_its_checker_named_after_it():
    for exercise_id, ex in EXERCISES.items():
        assert ex.check is getattr(checks, f"check_{exercise_id}")
        assert ex.check.__name__ in checks.__all__
        assert ex.points > 0


# --------------------------------------------------------------------------------------------
# The classic wrong answers get their specific hint
def _kl(s, t, T, reduction="batchmean"):
    return F.kl_div(
        F.log_softmax(s / T, 1), F.log_softmax(t / T, 1), reduction=reduction, log_target=True
    )


def _mask_smallest_kept(w, amount):
    k = round(amount * w.numel())
    mask = torch.zeros_like(w)
    mask.view(-1)[w.abs().flatten().topk(w.numel() - k, largest=False).indices] = 1
    return mask


def _mask(w, amount, count=round, key=torch.abs):
    k = count(amount * w.numel())
    mask = torch.ones_like(w)
    if k:
        mask.view(-1)[key(w).flatten().topk(int(k), largest=False).indices] = 0
    return mask


def _inherit(score, biases=True, largest=True):
    def fn(student, teacher):
        w1, w2 = teacher.fc1.weight, teacher.fc2.weight
        keep = score(w1, w2).topk(student.fc1.out_features, largest=largest).indices
        with torch.no_grad():
            student.fc1.weight.copy_(w1[keep])
            student.fc2.weight.copy_(w2[:, keep])
            if biases:
                student.fc1.bias.copy_(teacher.fc1.bias[keep])
                student.fc2.bias.copy_(teacher.fc2.bias)
        return student

    return fn


def _shrink(score, largest=True, bias=True, columns=True):
    def fn(fc1, fc2, amount):
        n_keep = fc1.out_features - round(amount * fc1.out_features)
        keep = score(fc1.weight).topk(n_keep, largest=largest).indices
        a, b = nn.Linear(fc1.in_features, n_keep), nn.Linear(n_keep, fc2.out_features)
        with torch.no_grad():
            a.weight.copy_(fc1.weight[keep])
            if bias:
                a.bias.copy_(fc1.bias[keep])
            b.weight.copy_(fc2.weight[:, keep] if columns else fc2.weight[keep])
            b.bias.copy_(fc2.bias)
        return a, b

    return fn


def _cubic(power=3, clamp=True, swap=False, per_n=False):
    def fn(t, s_i, s_f, t0, n, dt):
        p = (t - t0) / (n if per_n else n * dt)
        if clamp:
            p = min(max(p, 0.0), 1.0)
        if swap:
            s_i, s_f = s_f, s_i
        return s_f + (s_i - s_f) * (1 - p) ** power

    return fn


def _in_place_soften(z, T):
    z /= T
    return torch.softmax(z, 1)


def _teacher_editing_inherit(student, teacher):
    with torch.no_grad():
        teacher.fc1.weight.mul_(1.0)  # harmless, but then:
        teacher.fc2.bias.zero_()
    return _inherit(lambda w1, w2: w1.norm(dim=1) * w2.norm(dim=0))(student, teacher)


# Training loops: the right one, and the classic wrong ones
def _kd_epoch(teacher_eval=True, no_grad=True, zero_grad=True, student_train=True, loss=None):
    def fn(student, teacher, batches, optimizer, T, alpha):
        if teacher_eval:
            teacher.eval()
        if student_train:
            student.train()
        losses = []
        for X, y in batches:
            with torch.no_grad() if no_grad else contextlib.nullcontext():
                z_t = teacher(X)
            z_s = student(X)
            value = (loss or kdlib.kd_loss)(z_s, z_t, y, T, alpha)
            if zero_grad:
                optimizer.zero_grad()
            value.backward()
            optimizer.step()
            losses.append(value.item())
        return losses

    return fn


def _hint_stage(with_regressor=True, adam=False, teacher_eval=True):
    def fn(student, teacher, regressor, batches, lr):
        if teacher_eval:
            teacher.eval()
        params = [*student.parameters(), *(regressor.parameters() if with_regressor else ())]
        opt = (torch.optim.Adam if adam else torch.optim.SGD)(params, lr=lr)
        losses = []
        for X in batches:
            with torch.no_grad():
                f_t = teacher(X)
            value = F.mse_loss(regressor(student(X)), f_t)
            opt.zero_grad()
            value.backward()
            opt.step()
            losses.append(value.item())
        return losses

    return fn


def _prune_loop(remove=False, once=False, scope="layer", finetune_first=False, permanent=False):
    def fn(model, batches, amount, rounds, lr):
        layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
        opt = torch.optim.SGD(model.parameters(), lr=lr)

        def finetune():
            for X, y in batches:
                value = F.cross_entropy(model(X), y)
                opt.zero_grad()
                value.backward()
                opt.step()

        for k in range(rounds):
            if finetune_first:
                finetune()
            if not once or k == 0:
                if scope == "global":
                    pairs = [(m, "weight") for m in layers]
                    torch_prune.global_unstructured(
                        pairs, torch_prune.L1Unstructured, amount=amount
                    )
                else:
                    for m in layers:
                        torch_prune.l1_unstructured(m, "weight", amount=amount)
                if remove:
                    for m in layers:
                        torch_prune.remove(m, "weight")
            if not finetune_first:
                finetune()
        if permanent:
            for m in layers:
                torch_prune.remove(m, "weight")
        return model

    return fn


def _prune_by_hand(model, batches, amount, rounds, lr):
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(rounds):
        for m in model.modules():
            if isinstance(m, nn.Linear):
                with torch.no_grad():
                    w = m.weight
                    k = round(amount * int((w != 0).sum()))
                    if k:
                        threshold = w.abs()[w != 0].kthvalue(k).values
                        w.mul_((w.abs() > threshold).float())
        for X, y in batches:
            value = F.cross_entropy(model(X), y)
            opt.zero_grad()
            value.backward()
            opt.step()
    return model


def _kd_teacher_only(s, t, y, T, a):
    return kdlib.soft_target_kl(s, t, T)


L1 = lambda w: w.abs().sum(1)  # noqa: E731
PROD = lambda w1, w2: w1.norm(dim=1) * w2.norm(dim=0)  # noqa: E731


def _fq(clamp=True, dz_q=0, dz_dq=0, ste="round", rounding=torch.round, code=False):
    """Fake quantization with one classic mistake switched on."""

    def fake_quant(x, scale, zero_point, qmin, qmax):
        r = x / scale
        if ste == "round":  # the straight-through trick on round only (correct)
            r = r + (rounding(r) - r).detach()
        else:  # torch.round's own gradient (zero), or "whole": replaced below
            r = rounding(r)
        q = r + zero_point + dz_q
        if clamp:
            q = torch.clamp(q, qmin, qmax)
        if code:
            return q
        out = scale * (q - zero_point - dz_dq)
        if ste == "whole":  # straight through everything, clamp included
            out = x + (out - x).detach()
        return out

    return fake_quant


CLASSIC_MISTAKES = [
    # soft-target loss: the three classic mistakes, and their neighbours
    ("soft_target_loss", lambda s, t, T: _kl(s, t, T), "divided by T²"),
    (
        "soft_target_loss",
        lambda s, t, T: (
            F.kl_div(F.softmax(s / T, 1), F.softmax(t / T, 1), reduction="batchmean") * T**2
        ),
        "F.kl_div expects log-probabilities",
    ),
    ("soft_target_loss", lambda s, t, T: _kl(s, t, T, "mean") * T**2, "reduction='mean'"),
    ("soft_target_loss", lambda s, t, T: _kl(s, t, T, "sum") * T**2, "summed over the batch"),
    ("soft_target_loss", lambda s, t, T: _kl(s, t, T) * T, "the factor is T²"),
    (
        "soft_target_loss",
        lambda s, t, T: (
            F.kl_div(
                F.log_softmax(t / T, 1),
                F.log_softmax(s / T, 1),
                reduction="batchmean",
                log_target=True,
            )
            * T**2
        ),
        "wrong way round",
    ),
    ("soft_target_loss", lambda s, t, T: _kl(s * T, t * T, T) * T**2, "not softened"),
    ("soft_target_loss", lambda s, t, T: kdlib.soft_target_ce(s, t, T), "cross-entropy form"),
    (
        "soft_target_loss",
        lambda s, t, T: (
            (F.softmax(t / T, 1) * (F.softmax(t / T, 1).log() - F.softmax(s / T, 1).log()))
            .sum(1)
            .mean()
            * T**2
        ),
        "F.log_softmax",
    ),
    ("soft_target_loss", lambda s, t, T: float(kdlib.soft_target_kl(s, t, T)), "autograd"),
    # combined loss
    (
        "kd_loss",
        lambda s, t, y, T, a: (1 - a) * kdlib.soft_target_kl(s, t, T) + a * F.cross_entropy(s, y),
        "weights are swapped",
    ),
    (
        "kd_loss",
        lambda s, t, y, T, a: a * _kl(s, t, T) + (1 - a) * F.cross_entropy(s, y),
        "lacks its T²",
    ),
    (
        "kd_loss",
        lambda s, t, y, T, a: (
            a * kdlib.soft_target_kl(s, t, T) + (1 - a) * F.cross_entropy(s / T, y)
        ),
        "raw logits (T = 1)",
    ),
    # MSE logit loss
    ("mse_logit_loss", lambda s, t: F.mse_loss(s.softmax(1), t.softmax(1)), "probabilities"),
    ("mse_logit_loss", lambda s, t: ((s - t) ** 2).sum(1).mean(), "summed over the classes"),
    ("mse_logit_loss", lambda s, t: ((s - t) ** 2).mean(1), "one loss per example"),
    # softmax with temperature
    ("soften", lambda z, T: torch.softmax(z * T, 1), "multiplied the logits by T"),
    ("soften", lambda z, T: torch.softmax(z / T, 0), "dim=1"),
    ("soften", lambda z, T: torch.exp(z / T) / torch.exp(z / T).sum(1, keepdim=True), "overflow"),
    ("soften", _in_place_soften, "in place"),
    # magnitude mask: the classic mistake, and the others
    ("magnitude_mask", _mask_smallest_kept, "keeps the smallest weights"),
    ("magnitude_mask", lambda w, a: _mask(w, a, count=int), "round(amount · n)"),
    ("magnitude_mask", lambda w, a: _mask(w, a, key=lambda v: v), "magnitude |w|"),
    ("magnitude_mask", lambda w, a: w * _mask(w, a), "not the pruned weights"),
    # weight inheritance
    ("inherit_top_units", _inherit(PROD, largest=False), "smallest scores"),
    ("inherit_top_units", _inherit(lambda w1, w2: w1.norm(dim=1)), "incoming weights only"),
    ("inherit_top_units", _inherit(lambda w1, w2: w2.norm(dim=0)), "outgoing weights only"),
    ("inherit_top_units", _inherit(PROD, biases=False), "biases are not"),
    ("inherit_top_units", _teacher_editing_inherit, "write only into the student"),
    # attention map
    ("attention_map", lambda f: f.pow(2).mean(1).flatten(1), "not normalised"),
    ("attention_map", lambda f: F.normalize(f.abs().mean(1).flatten(1), dim=1), "square"),
    ("attention_map", lambda f: F.normalize(f.pow(2).mean(1), dim=1), "flatten"),
    (
        "attention_map",
        lambda f: f.pow(2).mean(1).flatten(1) / f.pow(2).mean(1).flatten(1).norm(),
        "each example's map separately",
    ),
    # hint regressor and hint loss
    (
        "hint_regressor",
        lambda s, t: nn.Conv2d(s[1], t[1], 3, padding=1) if len(s) == 4 else nn.Linear(s[1], t[1]),
        "kernel_size=1",
    ),
    (
        "hint_regressor",
        lambda s, t: nn.Conv2d(t[1], s[1], 1) if len(s) == 4 else nn.Linear(s[1], t[1]),
        "in_channels (or in_features) is the student's",
    ),
    ("hint_loss", lambda f_s, f_t, r: ((r(f_s) - f_t) ** 2).sum(), "summed the squared"),
    ("hint_loss", lambda f_s, f_t, r: ((r(f_s) - f_t) ** 2).sum() / 2, "paper's ½‖·‖²"),
    # structured shrink
    ("shrink_layer", _shrink(L1, largest=False), "largest norms"),
    ("shrink_layer", _shrink(lambda w: w.norm(dim=1)), "L2 norm"),
    ("shrink_layer", _shrink(L1, bias=False), "biases are not"),
    ("shrink_layer", _shrink(L1, columns=False), "fc2 keeps columns"),
    # cubic schedule
    ("cubic_schedule", _cubic(power=1), "straight line"),
    ("cubic_schedule", _cubic(power=2), "not 2"),
    ("cubic_schedule", _cubic(clamp=False), "clamp the progress"),
    ("cubic_schedule", _cubic(swap=True), "swapped"),
    ("cubic_schedule", _cubic(per_n=True), "n·dt"),
    # the distillation loop
    ("distill_epoch", _kd_epoch(teacher_eval=False), "call teacher.eval()"),
    ("distill_epoch", _kd_epoch(no_grad=False), "torch.no_grad()"),
    ("distill_epoch", _kd_epoch(zero_grad=False), "optimizer.zero_grad()"),
    ("distill_epoch", _kd_epoch(student_train=False), "call student.train()"),
    ("distill_epoch", _kd_epoch(loss=lambda s, t, y, T, a: F.cross_entropy(s, y)), "labels only"),
    ("distill_epoch", _kd_epoch(loss=_kd_teacher_only), "teacher only"),
    ("distill_epoch", lambda s, t, b, o, T, a: [0.0] * len(b), "eval mode"),
    (
        "distill_epoch",
        lambda *args: [v * 2 for v in _kd_epoch()(*args)],
        "the weights are right but the losses are not",
    ),
    # the hint stage
    ("hint_stage", _hint_stage(with_regressor=False), "the regressor's parameters too"),
    ("hint_stage", _hint_stage(adam=True), "not Adam"),
    ("hint_stage", _hint_stage(teacher_eval=False), "each batch's statistics"),
    # prune → fine-tune
    ("prune_finetune", _prune_loop(remove=True), "came back to life"),
    ("prune_finetune", _prune_by_hand, "came back to life"),
    ("prune_finetune", _prune_loop(once=True), "pruned once"),
    ("prune_finetune", _prune_loop(scope="global"), "globally"),
    ("prune_finetune", _prune_loop(finetune_first=True), "fine-tune after pruning"),
    ("prune_finetune", lambda m, b, a, r, lr: None, "return the model"),
    # fake quantization: the three named mistakes, and the others
    ("fake_quant", _fq(clamp=False), "never clamp"),
    ("fake_quant", _fq(dz_q=1), "zero-point is off by one (+1 when quantizing)"),
    ("fake_quant", _fq(dz_q=-1), "zero-point is off by one (-1 when quantizing)"),
    ("fake_quant", _fq(dz_dq=1), "zero-point is off by one (+1 when dequantizing)"),
    ("fake_quant", _fq(ste="none"), "gradient of round is left at zero"),
    ("fake_quant", _fq(ste="whole"), "even where the clamp cuts"),
    ("fake_quant", _fq(code=True), "integer code"),
    ("fake_quant", _fq(rounding=torch.floor), "not down (floor)"),
    ("fake_quant", _fq(rounding=torch.trunc), "not toward zero"),
    ("fake_quant", lambda x, s, z, lo, hi: _fq()(x.detach(), s, z, lo, hi), "no gradient"),
    # questions about a result
    ("clamp_answer", 2.0, "the clamp saturates it"),
    ("clamp_answer", 7, "the code q"),
    ("clamp_answer", 0.8, "not 8"),
    ("clamp_answer", 0.5, "clamp it to"),
    ("t2_answer", 8, "that is T"),
    ("t2_answer", 1 / 64, "the other way round"),
    ("t2_answer", 10.0, "divide the gradient norm"),
    ("sparsity_answer", 1.5, "cannot exceed 1"),
    ("sparsity_answer", 0.125, "the fraction that survives"),
    ("sparsity_answer", 87.5, "not a percentage"),
    ("sparsity_answer", 0.6, "read fc1's sparsity"),
]


@pytest.mark.filterwarnings("ignore::UserWarning")  # what the wrong answers make torch say
@pytest.mark.parametrize(
    ("exercise_id", "wrong", "hint"),
    CLASSIC_MISTAKES,
    ids=[f"{e}-{h}" for e, _, h in CLASSIC_MISTAKES],
)
def test_a_classic_mistake_gets_its_specific_hint(exercise_id, wrong, hint):
    result = EXERCISES[exercise_id].check(wrong, quiet=True)
    assert not result.passed
    assert hint in result.hint, result.message
    assert result.case and result.got  # names the case and what came back


def test_a_loop_that_keeps_its_masks_or_makes_them_permanent_at_the_end_passes():
    assert checks.check_prune_finetune(_prune_loop(), quiet=True).passed
    assert checks.check_prune_finetune(_prune_loop(permanent=True), quiet=True).passed


def test_loop_checkers_train_the_same_way_every_time():
    for exercise_id, wrong in [
        ("distill_epoch", _kd_epoch(zero_grad=False)),
        ("hint_stage", _hint_stage(with_regressor=False)),
        ("prune_finetune", _prune_loop(once=True)),
    ]:
        first, second = (EXERCISES[exercise_id].check(wrong, quiet=True) for _ in range(2))
        assert first.message == second.message
        assert first.cases_run == 1 and not first.passed


def test_the_prune_loop_reference_compounds_like_kdlib_magnitude_prune():
    from kdlib.prune import magnitude_prune, sparsity_report

    model, batches = checks._prune_loop_setup(0, 2)
    ref = checks._prune_loop_reference(model, batches, 0.5, 3, 0.0)  # lr 0: pruning only
    again = copy.deepcopy(model)
    for _ in range(3):
        magnitude_prune(again, 0.5)
    for name in ("fc1", "fc2", "fc3"):
        assert torch.equal(
            ref.get_submodule(name).weight_mask, again.get_submodule(name).weight_mask
        )
    assert sparsity_report(ref).sparsity == pytest.approx(1 - 0.5**3, abs=0.01)


def test_a_failure_message_names_case_expected_got_and_hint(capsys):
    result = checks.check_soft_target_loss(lambda s, t, T: _kl(s, t, T))
    printed = capsys.readouterr().out
    assert printed.strip() == result.message
    lines = printed.splitlines()
    assert lines[0] == "✗ soft_target_loss failed on check 2 of 7: the same logits at T=4"
    expected = float(
        kdlib.soft_target_kl(torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 2.0]]), 4)
    )
    assert lines[1] == f"  expected: {expected:.6g}"
    assert lines[2] == f"  got:      {expected / 16:.6g}"
    assert lines[3].startswith("  hint:     your value is the right one divided by T² = 16")


# --------------------------------------------------------------------------------------------
# Checkers never crash on the learner's code
def _raises(*args):
    raise ValueError("something inside the student's code")


def _exits(*args):
    raise SystemExit(3)


ODD_ANSWERS = [
    (_raises, "ValueError: something inside the student's code"),
    (_exits, "SystemExit: 3"),
    (lambda *a: None, "None"),
    (lambda *a: "0.5", "a str"),
    (lambda *a: torch.ones(3, 3, dtype=torch.complex64), ""),
    (lambda: 0.0, "TypeError"),  # wrong number of arguments
]


@pytest.mark.parametrize("exercise_id", FUNCTION_EXERCISES)
@pytest.mark.parametrize(("odd", "shown"), ODD_ANSWERS)
def test_checkers_report_odd_answers_and_never_raise(exercise_id, odd, shown):
    result = EXERCISES[exercise_id].check(odd, quiet=True)
    assert isinstance(result, CheckResult) and not result.passed
    assert result.hint
    if not (exercise_id == "inherit_top_units" and shown == "None"):  # None: filled in place
        assert shown in result.got


@pytest.mark.parametrize("exercise_id", FUNCTION_EXERCISES)
def test_a_non_function_is_reported_not_raised(exercise_id):
    result = EXERCISES[exercise_id].check(42, quiet=True)
    assert not result.passed
    assert result.expected == "a function"
    assert f"check_{exercise_id}({exercise_id})" in result.hint


def test_quiet_prints_nothing_and_the_result_is_not_displayed_twice(capsys):
    good = lambda z, T: torch.softmax(z / T, 1)  # noqa: E731
    quiet = checks.check_soften(good, quiet=True)
    assert capsys.readouterr().out == ""
    quiet._ipython_display_()  # a cell ending in a quiet check still shows the message
    assert capsys.readouterr().out.strip() == quiet.message
    loud = checks.check_soften(good)
    assert capsys.readouterr().out.strip() == "✓ soften: all 5 checks passed."
    loud._ipython_display_()
    assert capsys.readouterr().out == ""
    assert bool(loud) and repr(loud) == "<CheckResult soften: passed, score 1>"


def test_a_checker_leaves_the_learners_inputs_to_the_checker_alone():
    # The same checker run twice gives the same verdict: cases are fixed by the seed.
    wrong = lambda s, t, T: _kl(s, t, T)  # noqa: E731
    a, b = (
        checks.check_soft_target_loss(wrong, quiet=True),
        checks.check_soft_target_loss(wrong, quiet=True),
    )
    assert a.message == b.message


def test_a_complex_answer_is_reported():
    result = checks.check_soften(lambda z, T: torch.softmax(z / T, 1).to(torch.complex64))
    assert "a complex tensor of shape (1, 3)" in result.got
    assert result.hint == "return real numbers"


@settings(max_examples=8, deadline=None)
@given(factor=st.floats(0.2, 5.0).filter(lambda c: abs(c - 1) > 1e-2))
def test_any_scaled_soft_loss_fails_and_the_reference_passes(factor):
    ref = lambda s, t, T: kdlib.soft_target_kl(s, t, T)  # noqa: E731
    assert checks.check_soft_target_loss(ref, quiet=True).passed
    assert not checks.check_soft_target_loss(lambda s, t, T: ref(s, t, T) * factor, quiet=True)


# --------------------------------------------------------------------------------------------
# The references are kdlib's own
def test_inheritance_reference_is_kdlib_params_inherit():
    gen = torch.Generator().manual_seed(1)
    teacher = checks._mlp1(12, 9, 4, gen)
    student = checks._mlp1(12, 3, 4, gen)
    ref = checks._inherit_reference(copy.deepcopy(student), teacher)
    mine = checks._inherit_by(copy.deepcopy(student), teacher, PROD)
    X = torch.randn(7, 12)
    torch.testing.assert_close(ref(X), mine(X))


def test_shrink_reference_is_kdlib_prune():
    from kdlib.prune import shrink, structured_prune

    torch.manual_seed(0)
    fc1, fc2 = nn.Linear(8, 10), nn.Linear(10, 3)
    ref = checks._shrink_reference(fc1, fc2, 0.4)
    net = nn.Sequential(nn.Linear(8, 10), nn.ReLU(), nn.Linear(10, 3))
    net.load_state_dict(
        {"0.weight": fc1.weight, "0.bias": fc1.bias, "2.weight": fc2.weight, "2.bias": fc2.bias}
    )
    also = shrink(structured_prune(net, 0.4, norm=1, layers=["0"]))
    X = torch.randn(5, 8)
    torch.testing.assert_close(ref(X), also(X))
    torch.testing.assert_close(ref(X), checks._shrink_by(fc1, fc2, 0.4, L1)(X))
    assert ref.fc1.out_features == 6


def test_mask_reference_is_what_kdlib_prune_masks():
    from kdlib.prune import magnitude_prune

    torch.manual_seed(0)
    layer = nn.Linear(9, 7)
    mask = checks._reference_mask(layer.weight.detach(), 0.37)
    magnitude_prune(nn.Sequential(layer), 0.37)
    assert torch.equal(mask, layer.weight_mask)


def test_cubic_reference_is_kdlib_agp_schedule():
    from kdlib.prune import agp_schedule

    s = agp_schedule(0.1, 0.8, t0=2, n=4, dt=2)
    for t in range(0, 14):
        assert checks._cubic_reference(t, 0.1, 0.8, 2, 4, 2) == s(t)
        assert checks._cubic_reference(t, 0.1, 0.8, 2, 4, 2) == pytest.approx(
            _cubic()(t, 0.1, 0.8, 2, 4, 2)
        )


# --------------------------------------------------------------------------------------------
# The challenge and the notebook-level entry points
def test_challenge_reports_size_and_accuracy(monkeypatch):
    net = kdlib.mlp(784, [3], 10)  # within the budget, far from the bar untrained
    n = kdlib.count_params(net, nonzero=True)
    result = checks.check_challenge(net, quiet=True)
    assert not result.passed
    assert f"nonzero parameters: {n:,}" in result.detail
    assert "not accurate enough" in result.hint
    monkeypatch.setitem(CHALLENGE, "min_accuracy", 0.0)
    assert checks.check_challenge(net, quiet=True).passed
    monkeypatch.setitem(CHALLENGE, "min_accuracy", 1.01)
    monkeypatch.setitem(CHALLENGE, "partial_accuracy", 0.0)
    partial = checks.check_challenge(net, quiet=True)
    assert not partial.passed and partial.score == pytest.approx(1 / 3)


def test_challenge_counts_nonzero_parameters_only():
    big = kdlib.model("lenet-300-100", seed=0)
    result = checks.check_challenge(big, quiet=True)
    assert not result.passed and result.score == 0 and "too many parameters" in result.hint
    with torch.no_grad():
        for p in big.parameters():
            p.mul_((torch.rand_like(p) < 0.008).float())  # keep about 0.8% of the weights
    assert kdlib.count_params(big, nonzero=True) <= CHALLENGE["max_params"]
    assert "not accurate enough" in checks.check_challenge(big, quiet=True).hint


def test_challenge_score_ranks_size_at_the_bar():
    budget, bar = CHALLENGE["max_params"], CHALLENGE["min_accuracy"]
    score = checks.challenge_score
    assert score(budget, bar) == score(budget // 2, 0.999) == 1.0
    assert score(2 * budget, bar) == pytest.approx(1 / 3)
    assert score(4 * budget, bar) == pytest.approx(1 / 6)
    assert score(budget + 1, bar) > score(budget + 100, bar) > score(10 * budget, bar) > 0
    assert score(budget, CHALLENGE["partial_accuracy"]) == pytest.approx(1 / 3)
    assert score(budget + 1, bar - 0.001) == 0.0
    assert score(budget, CHALLENGE["partial_accuracy"] - 0.001) == 0.0


def test_challenge_reports_the_numbers_a_leaderboard_ranks(monkeypatch):
    net = kdlib.mlp(784, [4], 10)
    n = kdlib.count_params(net, nonzero=True)
    monkeypatch.setitem(CHALLENGE, "min_accuracy", 0.0)
    monkeypatch.setitem(CHALLENGE, "max_params", n // 2)
    result = checks.check_challenge(net, quiet=True)
    assert not result.passed and result.score == pytest.approx(2 / 3 * (n // 2) / n)
    assert "too big" in result.hint
    assert result.measures["nonzero_params"] == n
    assert result.measures["reached_bar"] and not result.measures["within_budget"]
    assert result.to_dict()["measures"] == result.measures


def test_challenge_reports_a_model_that_is_not_one():
    assert checks.check_challenge("my model", quiet=True).expected == "an nn.Module"
    wrong_shape = nn.Sequential(nn.Flatten(), nn.Linear(784, 3))
    result = checks.check_challenge(wrong_shape, quiet=True)
    assert "(1000, 10)" in result.expected and "(1000, 3)" in result.got
    broken = nn.Linear(5, 10)  # cannot take images
    assert "exception" in checks.check_challenge(broken, quiet=True).got


def test_check_exercise_and_check_notebook():
    result = checks.check_exercise("soften", {})
    assert not result.passed
    assert "`soften` is not defined" in result.case
    assert "missing, or raised an error" in result.hint
    ns = {
        "soft_target_loss": kdlib.soft_target_kl,
        "kd_loss": kdlib.kd_loss,
        "t2_answer": 64,
        "distill_epoch": _kd_epoch(),
    }
    results = checks.check_notebook("04_soft_target_kd", ns)
    assert [r.exercise for r in results] == [
        "soft_target_loss",
        "kd_loss",
        "t2_answer",
        "distill_epoch",
    ]
    assert all(results)
    with pytest.raises(ValueError, match="unknown exercise 'nope'"):
        checks.check_exercise("nope", ns)
    with pytest.raises(ValueError, match="no exercises in notebook '99_x'"):
        checks.check_notebook("99_x", ns)


def test_check_exercise_survives_a_broken_checker(monkeypatch):
    def broken(fn, quiet=True):
        raise RuntimeError("bug in the checker")

    ex = EXERCISES["soften"]
    monkeypatch.setitem(EXERCISES, "soften", type(ex)(ex.notebook, ex.name, broken, 1, ex.title))
    result = checks.check_exercise("soften", {"soften": lambda z, T: z})
    assert not result.passed and "tell your instructor" in result.hint


def test_regressor_sizes_match_kdlib_projector():
    assert checks.check_hint_regressor(kdlib.projector, quiet=True)
    pairs = [((128, 8, 7, 7), (128, 32, 7, 7)), ((128, 64), (128, 100))]
    for s, t in pairs:
        assert kdlib.count_params(kdlib.projector(s, t)) == s[1] * t[1] + t[1]
