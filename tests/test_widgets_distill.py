"""Distillation widgets and plots (notebooks 02-05), driven without a browser."""

import matplotlib.pyplot as plt
import pytest
import torch

import kdlib
from kdlib.course import viz, widgets
from kdlib.course.sweeps import DistillSweep
from kdlib.train import History

CLASSES = [str(i) for i in range(10)]


def _hist(accs, agreement=0.9, kl=0.1, **info):
    rows = [
        {
            "epoch": e,
            "test_acc": a,
            "agreement": agreement,
            "kl_teacher": kl,
            "param_change": 0.1 / e,
        }
        for e, a in enumerate(accs, start=1)
    ]
    return History(rows=rows, info=dict(info))


def _shown(box):
    """What the panel's Output holds: the printed line and one PNG image."""
    outs = box.output.outputs
    assert [o["output_type"] for o in outs] == ["stream", "display_data"]
    assert "image/png" in outs[1]["data"]
    return outs[0]["text"]


def test_temperature_slider_shows_soften_at_the_slider_value():
    logits = torch.tensor([0.5, 1.0, 7.0, 3.0, 0.0, 0.0, 0.0, 4.0, 0.0, 2.0])
    box = widgets.temperature_slider(logits, CLASSES, image=torch.rand(28, 28), true_class=2)
    assert box.slider.description == "T" and box.state["T"] == 1.0
    for T in (1.0, 4.0, 10.0):
        box.slider.value = T
        p = kdlib.soften(logits.double(), T)
        torch.testing.assert_close(box.state["probs"], p)
        top = torch.topk(p, 3).indices.tolist()
        assert [c for c, _ in box.state["top"]] == [CLASSES[i] for i in top]
        assert box.state["line"].startswith(f"T = {T:.1f} | top classes: 2 ")
        assert box.state["entropy"] == pytest.approx(float(-(p * p.log()).sum()))
        assert _shown(box) == box.state["line"] + "\n"
        fig = box.figure  # redrawn: the digit and the bars at this T
        bars = [p.get_height() for p in fig.axes[1].patches]
        assert bars == pytest.approx(p.tolist())
        assert fig.axes[1].get_title() == f"teacher's softmax at T = {T:g}"
    # Higher T: flatter distribution, more entropy (the dark knowledge comes out).
    box.slider.value = 1.0
    low = box.state["entropy"]
    box.slider.value = 8.0
    assert box.state["entropy"] > low


def test_temperature_slider_bad_input():
    with pytest.raises(ValueError, match="3 logits but 10 class names"):
        widgets.temperature_slider(torch.zeros(3), CLASSES)


def test_lambda_slider_looks_runs_up():
    sweep = DistillSweep(
        ["lam"],
        [(0.0,), (0.1,), (1.0,)],
        [_hist([0.8, 0.9]), _hist([0.85, 0.93]), _hist([0.7, 0.88])],
    )
    box = widgets.lambda_slider(sweep)
    assert box.slider.description == "λ" and box.state["lam"] == 0.0
    box.slider.value = 0.1
    assert box.state["history"] is sweep.lookup(lam=0.1)
    assert box.state["line"].startswith("λ = 0.1 | test accuracy 93.0% | agreement with teacher")
    assert _shown(box).startswith("λ = 0.1 | test accuracy 93.0%")
    assert repr(box) == f"lambda_slider({box.state['line']})"
    widths = {line.get_label(): line.get_linewidth() for line in box.figure.axes[0].lines}
    assert widths["λ = 0.1"] > widths["λ = 0"]  # the chosen run is highlighted
    with pytest.raises(ValueError, match="sweep over 'lam' only"):
        widgets.lambda_slider(DistillSweep(["lam", "T"], [(0.0, 1.0)], [_hist([0.5])]))


def test_alpha_T_explorer_looks_runs_up():
    settings = [(a, T) for a in (0.5, 0.9) for T in (1.0, 4.0)]
    hists = [_hist([0.9 + 0.01 * i]) for i in range(4)]
    sweep = DistillSweep(["alpha", "T"], settings, hists)
    box = widgets.alpha_T_explorer(sweep)
    assert (box.alpha.description, box.T.description) == ("α", "T")
    assert (box.state["alpha"], box.state["T"]) == (0.9, 4.0)  # starts at the last values
    box.alpha.value = 0.5
    box.T.value = 1.0
    assert box.state["history"] is hists[0]
    assert box.state["line"].startswith("α = 0.5, T = 1 | test accuracy 90.0%")
    assert _shown(box).startswith("α = 0.5, T = 1 |")
    heat = sum(box.figure.axes[0].images[0].get_array().tolist(), [])
    assert heat == pytest.approx([90.0, 91.0, 92.0, 93.0])
    with pytest.raises(ValueError, match="sweep over 'alpha' and 'T'"):
        widgets.alpha_T_explorer(DistillSweep(["lam"], [(0.0,)], [_hist([0.5])]))


def test_strategy_picker_shows_each_strategy():
    hists = {
        "top-units": _hist([0.95, 0.955], init_acc=0.947, tol=2e-3),
        "low-rank": _hist([0.94, 0.95, 0.951], init_acc=0.946, tol=2e-3),
    }
    hists["low-rank"].stop_reason = "converged: parameter change 1.0e-03 < tol 0.002"
    box = widgets.strategy_picker(hists, reference=0.947)
    assert box.picker.description == "strategy" and box.state["strategy"] == "top-units"
    box.picker.value = "low-rank"
    assert box.state["history"] is hists["low-rank"]
    assert box.state["line"] == (
        "low-rank: 94.6% before training, 95.1% after 3 epochs | stop: converged: parameter "
        "change 1.0e-03 < tol 0.002"
    )
    assert _shown(box) == box.state["line"] + "\n"
    acc_axes = box.figure.axes[0]
    lr_line = next(line for line in acc_axes.lines if line.get_label() == "low-rank")
    assert list(lr_line.get_ydata()) == pytest.approx([94.6, 94.0, 95.0, 95.1])
    with pytest.raises(ValueError, match="at least one history"):
        widgets.strategy_picker({})


def test_distill_sweep_runs_every_setting_and_looks_up():
    data = kdlib.load("digits").subset(256, 128)
    teacher = kdlib.mlp(64, [32], 10)
    kdlib.fit(teacher, data, epochs=3, lr=1e-2, seed=0, progress=False)
    sweep = kdlib.course.distill_sweep(
        lambda: kdlib.mlp(64, [16], 10), teacher, data, {"alpha": [0.5, 1.0], "T": [2.0]},
        epochs=1, seed=0, progress=False,
    )  # fmt: skip
    assert sweep.keys == ["alpha", "T"] and sweep.settings == [(0.5, 2.0), (1.0, 2.0)]
    assert sweep.grid == {"alpha": [0.5, 1.0], "T": [2.0]}
    hist = sweep.lookup(alpha=1.0, T=2.0)
    assert hist.info["alpha"] == 1.0 and hist.info["T"] == 2.0
    assert set(sweep.final()) == {(0.5, 2.0), (1.0, 2.0)}
    with pytest.raises(ValueError, match="was not swept"):
        sweep.lookup(alpha=0.7, T=2.0)
    with pytest.raises(ValueError, match="give a value for each of"):
        sweep.lookup(alpha=0.5)
    make = lambda: kdlib.mlp(64, [16], 10)  # noqa: E731
    with pytest.raises(ValueError, match="given both in grid and as fixed arguments"):
        kdlib.course.distill_sweep(make, teacher, data, {"T": [1.0]}, T=2.0)
    with pytest.raises(ValueError, match="at least one value per key"):
        kdlib.course.distill_sweep(make, teacher, data, {"T": []})


def test_plots_draw_what_they_are_given():
    ax = viz.softmax_bars(torch.tensor([0.1, 0.7, 0.2]), ["a", "b", "c"], T=2.0, true_class=1)
    assert [round(p.get_height(), 3) for p in ax.patches] == [0.1, 0.7, 0.2]
    assert ax.get_title() == "teacher's softmax at T = 2"
    ax = viz.lines({"x²": ([1, 2, 3], [1, 4, 9])}, "x", "y", logy=True)
    assert list(ax.lines[0].get_ydata()) == [1, 4, 9] and ax.get_yscale() == "log"
    ax = viz.history_curves({"a": _hist([0.5, 0.6])}, start={"a": 0.4}, hline=0.55)
    assert list(ax.lines[0].get_ydata()) == pytest.approx([40, 50, 60])
    ax = viz.grid_heatmap({(0, 1): 0.5, (0, 2): 0.6}, [0], [1, 2], "r", "c", mark=(0, 2))
    assert ax.images[0].get_array().tolist() == [[50.0, 60.0]]
    plt.close("all")
