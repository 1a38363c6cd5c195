"""kdlib.distill: frozen teacher, cached vs per-batch teacher logits, history, bad input."""

import copy
import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import kdlib
from kdlib.distill import DistillBatch, distill, frozen


@pytest.fixture(scope="module")
def small():
    return kdlib.load("mnist-5k").subset(512, 256)


@pytest.fixture(scope="module")
def teacher(small):
    # A quickly trained thin CNN: it has batch norm (buffers) and gives real soft targets.
    net = kdlib.model("cnn-thin", seed=0)
    kdlib.fit(net, small, epochs=2, lr=3e-3, seed=0, progress=False)
    return net


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _shift(X):
    return torch.roll(X, shifts=1, dims=-1)


def test_teacher_is_untouched(small, teacher):
    teacher = copy.deepcopy(teacher)
    teacher.train()  # even a teacher left in train mode comes back in train mode
    teacher.stage1.bn.eval()  # ...with per-module modes kept as they were
    teacher.stage2.conv.bias.requires_grad_(False)  # ...and mixed requires_grad flags kept
    modes = {n: m.training for n, m in teacher.named_modules()}
    flags = {n: p.requires_grad for n, p in teacher.named_parameters()}
    before = _snapshot(teacher)
    for cache in (True, False):
        student = kdlib.model("tiny", seed=0)
        distill(
            student, teacher, small, "kd", epochs=2, seed=0, progress=False,
            cache_teacher_logits=cache, augment=None if cache else _shift,
        )  # fmt: skip
        after = _snapshot(teacher)
        assert before.keys() == after.keys()
        for k in before:  # weights and batch-norm running statistics, bit for bit
            assert torch.equal(before[k], after[k]), k
        assert {n: m.training for n, m in teacher.named_modules()} == modes
        assert {n: p.requires_grad for n, p in teacher.named_parameters()} == flags
        assert all(p.grad is None for p in teacher.parameters())


def test_frozen_restores_after_an_exception(teacher):
    net = copy.deepcopy(teacher).train()
    with pytest.raises(RuntimeError, match="boom"), frozen(net):
        assert not net.training and not any(p.requires_grad for p in net.parameters())
        raise RuntimeError("boom")
    assert net.training and all(p.requires_grad for p in net.parameters())


def test_cached_and_per_batch_teacher_logits_give_the_same_trajectory(small, teacher):
    runs = {}
    for cache in (True, False):
        student = kdlib.model("tiny", seed=1)
        hist = distill(
            student, teacher, small, "kd", epochs=3, T=4.0, alpha=0.7, seed=3,
            cache_teacher_logits=cache, progress=False,
        )  # fmt: skip
        runs[cache] = (student, hist)
    (s_c, h_c), (s_b, h_b) = runs[True], runs[False]
    assert h_c.info["teacher_logits"] == "cached" and h_b.info["teacher_logits"] == "per-batch"
    assert h_b.info["cache_seconds"] == 0.0
    # The teacher's logits agree up to float rounding between batch sizes, so the trajectories
    # agree to that precision.
    torch.testing.assert_close(torch.tensor(h_c["loss"]), torch.tensor(h_b["loss"]))
    for p, q in zip(s_c.parameters(), s_b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


def test_given_teacher_logits_give_exactly_the_cached_trajectory(small, teacher):
    runs = []
    for given in (None, kdlib.predict(teacher, small.X_train)):
        student = kdlib.model("tiny", seed=1)
        hist = distill(
            student, teacher, small, "kd", epochs=2, T=4.0, alpha=0.7, seed=3,
            teacher_logits=given, progress=False,
        )  # fmt: skip
        runs.append((student, hist))
    (s_a, h_a), (s_b, h_b) = runs
    assert h_a.info["teacher_logits"] == h_b.info["teacher_logits"] == "cached"
    assert h_a["loss"] == h_b["loss"] and h_a["agreement"] == h_b["agreement"]
    for p, q in zip(s_a.parameters(), s_b.parameters(), strict=True):
        assert torch.equal(p, q)


def test_given_teacher_logits_are_checked(small, teacher):
    z = kdlib.predict(teacher, small.X_train)
    student = kdlib.model("tiny", seed=1)
    with pytest.raises(ValueError, match=r"shape \(511, 10\).*\(512, 10\)"):
        distill(student, teacher, small, teacher_logits=z[:-1], epochs=1, progress=False)
    with pytest.raises(ValueError, match="not this teacher's logits"):
        distill(student, teacher, small, teacher_logits=z.flip(0), epochs=1, progress=False)
    with pytest.raises(ValueError, match="cache_teacher_logits=False"):
        distill(
            student, teacher, small, teacher_logits=z, cache_teacher_logits=False, epochs=1,
            progress=False,
        )  # fmt: skip
    with pytest.raises(ValueError, match="augment"):
        distill(student, teacher, small, teacher_logits=z, augment=_shift, epochs=1)
    with pytest.raises(TypeError, match="must be a tensor"):
        distill(student, teacher, small, teacher_logits=z.tolist(), epochs=1, progress=False)
    bad = z.clone()
    bad[7, 3] = float("nan")
    with pytest.raises(ValueError, match=r"NaN/inf on training rows \[7\]"):
        distill(student, teacher, small, teacher_logits=bad, epochs=1, progress=False)


def test_sweep_runs_the_teacher_over_the_training_split_once(small, teacher):
    rows = []
    handle = teacher.register_forward_hook(lambda m, i, o: rows.append(len(o)))
    try:
        sweep = kdlib.course.distill_sweep(
            lambda: kdlib.model("tiny", seed=0), teacher, small,
            {"alpha": [0.5, 1.0], "T": [2.0]}, epochs=1, seed=0, progress=False,
        )  # fmt: skip
    finally:
        handle.remove()
    runs = len(sweep.histories)
    # Once over the training split; per run, a 2-row probe and the test split.
    n_train, n_test = len(small.X_train), len(small.X_test)
    assert sum(rows) == n_train + runs * (2 + n_test)
    # Each run is the run distill makes on its own.
    alone = distill(
        kdlib.model("tiny", seed=0),
        teacher,
        small,
        alpha=1.0,
        T=2.0,
        epochs=1,
        seed=0,
        progress=False,
    )
    assert sweep.lookup(alpha=1.0, T=2.0)["loss"] == alone["loss"]


def test_ce_loss_in_distill_is_exactly_fit(small, teacher):
    """distill reuses fit's loop: with loss="ce" it is plain training, same weights."""
    a, b = kdlib.model("tiny", seed=0), kdlib.model("tiny", seed=0)
    kdlib.fit(a, small, epochs=2, lr=1e-2, batch_size=64, seed=5, progress=False)
    distill(b, teacher, small, "ce", epochs=2, lr=1e-2, batch_size=64, seed=5, progress=False)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)


def test_kd_loss_matches_a_hand_written_step(small, teacher):
    """One step of distill equals one hand-written KD step on the same batch."""
    a = kdlib.model("tiny", seed=0)
    b = copy.deepcopy(a)
    distill(a, teacher, small, "kd", epochs=1, lr=1e-2, batch_size=512, T=3.0, alpha=0.8,
            optimizer="sgd", seed=0, progress=False)  # fmt: skip
    opt = torch.optim.SGD(b.parameters(), lr=1e-2, momentum=0.9)
    g = kdlib.seed_everything(0)
    X, y, _ = next(kdlib.batches(small.X_train, small.y_train, 512, generator=g))
    with torch.no_grad():
        z_t = teacher.eval()(X)
    b.train()
    z_s = b(X)
    p_t = F.softmax(z_t / 3.0, 1)
    soft = (p_t * (p_t.log() - F.log_softmax(z_s / 3.0, 1))).sum(1).mean() * 9.0
    loss = 0.8 * soft + 0.2 * F.cross_entropy(z_s, y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6)


def test_history_records_accuracy_agreement_and_kl(small, teacher):
    student = kdlib.model("tiny", seed=0)
    hist = distill(student, teacher, small, "kd", epochs=3, lr=1e-2, seed=0, progress=False)
    assert {"test_acc", "agreement", "kl_teacher", "loss", "seconds"} <= hist.keys()
    assert hist.last("agreement") == pytest.approx(kdlib.agreement(student, teacher, small.X_test))
    assert hist.last("kl_teacher") == pytest.approx(
        kdlib.mean_kl(student, teacher, small.X_test), rel=1e-5
    )
    assert hist.last("test_acc") == pytest.approx(kdlib.evaluate(student, small)["accuracy"])
    assert hist["kl_teacher"][-1] < hist["kl_teacher"][0]  # it learns to imitate
    assert hist.info["loss"] == "kd" and hist.info["T"] == 4.0 and hist.info["alpha"] == 0.9


def test_teacher_logits_choice_follows_augmentation(small, teacher):
    student = kdlib.model("tiny", seed=0)
    hist = distill(student, teacher, small, "soft", epochs=1, augment=_shift, progress=False)
    assert hist.info["teacher_logits"] == "per-batch"
    hist = distill(student, teacher, small, "mse", epochs=1, progress=False)
    assert hist.info["teacher_logits"] == "cached" and hist.info["cache_seconds"] > 0


def test_per_batch_teacher_sees_the_augmented_batch(small, teacher):
    seen = []

    def extra(batch: DistillBatch):
        assert isinstance(batch, DistillBatch) and batch.teacher_ran
        with torch.no_grad():
            seen.append(torch.equal(batch.teacher_logits, batch.teacher(batch.X)))
        return batch.student_logits.sum() * 0.0

    student = kdlib.model("tiny", seed=0)
    distill(student, teacher, small, "kd", epochs=1, augment=_shift, extra_loss=extra,
            progress=False)  # fmt: skip
    assert seen and all(seen)


def test_extra_loss_alone_with_extra_modules(small, teacher):
    """loss=None trains on the hook only; extra modules are optimised with the student."""
    proj = nn.Linear(10, 10)
    w0 = proj.weight.detach().clone()

    def extra(batch):
        return F.mse_loss(proj(batch.student_logits), batch.teacher_logits)

    student = kdlib.model("tiny", seed=0)
    hist = distill(student, teacher, small, None, epochs=2, lr=1e-2, extra_loss=extra,
                   extra_modules=[proj], seed=0, progress=False)  # fmt: skip
    assert hist.info["teacher_logits"] == "per-batch" and hist.info["loss"] is None
    assert not torch.equal(proj.weight, w0)
    assert hist["loss"][-1] < hist["loss"][0]


def test_loss_callable_is_accepted(small, teacher):
    a, b = kdlib.model("tiny", seed=0), kdlib.model("tiny", seed=0)
    kd = functools.partial(kdlib.kd_loss, T=2.0, alpha=0.5)
    distill(a, teacher, small, kd, epochs=1, seed=0, progress=False)
    distill(b, teacher, small, "kd", T=2.0, alpha=0.5, epochs=1, seed=0, progress=False)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)


# --------------------------------------------------------------------------------------------
# Bad input gets a clear error
def test_teacher_that_is_the_student(small, teacher):
    with pytest.raises(ValueError, match="teacher is the same object as the student"):
        distill(teacher, teacher, small, epochs=1, progress=False)
    shared = nn.Sequential(teacher, nn.Identity())
    with pytest.raises(ValueError, match="share .* parameter tensor"):
        distill(shared, teacher, small, epochs=1, progress=False)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"T": 0}, "temperature T must be a (finite )?number > 0"),
        ({"T": -2.0}, "temperature T must be a (finite )?number > 0"),
        ({"alpha": 1.2}, r"alpha must be a number in \[0, 1\]"),
        ({"alpha": -0.5}, r"alpha must be a number in \[0, 1\]"),
        ({"loss": "kl"}, "unknown loss 'kl'"),
        ({"loss": None}, "loss=None needs an extra_loss"),
        ({"cache_teacher_logits": True, "augment": _shift}, "cache_teacher_logits=True with"),
    ],
)
def test_bad_arguments(small, teacher, kwargs, message):
    student = kdlib.model("tiny", seed=0)
    with pytest.raises(ValueError, match=message):
        distill(student, teacher, small, **{"epochs": 1, "progress": False, **kwargs})


def test_teacher_without_weights_is_refused(small, teacher):
    elsewhere = copy.deepcopy(teacher).to("meta")
    with pytest.raises(ValueError, match="the teacher is on the meta device .* training runs"):
        distill(kdlib.model("tiny"), elsewhere, small, epochs=1, device="cpu", progress=False)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_teacher_on_another_device_is_moved_there_and_back(small, teacher):
    teacher = copy.deepcopy(teacher).cpu()
    before = _snapshot(teacher)
    student = kdlib.model("tiny", seed=0)
    hist = distill(student, teacher, small, epochs=1, device="cuda", progress=False)
    assert hist.info["teacher_device"].startswith("moved from cpu to cuda")
    assert all(p.device.type == "cpu" for p in teacher.parameters())
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k])
    assert next(student.parameters()).device.type == "cuda"


def test_class_count_mismatch(small, teacher):
    five = kdlib.mlp(784, [16], 5)
    with pytest.raises(ValueError, match="the teacher outputs shape .2, 5. but .* 10 classes"):
        distill(kdlib.model("tiny"), five, small, epochs=1, progress=False)
    with pytest.raises(ValueError, match="model outputs shape .2, 5."):
        distill(five, teacher, small, epochs=1, progress=False)


def test_labels_out_of_range(small, teacher):
    bad = small.subset()
    bad.y_train = bad.y_train.clone()
    bad.y_train[7] = 10
    with pytest.raises(ValueError, match=r"train labels out of range.*\[0, 9\]"):
        distill(kdlib.model("tiny"), teacher, bad, epochs=1, progress=False)


def test_nan_logits_are_reported_with_epoch_and_batch(small, teacher):
    calls = {"n": 0}

    def poison_third_batch(X):
        calls["n"] += 1
        if calls["n"] == 3:
            X = X.clone()
            X[5] = float("nan")
        return X

    with pytest.raises(ValueError, match=r"epoch 1, batch 2: student_logits contains NaN .*\[5\]"):
        distill(kdlib.model("tiny"), teacher, small, epochs=1, augment=poison_third_batch,
                progress=False)  # fmt: skip


def test_random_shift_moves_each_image_by_whole_pixels():
    from kdlib.course import random_shift

    X = torch.randn(64, 1, 8, 8)
    torch.manual_seed(0)
    Y = random_shift(2)(X)
    assert Y.shape == X.shape
    seen = set()
    for x, y in zip(X[:, 0], Y[:, 0], strict=True):
        # y(i, j) = x(clamp(i + dy), clamp(j + dx)) for one (dx, dy) in [-2, 2]²
        matches = []
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                rows = (torch.arange(8) + dy).clamp(0, 7)
                cols = (torch.arange(8) + dx).clamp(0, 7)
                if torch.equal(y, x[rows][:, cols]):
                    matches.append((dx, dy))
        assert len(matches) == 1
        seen.add(matches[0])
    assert len(seen) > 10  # each image gets its own shift
    assert torch.equal(random_shift(0)(X), X)
    with pytest.raises(ValueError, match="max_shift must be an integer >= 0"):
        random_shift(-1)
    with pytest.raises(ValueError, match=r"needs images \(N, C, H, W\)"):
        random_shift(1)(torch.zeros(3, 4))
