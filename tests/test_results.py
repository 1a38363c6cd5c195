"""kdlib.results: the distill table on a short budget (loose checks), helpers, the command."""

import pytest
import torch

import kdlib
from kdlib import results


@pytest.fixture(scope="module")
def short_run():
    data = kdlib.load("mnist-5k").subset(512, 256)

    def trained(net, epochs, lr):
        kdlib.fit(net, data, epochs=epochs, lr=lr, seed=0, progress=False)
        return net.eval()

    teachers = {
        "cnn-teacher": trained(kdlib.model("cnn-student", seed=0), 4, 3e-3),
        "hinton-teacher": trained(kdlib.model("hinton-teacher", seed=0), 3, 1e-3),
        "mlp-800x4": trained(kdlib.mlp(784, [800] * 4, 10), 3, 1e-3),
    }
    runs, teacher_acc = results.distill_runs(
        data, seeds=(0, 1), epochs=2, teachers=teachers, methods=results.distill_methods()
    )
    return data, runs, teacher_acc


def test_every_row_runs_for_every_seed(short_run):
    _, runs, teacher_acc = short_run
    names = [m.name for m in results.distill_methods()]
    assert list(runs) == names and len(names) == 8
    assert all(len(rs) == 2 and {r.seed for r in rs} == {0, 1} for rs in runs.values())
    assert set(teacher_acc) == {"cnn-teacher", "hinton-teacher", "mlp-800x4"}
    kd = runs["soft-target KD + shifts (T=4, α=0.9)"][0]
    assert kd.history.info["teacher_logits"] == "per-batch"
    assert runs["soft-target KD (T=4, α=0.9)"][0].history.info["teacher_logits"] == "cached"
    for name in ("params: top-units", "params: svd", "params: every-other-layer"):
        assert runs[name][0].history.stop_reason.split(":")[0] in ("converged", "max_epochs")


def test_distilled_students_imitate_their_teacher_more_than_scratch(short_run):
    _, runs, _ = short_run
    rows = {r["method"]: r for r in results.summarize(runs)}
    scratch = rows["scratch"]["agreement"]
    assert rows["soft-target KD (T=4, α=0.9)"]["agreement"] > scratch
    assert rows["MSE logits"]["agreement"] > scratch - 0.02
    for name in ("params: top-units", "params: svd", "params: every-other-layer"):
        init = [r.history.info["init_acc"] for r in runs[name]]
        assert min(init) > 0.5, name  # inherited weights work before any training


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
    assert sum(line.startswith("| teacher `") for line in lines) == 3
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


def test_sections_and_command_line(capsys, monkeypatch):
    assert "distill" in results.SECTIONS
    with pytest.raises(SystemExit):
        results.main(["nonsense"])
    assert "unknown section(s) ['nonsense']" in capsys.readouterr().err
    monkeypatch.setitem(results.SECTIONS, "demo", lambda args: f"demo seeds={args.seeds}")
    assert results.main(["demo", "--seeds", "4", "5"]) == 0
    assert "demo seeds=[4, 5]" in capsys.readouterr().out
