"""Scaling up: rank-aware batches, mixed precision, the run entry point, 2-process DDP on CPU.

The 2-process test starts ``torchrun`` with the gloo backend on a tiny problem (256 examples,
2 epochs) and checks that training completes, that both ranks end with identical parameters
and histories, and that the result matches one process with the same global batch.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import ddp_worker
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import kdlib
from kdlib import parallel
from kdlib.course import run

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def small():
    return kdlib.load("mnist-5k").subset(256, 128)


# --- helpers without a process group ---------------------------------------------------------
def test_rank_helpers_without_a_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert (parallel.rank(), parallel.world_size(), parallel.is_main()) == (0, 1, True)
    assert not parallel.is_distributed()
    assert parallel.setup("cpu") == torch.device("cpu")  # only picks the device
    assert not torch.distributed.is_initialized()
    parallel.cleanup()  # a no-op without a group


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 70),
    batch_size=st.integers(1, 24),
    world=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_rank_shares_add_up_to_the_single_process_batch(n, batch_size, world, seed):
    """Concatenating the ranks' shares of each step gives the batch one process would see."""
    if world > min(batch_size, n):
        return
    X, y = torch.arange(n).float()[:, None] * 10, torch.arange(n) % 7
    single = [idx for _, _, idx in kdlib.batches(X, y, batch_size, generator=_gen(seed))]
    shares = [
        list(kdlib.batches(X, y, batch_size, generator=_gen(seed), rank=r, world_size=world))
        for r in range(world)
    ]
    assert all(len(s) == len(single) for s in shares)  # same number of steps on every rank
    for step, whole in enumerate(single):
        parts = [s[step] for s in shares]
        for X_b, y_b, idx in parts:  # rows and labels belong to the indices
            assert torch.equal(X_b[:, 0], X[idx, 0]) and torch.equal(y_b, y[idx])
        sizes = [len(idx) for _, _, idx in parts]
        assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1
        joined = torch.cat([idx for _, _, idx in parts])
        if len(whole) >= world:
            assert torch.equal(joined, whole)
        else:  # topped up from the start of the permutation so that no rank is empty
            assert torch.equal(joined[: len(whole)], whole) and len(joined) == world


def _gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"rank": 2, "world_size": 2}, r"rank must be in \[0, world_size\), got rank=2"),
        ({"rank": -1, "world_size": 2}, r"rank must be in \[0, world_size\)"),
        ({"rank": 0, "world_size": 8}, "world_size=8 processes cannot share a global "),
    ],
)
def test_batches_refuses_bad_ranks(kwargs, message):
    X, y = torch.zeros(10, 1), torch.zeros(10, dtype=torch.long)
    with pytest.raises(ValueError, match=message):
        next(kdlib.batches(X, y, 4, **kwargs))


# --- mixed precision -----------------------------------------------------------------------
def _fit(data, **kwargs):
    net = kdlib.model("tiny", seed=0)
    hist = kdlib.fit(net, data, epochs=1, lr=1e-2, batch_size=64, seed=1, progress=False,
                     device="cpu", **kwargs)  # fmt: skip
    return net, hist


def test_amp_true_is_off_without_cuda_and_bf16_runs_on_cpu(small, monkeypatch):
    monkeypatch.delenv("KDLIB_AMP", raising=False)
    ref, ref_hist = _fit(small)
    off, off_hist = _fit(small, amp=True)
    assert off_hist.info["amp"] == "off (no CUDA on cpu)" and "amp" not in ref_hist.info
    for p, q in zip(ref.parameters(), off.parameters(), strict=True):
        assert torch.equal(p, q)  # amp=True on a CPU is exactly full precision
    bf16, bf16_hist = _fit(small, amp="bf16")
    assert bf16_hist.info["amp"] == "bf16"
    # bfloat16 keeps 8 bits of mantissa: close to float32 training, not equal to it.
    assert bf16_hist.last("loss") == pytest.approx(ref_hist.last("loss"), rel=0.1)
    assert abs(bf16_hist.last("test_acc") - ref_hist.last("test_acc")) <= 0.05
    assert any(
        not torch.equal(p, q) for p, q in zip(ref.parameters(), bf16.parameters(), strict=True)
    )
    monkeypatch.setenv("KDLIB_AMP", "bf16")  # switch it on without touching code
    assert _fit(small.subset(64, 32))[1].info["amp"] == "bf16"


@pytest.mark.parametrize(
    "amp, message",
    [("fp16", "amp='fp16' needs a CUDA device, but training runs on cpu"),
     ("fp8", "amp must be one of .*got 'fp8'"), (1, "amp must be one of .*got 1")],
)  # fmt: skip
def test_amp_bad_values(small, amp, message):
    with pytest.raises(ValueError, match=message):
        _fit(small, amp=amp)


# --- the entry point -------------------------------------------------------------------------
def test_load_config_layers_defaults_file_and_overrides(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"epochs": 7, "lr": 1, "model": "tiny"}))
    cfg = run.load_config(path, epochs=2)
    assert (cfg.epochs, cfg.lr, cfg.model, cfg.batch_size) == (2, 1.0, "tiny", 128)
    assert isinstance(cfg.lr, float)


@pytest.mark.parametrize(
    "content, message",
    [
        ({"epoch": 3}, "unknown config key 'epoch'; known keys: data, "),
        ({"epochs": "3"}, "config key 'epochs' must be int, got '3'"),
        ({"epochs": True}, "config key 'epochs' must be int, got True"),
        ({"n_train": 1.5}, r"config key 'n_train' must be int \| None"),
        ([1, 2], "must hold a JSON object"),
        ("{oops", "is not valid JSON"),
    ],
)
def test_load_config_bad_input(tmp_path, content, message):
    path = tmp_path / "c.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(ValueError, match=message):
        run.load_config(path)


def test_run_fit_in_one_process_saves_what_it_trained(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    out = tmp_path / "out"
    argv = ["fit", "--model", "tiny", "--n_train", "256", "--n_test", "128", "--epochs", "1",
            "--device", "cpu", "--out", str(out)]  # fmt: skip
    student, hist = run.main(argv)
    assert "fit tiny on mnist-5k (256 train): 1 process(es) on cpu" in capsys.readouterr().out
    saved = json.loads((out / "history.json").read_text())
    assert saved["rows"] == hist.rows and saved["config"]["model"] == "tiny"
    net = kdlib.model("tiny")
    net.load_state_dict(torch.load(out / "student.pt", weights_only=True))
    assert all(
        torch.equal(p, q) for p, q in zip(net.parameters(), student.parameters(), strict=True)
    )
    assert sorted(p.name for p in out.iterdir()) == ["history.json", "student.pt"]  # no .part


# --- two processes, gloo --------------------------------------------------------------------
@pytest.fixture(scope="module")
def two_process_run(small, tmp_path_factory):
    """Run the scenarios under torchrun with 2 CPU processes; return (folder, stdout)."""
    folder = tmp_path_factory.mktemp("ddp")
    teacher = kdlib.model("lenet-300-100", seed=1)
    kdlib.fit(teacher, small, epochs=1, lr=1e-3, seed=0, progress=False, device="cpu")
    torch.save(teacher.state_dict(), folder / "teacher.pt")
    config = {
        "n_train": 256, "n_test": 128, "model": "tiny", "teacher": "lenet-300-100",
        "teacher_checkpoint": str(folder / "teacher.pt"), "epochs": 2, "lr": 1e-2,
        "batch_size": 64, "seed": 3, "device": "cpu",
    }  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "KDLIB_PROGRESS": "0", "KDLIB_DEVICE": "cpu"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(HERE / "ddp_worker.py"), str(folder)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return folder, proc.stdout


@pytest.fixture(scope="module")
def one_process_run(two_process_run, monkeypatch_module):
    folder, _ = two_process_run
    return ddp_worker.scenarios(folder / "config.json")


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    mp.delenv("WORLD_SIZE", raising=False)
    mp.setenv("KDLIB_DEVICE", "cpu")
    yield mp
    mp.undo()


# scenario -> epochs it trains (features-fitnets: 1 hint epoch + 1 KD epoch)
SCENARIOS = {"fit": 2, "distill": 2, "hint": 2, "features-fitnets": 2, "features-joint": 1}


@pytest.mark.parametrize("name", SCENARIOS)
def test_two_processes_complete_with_identical_ranks(two_process_run, name):
    folder, _ = two_process_run
    r0, r1 = (torch.load(folder / f"{name}-rank{r}.pt", weights_only=True) for r in (0, 1))
    assert len(r0["rows"]) == SCENARIOS[name] and r0["info"]["world_size"] == 2  # under DDP
    if name == "features-fitnets":
        assert [row["stage"] for row in r0["rows"]] == ["hint", "kd"]
    assert r0["state"].keys() == r1["state"].keys()
    for key, value in r0["state"].items():
        assert torch.equal(value, r1["state"][key]), key  # replicas never drift apart
    assert r0["rows"][-1].keys() == r1["rows"][-1].keys()
    for a, b in zip(r0["rows"], r1["rows"], strict=True):  # all-reduced metrics
        assert {k: v for k, v in a.items() if k != "seconds"} == {
            k: v for k, v in b.items() if k != "seconds"
        }


@pytest.mark.parametrize("name", SCENARIOS)
def test_two_processes_match_one_process_with_the_same_global_batch(
    two_process_run, one_process_run, name
):
    """Two shares of 32 with averaged gradients = one batch of 64, up to float rounding
    (the sums are taken in a different order): parameters within 1e-5."""
    folder, _ = two_process_run
    r0 = torch.load(folder / f"{name}-rank0.pt", weights_only=True)
    state, hist = one_process_run[name]
    assert r0["state"].keys() == state.keys()
    for key, value in state.items():
        torch.testing.assert_close(r0["state"][key], value, atol=1e-5, rtol=1e-4)
    for a, b in zip(r0["rows"], hist.rows, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
        assert abs(a["test_acc"] - b["test_acc"]) <= 1 / 128  # at most one example flips
    assert "world_size" not in hist.info


def test_only_rank_zero_prints(two_process_run):
    _, stdout = two_process_run
    assert stdout.count("fit tiny on mnist-5k (256 train): 2 process(es) on cpu") == 1
    assert stdout.count("distill tiny on mnist-5k (256 train): 2 process(es) on cpu") == 1


def test_run_distill_refuses_a_student_as_large_as_its_teacher(tmp_path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    checkpoint = tmp_path / "teacher.pt"
    torch.save(kdlib.model("tiny").state_dict(), checkpoint)
    argv = ["distill", "--model", "lenet-300-100", "--teacher", "tiny", "--teacher_checkpoint",
            str(checkpoint), "--n_train", "64", "--n_test", "32", "--device", "cpu",
            "--out", str(tmp_path / "out")]  # fmt: skip
    sizes = [kdlib.count_params(kdlib.model(n)) for n in ("lenet-300-100", "tiny")]
    with pytest.raises(ValueError, match="{:,} parameters and the teacher {:,}".format(*sizes)):
        run.main(argv)
    assert not (tmp_path / "out").exists()  # refused before training, nothing written


def test_run_distill_refuses_a_larger_student_before_training_its_teacher(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)

    def must_not_train(*args, **kwargs):
        raise AssertionError("the teacher was trained before the pair was checked")

    monkeypatch.setattr(kdlib.course.recipes, "trained_teacher", must_not_train)
    argv = ["distill", "--model", "lenet-300-100", "--teacher", "tiny", "--n_train", "64",
            "--n_test", "32", "--device", "cpu"]  # fmt: skip
    with pytest.raises(ValueError, match="compresses nothing"):
        run.main(argv)


def test_run_defaults_distill_into_a_smaller_student():
    cfg = run.RunConfig()
    student, teacher = kdlib.model(cfg.model), kdlib.model(cfg.teacher)
    assert kdlib.count_params(teacher) > kdlib.count_params(student)
