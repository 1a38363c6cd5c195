"""kdlib.course.results' features section: its rows on a short budget, and the verdict logic by
hand."""

import argparse

import pytest

import kdlib
from kdlib.course import results


@pytest.fixture(scope="module")
def short_run():
    data = kdlib.load("mnist-5k").subset(256, 128)
    teacher = kdlib.model("cnn-student", seed=0)  # has stage2 maps, like the course's teacher
    kdlib.fit(teacher, data, epochs=2, lr=3e-3, seed=0, progress=False)
    runs, teacher_acc = results.distill_runs(
        data,
        seeds=(0, 1),
        epochs=2,
        methods=results.feature_methods(),
        teachers={"cnn-teacher": teacher.eval()},
        student=results.FEATURE_STUDENT,
        reference="cnn-teacher",
    )
    return runs, teacher_acc


def test_every_row_runs_for_every_seed_on_the_thin_cnn(short_run):
    runs, teacher_acc = short_run
    names = list(runs)
    assert names[0] == "scratch" and names[1].startswith("soft-target KD") and len(names) == 5
    assert [n.split("+")[0] for n in names[2:]] == ["hint", "AT", "cosine"]
    assert set(teacher_acc) == {"cnn-teacher"}
    for rs in runs.values():
        assert [r.seed for r in rs] == [0, 1]
    fitnets = runs[names[2]][0].history
    assert [row["stage"] for row in fitnets.rows] == ["hint", "hint", "kd", "kd"]
    assert fitnets.info["method"] == "fitnets" and fitnets.info["teacher_features"] == "cached"
    for name in names[3:]:
        assert runs[name][0].history.info["method"] == "joint"
        assert runs[name][0].history.info["cache_seconds"] > 0  # counted in the seconds column


def test_distilled_rows_agree_with_the_teacher_more_than_scratch(short_run):
    runs, _ = short_run
    rows = {r["method"]: r for r in results.summarize(runs)}
    scratch = rows.pop("scratch")["agreement"]
    assert max(r["agreement"] for r in rows.values()) > scratch
    table = results.format_table(list(rows.values()))
    assert "hint+KD (FitNets, two stages)" in table and "AT+KD" in table


def _row(method, acc, std=0.0):
    return {"method": method, "acc": acc, "acc_std": std}


def test_verdicts_compare_with_the_scratch_std_and_with_kd():
    rows = [
        _row("scratch", 0.90, std=0.01),
        _row("soft-target KD (T=4, α=0.9)", 0.93),
        _row("AT+KD", 0.915),  # 1.5 points over scratch, std 1 point: beats it
        _row("cosine+KD", 0.905),  # 0.5 points over: within the std
        _row("hint+KD", 0.885),  # 1.5 points under: worse
    ]
    got = {v["method"]: v for v in results.feature_verdicts(rows)}
    assert list(got) == ["AT+KD", "cosine+KD", "hint+KD"]
    assert got["AT+KD"]["verdict"] == "beats scratch"
    assert got["cosine+KD"]["verdict"] == "within scratch's std"
    assert got["hint+KD"]["verdict"] == "worse than scratch"
    assert got["AT+KD"]["vs_scratch"] == pytest.approx(0.015)
    assert got["AT+KD"]["vs_kd"] == pytest.approx(-0.015)


def test_verdicts_need_the_reference_rows():
    with pytest.raises(ValueError, match="needs a 'scratch' row and a 'soft-target KD' row"):
        results.feature_verdicts([_row("AT+KD", 0.9)])


def test_the_section_is_registered_and_prints_both_tables(monkeypatch):
    assert "features" in results.SECTIONS
    data = kdlib.load("mnist-5k").subset(256, 128)
    teacher = kdlib.model("cnn-student", seed=0).eval()
    monkeypatch.setattr(results, "load", lambda name: data)
    monkeypatch.setattr(results, "trained_teacher", lambda d: teacher)
    monkeypatch.setattr(results, "SMALL_TRANSFER", 128)
    text = results.SECTIONS["features"](argparse.Namespace(dataset="x", seeds=[0], epochs=1))
    assert "### Students trained on all 256 training images" in text
    assert "### Students trained on a small transfer set: the first 128" in text
    assert text.count("vs scratch") == 6 and text.count("| scratch |") == 2
