"""kdlib.train: the loop matches a hand-written one, histories, devices, bad input."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

import kdlib
from kdlib.train import History


@pytest.fixture(scope="module")
def small():
    return kdlib.load("mnist-5k").subset(512, 256)


def test_fit_equals_hand_written_loop(small):
    """Same seed, same batches, same optimizer: identical weights after training."""
    net_a = kdlib.model("tiny", seed=0)
    kdlib.fit(net_a, small, epochs=2, lr=1e-2, batch_size=64, seed=5, progress=False)

    net_b = kdlib.model("tiny", seed=0)
    opt = torch.optim.Adam(net_b.parameters(), lr=1e-2)
    g = kdlib.seed_everything(5)
    for _ in range(2):
        net_b.train()
        for X, y, _ in kdlib.batches(small.X_train, small.y_train, 64, generator=g):
            loss = F.cross_entropy(net_b(X), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    for p, q in zip(net_a.parameters(), net_b.parameters(), strict=True):
        torch.testing.assert_close(p, q)


def test_fit_learns_and_records_history(small):
    net = kdlib.model("tiny", seed=0)
    before = kdlib.evaluate(net, small)["accuracy"]
    hist = kdlib.fit(net, small, epochs=3, lr=1e-2, seed=0, progress=False)
    assert isinstance(hist, History) and hist.epochs == 3 and hist.stop_reason == "max_epochs"
    assert hist["epoch"] == [1, 2, 3]
    assert hist.last("test_acc") > max(before, 0.6)
    assert hist["loss"][-1] < hist["loss"][0]
    assert hist.last("test_acc") == pytest.approx(kdlib.evaluate(net, small)["accuracy"])
    assert not net.training  # left in eval mode


def test_evaluate_matches_manual_accuracy(small):
    net = kdlib.model("tiny", seed=0)
    logits = net.eval()(small.X_test)
    expected = (logits.argmax(1) == small.y_test).float().mean().item()
    result = kdlib.evaluate(net, small)
    assert result["accuracy"] == pytest.approx(expected)
    assert result["loss"] == pytest.approx(F.cross_entropy(logits, small.y_test).item(), rel=1e-5)


def test_predict_restores_mode_and_needs_no_grad(small):
    net = kdlib.model("hinton-teacher", seed=0).train()  # has dropout
    out1, out2 = kdlib.predict(net, small.X_test), kdlib.predict(net, small.X_test)
    assert torch.equal(out1, out2)  # eval mode: dropout off
    assert net.training and not out1.requires_grad


def test_callbacks_stop_and_metrics(small):
    net = kdlib.model("tiny", seed=0)
    stop = lambda model, history: "enough" if history.epochs == 2 else None  # noqa: E731
    hist = kdlib.fit(
        net, small, epochs=5, lr=1e-2, progress=False, callbacks=[stop],
        metrics=lambda m: {"n_params": kdlib.count_params(m)},
    )  # fmt: skip
    assert hist.epochs == 2 and hist.stop_reason == "enough"
    assert hist["n_params"] == [kdlib.count_params(net)] * 2


def test_custom_loss_gets_indices(small):
    seen = []

    def loss_fn(model, X, y, idx):
        seen.append(idx)
        assert torch.equal(small.y_train[idx], y)
        return F.cross_entropy(model(X), y)

    kdlib.fit(kdlib.model("tiny"), small, epochs=1, lr=1e-3, loss_fn=loss_fn, progress=False)
    assert sorted(torch.cat(seen).tolist()) == list(range(len(small.X_train)))


def test_cosine_schedule_ends_near_zero(small):
    net = kdlib.model("tiny", seed=0)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    kdlib.fit(net, small, epochs=2, lr=1e-2, optimizer=opt, schedule="cosine", progress=False)
    assert opt.param_groups[0]["lr"] == pytest.approx(0, abs=1e-9)


def test_seed_everything_repeats():
    kdlib.seed_everything(3)
    a = torch.rand(3)
    kdlib.seed_everything(3)
    assert torch.equal(a, torch.rand(3))


def test_get_device_override(monkeypatch):
    assert kdlib.get_device("cpu").type == "cpu"
    monkeypatch.setenv("KDLIB_DEVICE", "cpu")
    assert kdlib.get_device().type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            kdlib.get_device("cuda")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"epochs": 0}, "epochs must be a positive integer"),
        ({"epochs": -2}, "epochs must be a positive integer"),
        ({"epochs": 1.5}, "epochs must be a positive integer"),
        ({"lr": 0}, "lr must be a number > 0"),
        ({"lr": -1e-3}, "lr must be a number > 0"),
        ({"schedule": "step"}, "schedule must be"),
        ({"optimizer": "lion"}, "unknown optimizer 'lion'"),
    ],
)
def test_fit_bad_arguments(small, kwargs, message):
    args = {"epochs": 1, "lr": 1e-3, "progress": False, **kwargs}
    with pytest.raises(ValueError, match=message):
        kdlib.fit(kdlib.model("tiny"), small, **args)


def test_fit_refuses_wrong_output_size(small):
    net = kdlib.mlp(784, [16], 7)
    with pytest.raises(ValueError, match=r"outputs shape \(2, 7\).*10 classes"):
        kdlib.fit(net, small, epochs=1, lr=1e-3, progress=False)


def test_trained_teacher_is_cached(small, tmp_path, monkeypatch):
    monkeypatch.setenv("KDLIB_CACHE", str(tmp_path))
    monkeypatch.setitem(kdlib.course.RECIPES, "cnn-thin", kdlib.course.Recipe(epochs=1, lr=3e-3))
    a = kdlib.course.trained_teacher(small, preset="cnn-thin", progress=False)
    assert len(list((tmp_path / "teachers").glob("*.pt"))) == 1
    b = kdlib.course.trained_teacher(small, preset="cnn-thin", progress=False)
    assert torch.equal(kdlib.predict(a, small.X_test), kdlib.predict(b, small.X_test))
    assert b.history.last("test_acc") == a.history.last("test_acc")
    with pytest.raises(ValueError, match="no recipe for preset 'nope'"):
        kdlib.course.trained_teacher(small, preset="nope")


def test_teacher_cache_tells_splits_apart(tmp_path, monkeypatch):
    # Same name, same sizes, another split: a cached teacher of split 0 has seen split 1's
    # test images, so it must not be handed out for split 1.
    monkeypatch.setenv("KDLIB_CACHE", str(tmp_path))
    monkeypatch.setitem(kdlib.course.RECIPES, "tiny", kdlib.course.Recipe(epochs=1, lr=3e-3))
    split0, split1 = kdlib.load("digits", seed=0), kdlib.load("digits", seed=1)
    assert split0.name == split1.name and len(split0.X_train) == len(split1.X_train)
    kdlib.course.trained_teacher(split0, preset="tiny", progress=False)
    kdlib.course.trained_teacher(kdlib.load("digits", seed=0), preset="tiny", progress=False)
    assert len(list((tmp_path / "teachers").glob("*.pt"))) == 1  # same data: a cache hit
    kdlib.course.trained_teacher(split1, preset="tiny", progress=False)
    assert len(list((tmp_path / "teachers").glob("*.pt"))) == 2  # another split: trained
    # One changed label is another data set too.
    y = split0.y_train.clone()
    y[0] = (y[0] + 1) % 10
    relabelled = dataclasses.replace(split0, y_train=y)
    kdlib.course.trained_teacher(relabelled, preset="tiny", progress=False)
    assert len(list((tmp_path / "teachers").glob("*.pt"))) == 3


def test_teacher_cache_tells_threads_cpu_kernels_and_torch_builds_apart(tmp_path, monkeypatch):
    # A teacher trained with 1 thread differs in its last digits from one trained with 2, and
    # so does everything printed downstream: each setting gets its own file.
    monkeypatch.setenv("KDLIB_CACHE", str(tmp_path))
    monkeypatch.setitem(kdlib.course.RECIPES, "tiny", kdlib.course.Recipe(epochs=1, lr=3e-3))
    data = kdlib.load("digits")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        kdlib.course.trained_teacher(data, preset="tiny", progress=False)
        torch.set_num_threads(2)
        kdlib.course.trained_teacher(data, preset="tiny", progress=False)
        assert len(list((tmp_path / "teachers").glob("*.pt"))) == 2
        kdlib.course.trained_teacher(data, preset="tiny", progress=False)  # same setting: a hit
        assert len(list((tmp_path / "teachers").glob("*.pt"))) == 2
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "SSE41")  # other CPU kernels
        kdlib.course.trained_teacher(data, preset="tiny", progress=False)
        assert len(list((tmp_path / "teachers").glob("*.pt"))) == 3
        monkeypatch.setattr(torch, "__version__", "9.9.9+other")
        kdlib.course.trained_teacher(data, preset="tiny", progress=False)
        assert len(list((tmp_path / "teachers").glob("*.pt"))) == 4
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("junk", [b"", b"not a torch file", "truncate"])
def test_an_unreadable_cached_teacher_is_a_miss_with_a_warning(tmp_path, monkeypatch, junk):
    monkeypatch.setenv("KDLIB_CACHE", str(tmp_path))
    monkeypatch.setitem(kdlib.course.RECIPES, "tiny", kdlib.course.Recipe(epochs=1, lr=3e-3))
    data = kdlib.load("digits")
    good = kdlib.course.trained_teacher(data, preset="tiny", progress=False)
    (path,) = (tmp_path / "teachers").glob("*.pt")
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2] if junk == "truncate" else junk)
    # torch's own message would speak of weights_only and unpickling, not of the cache
    with pytest.raises(Exception):  # noqa: B017
        torch.load(path, weights_only=True)
    with pytest.warns(RuntimeWarning, match="unreadable cached teacher.*training it again"):
        again = kdlib.course.trained_teacher(data, preset="tiny", progress=False)
    assert torch.equal(kdlib.predict(again, data.X_test), kdlib.predict(good, data.X_test))
    stored = torch.load(path, weights_only=True)["state_dict"]  # replaced by a good file
    assert all(torch.equal(v, good.state_dict()[k]) for k, v in stored.items())
    assert [p.name for p in (tmp_path / "teachers").iterdir()] == [path.name]  # no temp left


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fit_on_cuda_matches_cpu(small):
    cpu = kdlib.model("tiny", seed=0)
    gpu = kdlib.model("tiny", seed=0)
    kdlib.fit(cpu, small, epochs=1, lr=1e-3, seed=0, device="cpu", progress=False)
    kdlib.fit(gpu, small, epochs=1, lr=1e-3, seed=0, device="cuda", progress=False)
    for p, q in zip(cpu.parameters(), gpu.parameters(), strict=True):
        torch.testing.assert_close(p, q.cpu(), atol=1e-4, rtol=1e-3)
