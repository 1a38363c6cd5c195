"""The pruning widgets and plots, driven without a browser: set a control, read what it shows."""

import matplotlib.pyplot as plt
import pytest
import torch

import kdlib
from kdlib import prune
from kdlib.course import viz, widgets


@pytest.fixture(scope="module")
def swept():
    data = kdlib.load("mnist-5k").subset(256, 200)
    net = kdlib.model("tiny", seed=0)
    kdlib.fit(net, data, epochs=2, seed=0, progress=False)
    sweep = kdlib.course.sparsity_sweep(net, data, [0.0, 0.5, 0.9, 0.99], keep_masks=True)
    return data, net, sweep


def test_sparsity_slider_looks_up_the_precomputed_sweep(swept):
    data, net, sweep = swept
    box = widgets.sparsity_slider(net, sweep, layer="fc1")
    assert box.state["sparsity"] == 0.9  # the middle option
    for s in (0.0, 0.99, 0.5):
        box.slider.value = s
        ref = prune.prune_to_sparsity(prune.copy_pruned(net), s)
        assert box.state["accuracy"] == kdlib.evaluate(ref, data)["accuracy"]
        assert box.state["kept"] == int(ref.fc1.weight_mask.sum())
        assert f"sparsity {s:.0%} | test accuracy" in box.state["line"]
    line, image = box.output.outputs
    assert line["text"] == box.state["line"] + "\n"
    assert image["data"]["image/png"] and box.figure is not None
    assert repr(box) == f"sparsity_slider({box.state['line']})"  # what a notebook stores
    assert [label for label, _ in box.slider.options] == ["0%", "50%", "90%", "99%"]
    assert not torch.nn.utils.prune.is_pruned(net)
    plt.close("all")


def test_sparsity_slider_bad_input(swept):
    _, net, sweep = swept
    with pytest.raises(ValueError, match="layer 'fc9' is not in the sweep"):
        widgets.sparsity_slider(net, sweep, layer="fc9")
    no_masks = kdlib.course.SparsitySweep(sweep.sparsities, sweep.accuracy, {})
    with pytest.raises(ValueError, match="keep_masks=True"):
        widgets.sparsity_slider(net, no_masks)


def test_schedule_explorer_follows_the_formula():
    box = widgets.schedule_explorer(s_i=0.0, s_f=0.8, n=4)
    sched = box.state["schedule"]
    assert sched == prune.agp_schedule(0.0, 0.8, 0, 4, 1)
    assert "after the first step" in box.state["line"]
    box.n.value = 8
    assert box.state["schedule"].n == 8
    # 0.8 · (1 − (1 − 1/8)³) after the first step
    assert f"{0.8 * (1 - (7 / 8) ** 3):.1%} after the first step" in box.state["line"]
    box.s_i.value = 0.9  # above s_f: the schedule's own error is shown
    assert box.state["schedule"] is None
    assert "s_f=0.8 is below s_i=0.9" in box.state["line"]
    assert box.output.outputs[0]["text"].startswith("invalid schedule: s_f=0.8 is below")
    assert len(box.output.outputs) == 1  # no plot for an invalid schedule
    plt.close("all")


def test_pruning_plots_draw_what_they_are_given(swept):
    data, net, sweep = swept
    mask = sweep.masks[0.9]["fc1"]
    fig = viz.pruning_panel(net.fc1.weight, mask, title="fc1")
    ax_hist, ax_mask = fig.axes[:2]
    counts = sum(p.get_height() for p in ax_hist.patches)
    assert counts == mask.numel()  # kept + pruned histograms cover every weight
    assert ax_hist.get_yscale() == "log"  # the few kept weights stay visible
    # fc1 reads 784 = 28 x 28 pixels: the map counts the units still connected to each pixel
    per_pixel = ax_mask.images[0].get_array()
    assert per_pixel.shape == (28, 28)
    assert per_pixel.sum() == mask.sum() and per_pixel[0, 0] == mask[:, 0].sum()
    # fc2 reads 32 hidden units, not an image: the mask itself, one row per unit
    fig = viz.pruning_panel(net.fc2.weight, sweep.masks[0.9]["fc2"])
    assert fig.axes[1].images[0].get_array().shape == (10, 32)
    ax = viz.sparsity_curves({"one shot": (sweep.sparsities, sweep.accuracy)}, baseline=0.9)
    assert list(ax.lines[0].get_ydata()) == [100 * a for a in sweep.accuracy]
    assert ax.get_ylabel() == "test accuracy (%)"
    ax = viz.sparsity_curves(
        {"random": (sweep.sparsities, sweep.accuracy)},
        split="validation",
        errors={"random": [0.01] * len(sweep.sparsities)},
    )
    assert ax.get_ylabel() == "validation accuracy (%)" and len(ax.containers) == 1
    sens = prune.sensitivity_scan(net, data, amounts=(0.5, 0.9))
    assert viz.sensitivity_curves(sens).get_ylabel() == "training accuracy (%)"
    sched = prune.agp_schedule(0.0, 0.9, 0, 5, 2)
    ax = viz.schedule_plot(sched)
    assert list(ax.lines[1].get_xdata()) == sched.times
    plt.close("all")
