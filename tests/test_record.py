"""kdlib.course.record: what the sandbox records is data only, and replaying it to the checker in
the grader's process gives the verdict the checker gives on the learner's function itself."""

import contextlib
import copy
import functools
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import kdlib
from kdlib.course.checks import EXERCISES, check_exercise
from kdlib.course.record import RecordError, record_exercise, replay_exercise


def _kl(s, t, T):
    return F.kl_div(
        F.log_softmax(s / T, 1), F.log_softmax(t / T, 1), reduction="batchmean", log_target=True
    )


def _in_place_soften(z, T):
    z /= T
    return torch.softmax(z, 1)


def _sharing_inherit(student, teacher):  # right values, but the weights are the teacher's
    student.fc2.weight = teacher.fc2.weight
    return student


def _kd_epoch(student, teacher, batches, optimizer, T, alpha, no_grad=True):
    teacher.eval()
    student.train()
    losses = []
    for X, y in batches:
        with torch.no_grad() if no_grad else contextlib.nullcontext():
            z_t = teacher(X)
        loss = kdlib.kd_loss(student(X), z_t, y, T, alpha)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def _prune_loop(model, batches, amount, rounds, lr, remove=False, copy_first=False):
    if copy_first:  # returns a new model, made permanent: recorded as torch layers
        model = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    for _ in range(rounds):
        for m in layers:
            torch.nn.utils.prune.l1_unstructured(m, "weight", amount=amount)
            if remove:
                torch.nn.utils.prune.remove(m, "weight")
        for X, y in batches:
            loss = F.cross_entropy(model(X), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    if copy_first:
        for m in layers:
            torch.nn.utils.prune.remove(m, "weight")
    return model


def _hint_stage(student, teacher, regressor, batches, lr, train_teacher=False):
    teacher.train(train_teacher)
    opt = torch.optim.SGD([*student.parameters(), *regressor.parameters()], lr=lr)
    losses = []
    for X in batches:
        with torch.no_grad():
            f_t = teacher(X)
        loss = F.mse_loss(regressor(student(X)), f_t)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


ANSWERS = [
    ("distill_epoch", _kd_epoch),
    ("distill_epoch", functools.partial(_kd_epoch, no_grad=False)),  # gradients in the teacher
    ("distill_epoch", lambda s, t, b, o, T, a: [0.0] * len(b)),  # teacher left in train mode
    ("hint_stage", _hint_stage),
    ("hint_stage", functools.partial(_hint_stage, train_teacher=True)),  # batch-norm stats move
    ("prune_finetune", _prune_loop),  # masks rebuilt with torch's own pruning
    ("prune_finetune", functools.partial(_prune_loop, remove=True)),
    ("prune_finetune", functools.partial(_prune_loop, copy_first=True)),
    ("t2_answer", 64),
    ("t2_answer", 8.0),
    ("sparsity_answer", 0.875),
    ("sparsity_answer", "0.875"),
    ("soften", lambda z, T: torch.softmax(z / T, 1)),
    ("soften", lambda z, T: torch.softmax(z * T, 1)),
    ("soften", _in_place_soften),
    ("soften", lambda z, T: 0.5),
    ("soft_target_loss", lambda s, t, T: kdlib.soft_target_kl(s, t, T)),
    ("soft_target_loss", lambda s, t, T: _kl(s, t, T)),  # T² missing
    ("soft_target_loss", lambda s, t, T: float(kdlib.soft_target_kl(s, t, T))),  # no graph
    ("soft_target_loss", lambda s, t, T: kdlib.soft_target_kl(s.detach(), t, T) * 1.0),
    (
        "kd_loss",
        lambda s, t, y, T, a: a * kdlib.soft_target_kl(s, t, T) + (1 - a) * F.cross_entropy(s, y),
    ),
    ("mse_logit_loss", lambda s, t: F.mse_loss(s, t)),
    ("hint_loss", lambda f_s, f_t, r: F.mse_loss(r(f_s), f_t)),
    ("hint_loss", lambda f_s, f_t, r: F.mse_loss(r(f_s).detach(), f_t)),
    (
        "hint_regressor",
        lambda s, t: nn.Conv2d(s[1], t[1], 1) if len(s) == 4 else nn.Linear(s[1], t[1]),
    ),
    (
        "hint_regressor",
        lambda s, t: (
            nn.Sequential(nn.Conv2d(s[1], t[1], 3, padding=1))
            if len(s) == 4
            else nn.Linear(s[1], t[1])
        ),
    ),
    ("inherit_top_units", lambda s, t: kdlib.params.inherit(s, t, strategy="top-units")),
    ("inherit_top_units", _sharing_inherit),
    ("magnitude_mask", lambda w, a: (w.abs() > w.abs().median()).float()),
    ("cubic_schedule", lambda t, s_i, s_f, t0, n, dt: s_f),
    ("soften", lambda z, T: (_ for _ in ()).throw(NotImplementedError("Hint: soon"))),
    ("soften", 42),
]


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize(("exercise_id", "answer"), ANSWERS)
def test_replay_gives_the_checkers_own_verdict(tmp_path, exercise_id, answer):
    name = EXERCISES[exercise_id].name
    torch.manual_seed(0)  # answers that build layers draw the same weights both times
    direct = check_exercise(exercise_id, {name: answer}).to_dict()
    torch.manual_seed(0)
    record_exercise(exercise_id, {name: answer}, tmp_path)
    assert replay_exercise(exercise_id, tmp_path) == direct


def test_the_challenge_model_is_rebuilt_from_torch_layers_with_its_effective_weights(tmp_path):
    model = kdlib.mlp(784, [16], 10)
    torch.nn.utils.prune.l1_unstructured(model.fc1, "weight", amount=0.5)
    direct = check_exercise("challenge", {"compressed": model}).to_dict()
    record_exercise("challenge", {"compressed": model}, tmp_path)
    assert replay_exercise("challenge", tmp_path) == direct
    assert "nonzero parameters: 6,458" in direct["message"]  # 12,544 / 2 + 16 + 160 + 10


def test_a_pruned_model_comes_back_with_torch_masks_and_its_gradients(tmp_path):
    record_exercise("prune_finetune", {"prune_finetune": _prune_loop}, tmp_path)
    record = json.loads((tmp_path / "prune_finetune.json").read_text())
    state = record["calls"][0]["state"]["a0"]
    assert "fc1.weight_orig" in state["params"] and "fc1.weight_mask" in state["buffers"]
    assert "alias" not in state["params"]["fc1.weight_orig"]  # renamed by pruning, not shared
    assert "grad" in state["params"]["fc1.weight_orig"]
    assert state["training"][""] is True


def test_a_custom_module_is_not_rebuilt_and_its_code_never_runs(tmp_path):
    class Sneaky(nn.Module):
        def forward(self, x):
            raise AssertionError("this must not run in the grader")

    record_exercise("hint_regressor", {"hint_regressor": lambda s, t: Sneaky()}, tmp_path)
    result = replay_exercise("hint_regressor", tmp_path)
    assert not result["passed"]
    assert "the grader rebuilds only torch.nn's own layers" in result["got"]
    assert "a Sneaky module" in result["got"]


def test_a_record_cannot_carry_a_verdict_or_pickled_objects(tmp_path):
    record_exercise("soften", {"soften": lambda z, T: torch.zeros_like(z)}, tmp_path)
    record = json.loads((tmp_path / "soften.json").read_text())
    record.update(passed=True, score=1.0, message="✓ soften: all 5 checks passed.")
    (tmp_path / "soften.json").write_text(json.dumps(record))
    assert replay_exercise("soften", tmp_path)["passed"] is False  # extra keys are ignored
    arrays = {"t0": np.array([object()], dtype=object)}
    np.savez(tmp_path / "soften.npz", **arrays)
    with pytest.raises(RecordError, match="ValueError"):  # numpy refuses pickles
        replay_exercise("soften", tmp_path)


def test_no_record_and_a_missing_definition(tmp_path):
    assert replay_exercise("soften", tmp_path) is None
    record_exercise("soften", {}, tmp_path)
    assert "`soften` is not defined" in replay_exercise("soften", tmp_path)["message"]


def test_memory_freed_during_a_call_is_not_taken_for_shared_memory():
    # Replacing a weight's storage (as prune.remove does) frees the old memory; a tensor the
    # call allocates later at that address must not be recorded as sharing another argument's.
    from kdlib.course.record import _Encoder, _Recorder

    def refresh(model):
        for layer in model:
            layer.weight.data = layer.weight.data * 1.0
        return model

    for _ in range(20):
        recorder = _Recorder(refresh, _Encoder())
        recorder(nn.Sequential(*(nn.Linear(64, 64) for _ in range(4))))
        params = recorder.calls[0]["state"]["a0"]["params"]
        assert not [name for name, item in params.items() if "alias" in item]
