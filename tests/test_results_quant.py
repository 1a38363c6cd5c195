"""The results command's quant section, on a short budget: its rows against kdlib.quant."""

import dataclasses

import pytest
import torch

import kdlib
from kdlib import quant
from kdlib.course import results


@pytest.fixture(scope="module")
def short():
    data = kdlib.load("mnist-5k").subset(512, 256)
    teacher = kdlib.model("cnn-teacher", seed=0)
    kdlib.fit(teacher, data, epochs=1, lr=3e-3, seed=0, progress=False)
    return data, teacher.eval()


@pytest.fixture(scope="module")
def mlp_teacher(short):
    data, _ = short
    teacher = kdlib.model(results.QAT_TEACHER, seed=0)
    kdlib.fit(teacher, data, epochs=1, lr=1e-3, seed=0, progress=False)
    return teacher.eval()


def test_qat_runs_one_accuracy_per_seed_and_leave_the_teacher_alone(short, mlp_teacher):
    data, teacher = short[0], mlp_teacher
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    runs = results.qat_runs(data, teacher, seeds=(0, 1), bits=4, epochs=1)
    assert list(runs) == ["labels only", "soft targets + labels"]
    assert all(len(a) == 2 and all(0.2 < x <= 1 for x in a) for a in runs.values())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    again = results.qat_runs(data, teacher, seeds=(0,), bits=4, epochs=1)
    assert again["labels only"][0] == runs["labels only"][0]  # seeded


def test_qat_runs_refuse_a_teacher_smaller_than_the_student(short):
    data, cnn_teacher = short  # 105,962 parameters, the student 266,610
    with pytest.raises(ValueError, match="compresses nothing"):
        results.qat_runs(data, cnn_teacher, seeds=(0,), epochs=1)


def test_quant_pipeline_stages_shrink_and_measure_what_they_report(short):
    data, teacher = short
    rows = results.quant_pipeline(data, teacher, seed=0, epochs=1)
    assert [r["stage"] for r in rows] == [
        "teacher (float32)",
        "pruned",
        "pruned + distilled",
        "pruned + distilled + int8",
    ]
    small = results.pruned_teacher(teacher)
    assert rows[1]["parameters"] == rows[3]["parameters"] == kdlib.count_params(small)
    assert rows[0]["bytes"] > rows[1]["bytes"] == rows[2]["bytes"] > 2 * rows[3]["bytes"]
    for r in rows:
        assert r["bytes"] == quant.saved_bytes(r["model"])
        assert r["accuracy"] == kdlib.evaluate(r["model"], data)["accuracy"]


def test_int8_bytes_counts_every_stored_tensor():
    net = kdlib.model("cnn-thin", seed=0).eval()
    x = torch.randn(64, 1, 28, 28)
    q = quant.static_int8(net, x)
    weights = sum(
        m.weight.numel()
        for m in net.modules()
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
    )
    by_hand = sum(t.numel() * t.element_size() for t in q.state_dict().values())
    assert results.int8_bytes(q) == by_hand
    assert weights <= by_hand < kdlib.size_bytes(net)


def test_quant_section_from_the_command_line(capsys, monkeypatch, tmp_path, short):
    data, _ = short
    monkeypatch.setenv("KDLIB_CACHE", str(tmp_path))
    monkeypatch.setattr(results, "load", lambda name: data)
    for preset in ("cnn-teacher", results.QUANT_MLP, results.QAT_TEACHER):
        quick = dataclasses.replace(results.RECIPES[preset], epochs=1)
        monkeypatch.setitem(results.RECIPES, preset, quick)
    monkeypatch.setattr(results, "QAT_EPOCHS", 1)
    monkeypatch.setattr(results, "SUMMARY_EPOCHS", 1)
    calls, timed = iter(range(1, 1000)), []  # every measurement slower than the last

    def fake_latency(models, input_shape, batch, **kwargs):
        timed.append((batch, {n: next(calls) for n in models}))
        return timed[-1][1]

    monkeypatch.setattr(results, "compare_latency", fake_latency)
    monkeypatch.setattr(quant, "compiled", lambda m, x: m)  # no compiling in a unit test
    assert results.main(["quant", "--seeds", "0", "1"]) == 0
    out = capsys.readouterr().out
    assert "| cnn-teacher | static int8, calibrated |" in out
    assert f"| {results.QUANT_MLP} | dynamic int8 |" in out
    pair = "cnn-teacher, both compiled (oneDNN int8)"
    spans = []  # the range of quantized / float over the repeated measurements, per batch size
    for batch in (1, results.LATENCY_BATCH):
        r = [t[f"{pair} q"] / t[f"{pair} f"] for b, t in timed if b == batch and f"{pair} q" in t]
        assert len(r) == results.LATENCY_REPEATS and min(r) < max(r)
        spans.append(f"{min(r):.2f}–{max(r):.2f}x")
    assert f"| {pair} | {spans[0]} | {spans[1]} |" in out
    ratio = kdlib.count_params(kdlib.model(results.QAT_TEACHER)) / kdlib.count_params(
        kdlib.model(results.QUANT_MLP)
    )
    assert f"teacher {results.QAT_TEACHER}, {ratio:.1f}x the student's parameters" in out
    assert "| soft targets + labels |" in out and "per seed" in out
    assert "| pruned + distilled + int8 |" in out
