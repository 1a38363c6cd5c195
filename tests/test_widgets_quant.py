"""The quantization explorer and its plot, driven without a browser: set a control, read what
it shows, against kdlib.quant computed here."""

import matplotlib.pyplot as plt
import pytest
import torch

import kdlib
from kdlib import quant
from kdlib.course import viz, widgets


@pytest.fixture(scope="module")
def trained():
    data = kdlib.load("mnist-5k").subset(256, 200)
    net = kdlib.model("cnn-thin", seed=0)
    kdlib.fit(net, data, epochs=1, seed=0, progress=False)
    return data, net.eval()


def test_quant_state_is_quantize_weights_measured(trained):
    data, net = trained
    state = widgets.quant_state(net, data, 4, symmetric=False, per_channel=True)
    q = quant.quantize_weights(net, 4, symmetric=False, per_channel=True)
    layers = ("stage1.conv", "stage2.conv", "head.fc1")
    diffs = [
        (q.get_submodule(n).weight - net.get_submodule(n).weight).detach().flatten()
        for n in layers
    ]
    norms = [net.get_submodule(n).weight.detach().flatten() for n in layers]
    assert torch.equal(state["errors"], torch.cat(diffs))
    rel = float(torch.cat(diffs).norm() / torch.cat(norms).norm())
    assert state["relative_error"] == pytest.approx(rel)
    assert state["accuracy"] == kdlib.evaluate(q, data)["accuracy"]
    assert state["line"].startswith("4-bit asymmetric, per channel | relative weight error")


def test_quant_explorer_redraws_on_every_control(trained):
    data, net = trained
    box = widgets.quant_explorer(net, data, bits=8)
    first = box.state["relative_error"]
    box.bits.value = 2
    assert box.state["relative_error"] > 10 * first
    box.per_channel.value = False
    assert box.state["line"].startswith("2-bit symmetric, per tensor")
    box.symmetric.value = False
    ref = widgets.quant_state(net, data, 2, False, False)
    assert box.state["line"] == ref["line"] and box.state["accuracy"] == ref["accuracy"]
    line, image = box.output.outputs
    assert line["text"] == box.state["line"] + "\n"
    assert image["data"]["image/png"] and box.figure is not None
    assert repr(box) == f"quant_explorer({box.state['line']})"
    box.bits.value = 9  # the slider stops at 8: no unsupported bit width reaches kdlib
    assert box.bits.value == 8 and box.state["line"].startswith("8-bit")


def test_quant_errors_draws_one_histogram_per_setting():
    g = torch.Generator().manual_seed(0)
    errors = {"a": 0.01 * torch.randn(500, generator=g), "b": 0.1 * torch.randn(500, generator=g)}
    ax = viz.quant_errors(errors, {"a": 0.98}, title="t")
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert len(texts) == 2 and "accuracy 98.0%" in texts[0] and "accuracy" not in texts[1]
    assert ax.get_yscale() == "log" and ax.get_title() == "t"
    with pytest.raises(ValueError, match="errors is empty"):
        viz.quant_errors({})
    plt.close("all")
