"""kdlib.course.results: the distill table on a short budget (loose checks), helpers, the
command."""

import dataclasses

import pytest
import torch

import kdlib
from kdlib.course import results

PARAMS_ROWS = ("params: top-units", f"params: low-rank (r={results.LOW_RANK})",
               "params: every-other-layer")  # fmt: skip


@pytest.fixture(scope="module")
def short_run():
    data = kdlib.load("mnist-5k").subset(512, 256)

    def trained(net, epochs, lr):
        kdlib.fit(net, data, epochs=epochs, lr=lr, seed=0, progress=False)
        return net.eval()

    teachers = {
        "hinton-teacher": trained(kdlib.model("hinton-teacher", seed=0), 6, 1e-3),
        "mlp-800x4": trained(kdlib.mlp(784, [800] * 4, 10), 3, 1e-3),
    }
    runs, teacher_acc = results.distill_runs(
        data, seeds=(0, 1), epochs=6, teachers=teachers, methods=results.distill_methods()
    )
    return data, runs, teacher_acc


def test_every_row_runs_for_every_seed(short_run):
    _, runs, teacher_acc = short_run
    names = [m.name for m in results.distill_methods()]
    assert list(runs) == names and len(names) == 8
    assert all(len(rs) == 2 and {r.seed for r in rs} == {0, 1} for rs in runs.values())
    assert set(teacher_acc) == {"hinton-teacher", "mlp-800x4"}
    kd = runs["soft-target KD + shifts (T=4, α=0.9)"][0]
    assert kd.history.info["teacher_logits"] == "per-batch"
    assert runs["soft-target KD (T=4, α=0.9)"][0].history.info["teacher_logits"] == "cached"
    for name in PARAMS_ROWS:
        assert runs[name][0].history.stop_reason.split(":")[0] in ("converged", "max_epochs")


def test_distilled_students_follow_their_teacher(short_run):
    _, runs, _ = short_run
    rows = {r["method"]: r for r in results.summarize(runs)}
    # An MLP student trained on labels already agrees with an MLP teacher about as well as a
    # distilled one after a few epochs on 512 images, so this short budget cannot rank them
    # (the full section and notebook 04 do, over three seeds); each must clearly follow it.
    for name in ("soft-target KD (T=4, α=0.9)", "MSE logits"):
        assert rows[name]["agreement"] > 0.8, name
        assert all(r.history.info["teacher_logits"] == "cached" for r in runs[name])
    for name in PARAMS_ROWS:
        init = [r.history.info["init_acc"] for r in runs[name]]
        assert min(init) > 0.5, name  # inherited weights work before any training


def test_every_distilled_student_is_smaller_than_its_teacher():
    # Sizes do not depend on training: the real architectures, untrained.
    data = kdlib.load("mnist-5k").subset(64, 64)
    teachers = {
        "hinton-teacher": kdlib.model("hinton-teacher", seed=0),
        "mlp-800x4": kdlib.mlp(784, [800] * 4, 10),
    }
    pairs = {
        m.name: (m.build_student(teachers[m.teacher], data, 0), teachers[m.teacher])
        for m in results.distill_methods()
        if m.teacher != "—"
    }
    assert len(pairs) == 6
    rows = results.pair_costs(pairs, data.input_shape, batch_size=8)
    for r in rows:
        for key in ("params", "bytes", "macs"):
            assert r["student"][key] < r["teacher"][key], (r["row"], key)
        assert r["student"]["latency"] > 0 and r["teacher"]["latency"] > 0
    assert rows[0]["student"]["params"] == kdlib.count_params(kdlib.model(results.STUDENT))
    assert rows[0]["teacher"]["params"] == kdlib.count_params(teachers[results.KD_TEACHER])
    table = results.format_costs(rows, batch_size=8).splitlines()
    assert len(table) == 2 + len(rows) and "latency (ms, batch 8)" in table[0]
    assert all(line.count("× smaller") == 3 and "× faster" in line for line in table[2:])


def test_summary_is_mean_and_std_over_seeds(short_run):
    _, runs, _ = short_run
    rows = {r["method"]: r for r in results.summarize(runs)}
    accs = torch.tensor([r.acc for r in runs["scratch"]], dtype=torch.float64)
    assert rows["scratch"]["acc"] == pytest.approx(float(accs.mean()))
    assert rows["scratch"]["acc_std"] == pytest.approx(float(accs.std()))
    assert rows["scratch"]["n"] == 2


def test_format_table(short_run):
    _, runs, teacher_acc = short_run
    table = results.format_table(results.summarize(runs), teacher_acc)
    lines = table.splitlines()
    assert lines[0].startswith("| method | teacher | test accuracy (%)")
    assert sum(line.startswith("| teacher `") for line in lines) == 2
    scratch_line = next(line for line in lines if line.startswith("| scratch |"))
    mean = 100 * results.summarize(runs)[0]["acc"]
    assert f"{mean:.1f} ± " in scratch_line


def test_gap_closed_reference_values():
    assert results.gap_closed(0.96, 0.94, 0.98) == pytest.approx(0.5)
    assert results.gap_closed(0.98, 0.94, 0.98) == pytest.approx(1.0)
    assert results.gap_closed(0.93, 0.94, 0.98) == pytest.approx(-0.25)
    with pytest.raises(ValueError, match="is not better than scratch"):
        results.gap_closed(0.9, 0.95, 0.95)


def test_epochs_to_reach():
    run = results.Run("m", "t", 0, 0.9, 0.9, 3, 1.0)
    run.history.rows = [{"epoch": e, "test_acc": a} for e, a in ((1, 0.8), (2, 0.91), (3, 0.9))]
    assert results.epochs_to_reach(run, 0.9) == 2
    assert results.epochs_to_reach(run, 0.95) is None
    run.history.info["init_acc"] = 0.92
    assert results.epochs_to_reach(run, 0.9) == 0
    assert results.epochs_to_reach(run.history, 0.9) == 0


def test_sections_and_command_line(capsys, monkeypatch):
    assert "distill" in results.SECTIONS
    with pytest.raises(SystemExit):
        results.main(["nonsense"])
    assert "unknown section(s) ['nonsense']" in capsys.readouterr().err
    monkeypatch.setitem(results.SECTIONS, "demo", lambda args: f"demo seeds={args.seeds}")
    assert results.main(["demo", "--seeds", "4", "5"]) == 0
    assert "demo seeds=[4, 5]" in capsys.readouterr().out


# ---- summary section: every method on one student size (notebook 09) -----------------------
@pytest.fixture(scope="module")
def summary_run():
    data = kdlib.load("mnist-5k").subset(512, 256)
    teacher = kdlib.model("cnn-teacher", seed=0)
    kdlib.fit(teacher, data, epochs=1, lr=3e-3, seed=0, progress=False)
    teacher.eval()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    rows = results.course_summary(data, teacher, seeds=(0, 1), epochs=1)
    return data, teacher, before, rows


def test_pruned_teacher_keeps_the_channels_of_largest_l1_norm():
    teacher = kdlib.model("cnn-teacher", seed=0)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    small = results.pruned_teacher(teacher, keep=0.25)
    w = teacher.stage1.conv.weight.detach()
    keep = w.abs().sum((1, 2, 3)).topk(4).indices.sort().values  # 16 channels → 4
    assert torch.equal(small.stage1.conv.weight, w[keep])
    assert small.stage2.conv.weight.shape == (8, 4, 3, 3)  # 32 → 8 channels, 4 inputs left
    assert small.head.fc1.out_features == 16 and small.head.fc2.out_features == 10
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    with pytest.raises(ValueError, match=r"keep must be a share of the units in \(0, 1\)"):
        results.pruned_teacher(teacher, keep=1.0)


def test_reinitialised_is_a_fresh_copy_drawn_from_the_seed():
    net = kdlib.model("cnn-thin", seed=0)
    a, b = results.reinitialised(net, 1), results.reinitialised(net, 1)
    c = results.reinitialised(net, 2)
    pa, pn = dict(a.named_parameters()), dict(net.named_parameters())
    assert all(pa[k].shape == p.shape for k, p in pn.items())
    assert all(torch.equal(pa[k], p) for k, p in b.named_parameters())
    assert not torch.equal(pa["stage1.conv.weight"], pn["stage1.conv.weight"])
    assert not torch.equal(
        pa["stage1.conv.weight"], dict(c.named_parameters())["stage1.conv.weight"]
    )


def test_course_summary_rows(summary_run):
    data, teacher, before, rows = summary_run
    names = [m.name for m in results.summary_methods()]
    int8 = [f"{n} → int8" for n in names if n.startswith("pruned (structured) + KD")]
    assert [r["method"] for r in rows] == ["teacher (cnn-teacher)", *names, *int8]
    assert len(names) == 7 and len(int8) == 1
    assert rows[0]["n"] == 0 and rows[0]["parameters"] == kdlib.count_params(teacher)
    assert rows[0]["accuracy"] == kdlib.evaluate(teacher, data)["accuracy"]
    size = kdlib.count_params(results.pruned_teacher(teacher))
    for r in rows[1:-1]:
        assert r["n"] == 2 and set(r["per_seed"]) == {0, 1}
        assert (r["parameters"], r["bytes"]) == (size, 4 * size)  # dense float32
        accs = torch.tensor(list(r["per_seed"].values()), dtype=torch.float64)
        assert r["accuracy"] == pytest.approx(float(accs.mean()))
        assert r["accuracy_std"] == pytest.approx(float(accs.std()))
    starts = {r["method"]: r["start"] for r in rows}
    assert starts["scratch"] == "random" and starts["pruned (structured), fine-tuned"] == "teacher"
    # the int8 row: the pruned + KD students quantized, same parameters, about 3x fewer bytes
    q, kd = rows[-1], next(r for r in rows if r["method"] == int8[0][: -len(" → int8")])
    assert q["start"] == "teacher" and q["n"] == 2 and q["parameters"] == size
    assert 2 * q["bytes"] < kd["bytes"]
    assert abs(q["accuracy"] - kd["accuracy"]) < 0.02
    # distillation never modifies the teacher
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())


def test_summary_students_start_from_the_pruned_teacher_or_from_the_seed(summary_run):
    _, teacher, _, _ = summary_run
    small = results.pruned_teacher(teacher)
    inherited = results._start("teacher", 0.25)(teacher, 0)
    fresh = results._start("random", 0.25)(teacher, 0)
    again = results.reinitialised(small, 0)
    for name, p in small.state_dict().items():
        assert torch.equal(inherited.state_dict()[name], p)
        assert torch.equal(fresh.state_dict()[name], again.state_dict()[name])
    assert not torch.equal(fresh.stage1.conv.weight, small.stage1.conv.weight)


def test_format_summary_by_hand():
    rows = [
        {"method": "teacher", "start": "—", "parameters": 1000, "bytes": 4000,
         "accuracy": 0.98, "accuracy_std": 0.0, "per_seed": {}, "n": 0},
        {"method": "kd", "start": "random", "parameters": 100, "bytes": 400,
         "accuracy": 0.9, "accuracy_std": 0.01, "per_seed": {0: 0.89, 1: 0.91}, "n": 2},
        {"method": "one seed", "start": "teacher", "parameters": 100, "bytes": 400,
         "accuracy": 0.9, "accuracy_std": 0.0, "per_seed": {3: 0.9}, "n": 1},
    ]  # fmt: skip
    lines = results.format_summary(rows).splitlines()
    assert lines[0].startswith("| method | starts from | parameters | bytes | test accuracy")
    assert lines[2] == "| teacher | — | 1,000 | 4,000 | 98.0 | — |"
    assert lines[3] == "| kd | random | 100 | 400 | 90.0 ± 1.0 | 0: 89.0, 1: 91.0 |"
    assert lines[4] == "| one seed | teacher | 100 | 400 | 90.0 | 3: 90.0 |"


def test_summary_section_from_the_command_line(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("KDLIB_CACHE", str(tmp_path))  # the teacher trained here stays here
    small = kdlib.load("mnist-5k").subset(256, 128)
    monkeypatch.setattr(results, "load", lambda name: small)
    two = results.summary_methods()[:2]  # scratch and KD keep the test short
    monkeypatch.setattr(results, "summary_methods", lambda: two)
    quick = dataclasses.replace(results.RECIPES["cnn-teacher"], epochs=1)
    monkeypatch.setitem(results.RECIPES, "cnn-teacher", quick)
    assert results.main(["summary", "--seeds", "0", "--epochs", "1"]) == 0
    out = capsys.readouterr().out
    assert "| teacher (cnn-teacher) | — | 105,962 | 423,848 |" in out
    assert "| scratch | random | 6,818 | 27,272 |" in out
    assert "Pareto front (fewest bytes for the accuracy): " in out


def test_format_table_without_timing():
    rows = [
        dict(method="m", teacher="—", acc=0.9, acc_std=0.01, agreement=0.8, epochs=5, seconds=3)
    ]
    with_time = results.format_table(rows, {"t": 0.95}).splitlines()
    without = results.format_table(rows, {"t": 0.95}, timing=False).splitlines()
    assert with_time[0].endswith("| epochs | seconds |") and without[0].endswith("| epochs |")
    assert with_time[3] == "| m | — | 90.0 ± 1.0 | 80.0 | 5.0 | 3.0 |"
    assert without[3] == "| m | — | 90.0 ± 1.0 | 80.0 | 5.0 |"
    assert without[2] == "| teacher `t` | — | 95.0 | — | — |"


# ---- splits section: the distill table's gap share on other splits --------------------------
def test_splits_section_trains_a_teacher_per_split(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("KDLIB_CACHE", str(tmp_path))  # the teachers trained here stay here
    real_load = results.load
    asked = []

    def small_load(name, seed=0):
        asked.append((name, seed))
        return real_load(name, seed=seed).subset(1000, 300)

    monkeypatch.setattr(results, "load", small_load)
    quick = dataclasses.replace(results.RECIPES[results.KD_TEACHER], epochs=3)
    monkeypatch.setitem(results.RECIPES, results.KD_TEACHER, quick)
    monkeypatch.setattr(results, "SPLIT_SEEDS", (0, 3))
    assert "splits" in results.SECTIONS
    rows = results.split_shares("mnist-5k", splits=(0, 3), seeds=(0,), epochs=1)
    assert asked == [("mnist-5k", 0), ("mnist-5k", 3)]
    # One teacher per split, trained on that split (the cache holds one file each).
    assert len(list((tmp_path / "teachers").glob("*.pt"))) == 2
    for r in rows:
        assert r["n_test"] == 300 and r["scratch_std"] == r["kd_std"] == 0.0  # one seed
        expected = (r["kd"] - r["scratch"]) / (r["teacher"] - r["scratch"])
        assert r["share"] == pytest.approx(expected)
    # The command prints a row per split and the mean ± std of the shares over splits.
    asked.clear()
    assert results.main(["splits", "--seeds", "0", "--epochs", "1"]) == 0
    out = capsys.readouterr().out
    assert asked == [("mnist-5k", 0), ("mnist-5k", 3)]
    assert "| 0 (default) |" in out and "| 3 |" in out
    shares = [100 * r["share"] for r in rows]  # the same runs again, from the cache's teachers
    mean = sum(shares) / 2
    std = abs(shares[0] - shares[1]) / 2**0.5
    assert f"over 2 splits: {mean:.0f} ± {std:.0f}%" in out
