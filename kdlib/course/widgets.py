"""ipywidgets builders for the notebooks: sliders and pickers that make an idea visible.

Every builder wraps a pure function from another ``kdlib`` module and only looks results up
or redraws when a control moves (training happens before, never inside a callback). Each
returns an ``ipywidgets`` container with its controls, its ``Output`` and a ``state`` dict
of what it last showed as attributes, so tests can set a control's ``value`` and read the
result without a browser.
"""

from __future__ import annotations

import matplotlib.pyplot as plt

from . import viz

__all__ = [
    "sparsity_slider",
    "schedule_explorer",
    "temperature_slider",
    "lambda_slider",
    "alpha_T_explorer",
    "strategy_picker",
    "quant_state",
    "quant_explorer",
]


# --------------------------------------------------------------------------------------------
# Pruning (notebooks 07 and 08)
def sparsity_slider(model, sweep, layer: str = "fc1", value: float | None = None):
    """A sparsity slider over a precomputed :func:`kdlib.course.sparsity_sweep`.

    Moving the slider only looks things up (no pruning, no evaluation): the output shows
    ``sparsity … | test accuracy … | <layer> keeps … of … weights`` above
    :func:`kdlib.course.viz.pruning_panel` (weight histogram and mask image of ``layer``).

    Args:
        model: the unpruned model the sweep was made from (for ``layer``'s weights).
        sweep: a ``SparsitySweep`` made with ``keep_masks=True``.
        layer: the layer whose histogram and mask are drawn.
        value: initial sparsity (default: the middle of the swept values).

    Returns:
        ``ipywidgets.VBox([slider, output])`` with attributes ``slider``
        (``SelectionSlider``, description ``"sparsity"``, labels like ``"90%"``),
        ``output``, ``figure`` (the last drawn) and ``state`` (the last shown
        ``{"sparsity", "accuracy", "kept", "total", "line"}``).
    """
    import ipywidgets as widgets

    if not sweep.masks:
        raise ValueError(
            "the sweep has no masks: make it with sparsity_sweep(..., keep_masks=True)"
        )
    first = sweep.masks[sweep.sparsities[0]]
    if layer not in first:
        raise ValueError(f"layer {layer!r} is not in the sweep; swept layers: {', '.join(first)}")
    weight = model.get_submodule(layer).weight.detach().cpu()
    if value is None:
        value = sweep.sparsities[len(sweep.sparsities) // 2]
    slider = widgets.SelectionSlider(
        options=[(f"{s:.0%}", s) for s in sweep.sparsities],
        value=value,
        description="sparsity",
        continuous_update=False,
        layout=widgets.Layout(width="420px"),
    )
    output = widgets.Output()
    box = _panel([slider, output], "sparsity_slider")
    box.slider, box.output = slider, output

    def show(change=None) -> None:
        s = slider.value
        mask = sweep.masks[s][layer]
        acc = sweep.lookup(s)
        kept, total = int(mask.sum()), mask.numel()
        line = (
            f"sparsity {s:.0%} | test accuracy {acc:.1%} | "
            f"{layer} keeps {kept:,} of {total:,} weights"
        )
        box.state.update(sparsity=s, accuracy=acc, kept=kept, total=total, line=line)
        fig = viz.pruning_panel(weight, mask, title=f"{layer} at {s:.0%} global sparsity")
        _show_panel(box, line, fig)
        plt.close(fig)  # shown through the panel only, not again by the inline backend

    slider.observe(show, names="value")
    show()
    return box


def schedule_explorer(s_i: float = 0.0, s_f: float = 0.9, n: int = 10, t0: int = 0, dt: int = 1):
    """Sliders for :func:`kdlib.prune.agp_schedule`'s ``s_i``, ``s_f`` and ``n``.

    Each change shows the sparsity after the first pruning step and the step at which half
    of the added sparsity is reached, above :func:`kdlib.course.viz.schedule_plot`. A bad
    combination (``s_f < s_i``) shows the schedule's own error message instead.

    Returns:
        ``ipywidgets.VBox`` with attributes ``s_i``, ``s_f``, ``n`` (the sliders),
        ``output``, ``figure`` and ``state`` (``{"schedule", "line"}``; ``schedule`` is
        None on error).
    """
    import ipywidgets as widgets
    from matplotlib.figure import Figure

    from ..prune import agp_schedule

    style = {"description_width": "40px"}
    s_i_w = widgets.FloatSlider(value=s_i, min=0, max=0.95, step=0.05, description="s_i")
    s_f_w = widgets.FloatSlider(value=s_f, min=0, max=0.99, step=0.01, description="s_f")
    n_w = widgets.IntSlider(value=n, min=1, max=30, description="n")
    for w in (s_i_w, s_f_w, n_w):
        w.continuous_update, w.style = False, style
    output = widgets.Output()
    box = _panel([widgets.HBox([s_i_w, s_f_w, n_w]), output], "schedule_explorer")
    box.s_i, box.s_f, box.n, box.output = s_i_w, s_f_w, n_w, output

    def show(change=None) -> None:
        try:
            sched = agp_schedule(s_i_w.value, s_f_w.value, t0, n_w.value, dt)
        except ValueError as err:
            line = f"invalid schedule: {err}"
            box.state.update(schedule=None, line=line)
            output.outputs = ({"output_type": "stream", "name": "stdout", "text": line + "\n"},)
            return
        half = (sched.s_i + sched.s_f) / 2
        k_half = next(k for k, t in enumerate(sched.times) if sched(t) >= half - 1e-12)
        line = (
            f"s_i={sched.s_i:.0%}, s_f={sched.s_f:.0%}, n={sched.n}: "
            f"{sched(t0 + dt):.1%} after the first step; half-way ({half:.1%}) at step "
            f"{k_half} of {sched.n}"
        )
        box.state.update(schedule=sched, line=line)
        fig = Figure(figsize=(5.5, 3.2))
        viz.schedule_plot(sched, ax=fig.subplots())
        fig.tight_layout()
        _show_panel(box, line, fig)

    for w in (s_i_w, s_f_w, n_w):
        w.observe(show, names="value")
    show()
    return box


# --------------------------------------------------------------------------------------------
# Distillation (notebooks 02 to 05)
#
# These panels write their Output widget's ``outputs`` directly instead of printing inside
# ``with output:``. Captured prints reach the Output only where the front end routes them
# (JupyterLab, nbclient); under nbval they would land in the cell's own outputs and make a
# notebook that drives a widget fail its output check. Figures are plain matplotlib
# ``Figure`` objects (not pyplot's), rendered to PNG and never left open.
_PANEL_CLASS = None


def _panel(children, kind: str):
    """A VBox whose text form is the line it shows, so a notebook's stored output is stable."""
    global _PANEL_CLASS
    if _PANEL_CLASS is None:
        import ipywidgets as widgets

        class Panel(widgets.VBox):
            def __repr__(self) -> str:
                return f"{self.kind}({self.state.get('line', '')})"

        _PANEL_CLASS = Panel
    box = _PANEL_CLASS(children)
    box.kind, box.state, box.figure = kind, {}, None
    return box


def _show_panel(box, line: str, fig) -> None:
    """Replace ``box.output``'s contents with ``line`` and ``fig`` as a PNG, in one update."""
    import base64
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    w, h = fig.get_size_inches() * fig.dpi
    png = base64.b64encode(buf.getvalue()).decode("ascii")
    box.figure = fig
    box.output.outputs = (
        {"output_type": "stream", "name": "stdout", "text": line + "\n"},
        {
            "output_type": "display_data",
            "data": {"image/png": png, "text/plain": f"<Figure size {w:.0f}x{h:.0f}>"},
            "metadata": {},
        },
    )


def temperature_slider(
    logits,
    classes,
    image=None,
    true_class: int | None = None,
    T: float = 1.0,
    T_min: float = 0.5,
    T_max: float = 20.0,
    step: float = 0.5,
    k: int = 3,
):
    """A slider labelled ``T`` over a teacher's softmax for one input (:func:`kdlib.soften`).

    Each move shows ``T = … | top classes: 7 62.1%, 9 14.0%, 4 8.2% | entropy … nats`` above
    the input image (if given) and :func:`kdlib.course.viz.softmax_bars` at that ``T``.

    Args:
        logits: ``(C,)`` the teacher's logits for one input.
        classes: class names.
        image: ``(H, W)`` pixels in [0, 1] to show beside the bars.
        true_class: index of the correct class (green bar).
        T, T_min, T_max, step: the slider's start, range and step.
        k: how many top classes the line names.

    Returns:
        ``ipywidgets.VBox([slider, output])`` with attributes ``slider`` (``FloatSlider``,
        description ``"T"``), ``output``, ``figure`` (the last drawn) and ``state`` (the last
        shown ``{"T", "probs", "top", "entropy", "line"}``).
    """
    import ipywidgets as widgets
    import torch
    from matplotlib.figure import Figure

    from ..losses import soften

    z = torch.as_tensor(logits).detach().cpu().flatten().double()
    if len(z) != len(classes):
        raise ValueError(f"{len(z)} logits but {len(classes)} class names")
    pixels = None if image is None else torch.as_tensor(image).detach().cpu().numpy()
    slider = widgets.FloatSlider(
        value=T, min=T_min, max=T_max, step=step, description="T", continuous_update=False,
        readout_format=".1f", layout=widgets.Layout(width="420px"),
    )  # fmt: skip
    output = widgets.Output()
    box = _panel([slider, output], "temperature_slider")
    box.slider, box.output = slider, output

    def show(change=None) -> None:
        t = float(slider.value)
        p = soften(z, t)
        entropy = float(-(p * p.clamp_min(1e-300).log()).sum())
        top = torch.topk(p, min(k, len(p))).indices
        named = [(str(classes[int(i)]), float(p[i])) for i in top]
        line = (
            f"T = {t:.1f} | top classes: "
            + ", ".join(f"{c} {v:.1%}" for c, v in named)
            + f" | entropy {entropy:.2f} nats"
        )
        box.state.update(T=t, probs=p, top=named, entropy=entropy, line=line)
        if pixels is not None:
            fig = Figure(figsize=(7.0, 2.8))
            ax_img, ax = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 2.6]})
            ax_img.imshow(pixels, cmap="gray_r", vmin=0, vmax=1)
            ax_img.set_axis_off()
        else:
            fig = Figure(figsize=(5.5, 2.8))
            ax = fig.subplots()
        viz.softmax_bars(p, classes, T=t, true_class=true_class, ax=ax)
        fig.tight_layout()
        _show_panel(box, line, fig)

    slider.observe(show, names="value")
    show()
    return box


def _history_line(prefix: str, hist) -> str:
    return (
        f"{prefix} | test accuracy {hist.last('test_acc'):.1%} | agreement with teacher "
        f"{hist.last('agreement'):.1%} | KL to teacher {hist.last('kl_teacher'):.3f}"
    )


def lambda_slider(sweep, value: float | None = None):
    """A slider labelled ``λ`` over a precomputed :func:`kdlib.course.distill_sweep` on ``lam``.

    Moving it only looks runs up: it shows the chosen run's final test accuracy, agreement
    and KL with the teacher, and every run's test accuracy per epoch with the chosen one
    highlighted (:func:`kdlib.course.viz.history_curves`).

    Returns:
        ``ipywidgets.VBox([slider, output])`` with attributes ``slider``
        (``SelectionSlider``), ``output``, ``figure`` and ``state``
        (``{"lam", "history", "line"}``).
    """
    import ipywidgets as widgets
    from matplotlib.figure import Figure

    if sweep.keys != ["lam"]:
        raise ValueError(f"lambda_slider needs a sweep over 'lam' only, got {sweep.keys}")
    lams = sweep.values("lam")
    slider = widgets.SelectionSlider(
        options=[(f"{v:g}", v) for v in lams], value=lams[0] if value is None else value,
        description="λ", continuous_update=False, layout=widgets.Layout(width="420px"),
    )  # fmt: skip
    output = widgets.Output()
    box = _panel([slider, output], "lambda_slider")
    box.slider, box.output = slider, output
    labelled = {f"λ = {v:g}": sweep.lookup(lam=v) for v in lams}

    def show(change=None) -> None:
        lam = slider.value
        hist = sweep.lookup(lam=lam)
        line = _history_line(f"λ = {lam:g}", hist)
        box.state.update(lam=lam, history=hist, line=line)
        fig = Figure(figsize=(5.5, 3.2))
        ax = viz.history_curves(labelled, "test_acc", highlight=f"λ = {lam:g}", ax=fig.subplots())
        ax.set_title("CE + λ·MSE(logits): test accuracy per epoch", fontsize=10)
        fig.tight_layout()
        _show_panel(box, line, fig)

    slider.observe(show, names="value")
    show()
    return box


def alpha_T_explorer(sweep, alpha: float | None = None, T: float | None = None):
    """Sliders ``α`` and ``T`` over a precomputed :func:`kdlib.course.distill_sweep` grid.

    Moving either only looks the run up: it shows the run's final test accuracy, agreement
    and KL with the teacher, and the grid's accuracies as a heat map
    (:func:`kdlib.course.viz.grid_heatmap`) with the chosen cell outlined.

    Returns:
        ``ipywidgets.VBox`` with attributes ``alpha`` and ``T`` (``SelectionSlider``),
        ``output``, ``figure`` and ``state`` (``{"alpha", "T", "history", "line"}``).
    """
    import ipywidgets as widgets
    from matplotlib.figure import Figure

    if sorted(sweep.keys) != ["T", "alpha"]:
        raise ValueError(f"alpha_T_explorer needs a sweep over 'alpha' and 'T', got {sweep.keys}")
    alphas, Ts = sweep.values("alpha"), sweep.values("T")

    def slider(name, values, start):
        return widgets.SelectionSlider(
            options=[(f"{v:g}", v) for v in values], value=values[-1] if start is None else start,
            description=name, continuous_update=False,
        )  # fmt: skip

    a_w, t_w = slider("α", alphas, alpha), slider("T", Ts, T)
    output = widgets.Output()
    box = _panel([widgets.HBox([a_w, t_w]), output], "alpha_T_explorer")
    box.alpha, box.T, box.output = a_w, t_w, output
    finals = {}
    for setting, acc in sweep.final("test_acc").items():
        d = dict(zip(sweep.keys, setting, strict=True))
        finals[(d["alpha"], d["T"])] = acc

    def show(change=None) -> None:
        a, t = a_w.value, t_w.value
        hist = sweep.lookup(alpha=a, T=t)
        line = _history_line(f"α = {a:g}, T = {t:g}", hist)
        box.state.update(alpha=a, T=t, history=hist, line=line)
        fig = Figure(figsize=(4.6, 3.2))
        viz.grid_heatmap(
            finals, alphas, Ts, "α (weight of the soft loss)", "T (temperature)",
            mark=(a, t), title="final test accuracy", ax=fig.subplots(),
        )  # fmt: skip
        fig.tight_layout()
        _show_panel(box, line, fig)

    a_w.observe(show, names="value")
    t_w.observe(show, names="value")
    show()
    return box


def strategy_picker(histories: dict, reference: float | None = None, value: str | None = None):
    """Buttons labelled by inheritance strategy over precomputed
    :func:`kdlib.params.distill_params` histories.

    Picking one shows its accuracy before training, its final accuracy and why it stopped,
    with test accuracy per epoch (epoch 0 = the inherited weights, before any training) next
    to the relative parameter change per epoch and the stopping tolerance.

    Args:
        histories: ``{strategy: history}`` from :func:`kdlib.params.distill_params`.
        reference: an accuracy to draw as a dashed line (the scratch student's).
        value: the strategy shown first (default: the first).

    Returns:
        ``ipywidgets.VBox`` with attributes ``picker`` (``ToggleButtons``), ``output``,
        ``figure`` and ``state`` (``{"strategy", "history", "line"}``).
    """
    import ipywidgets as widgets
    from matplotlib.figure import Figure

    names = list(histories)
    if not names:
        raise ValueError("strategy_picker needs at least one history")
    picker = widgets.ToggleButtons(
        options=names, value=names[0] if value is None else value, description="strategy"
    )
    output = widgets.Output()
    box = _panel([picker, output], "strategy_picker")
    box.picker, box.output = picker, output
    start = {n: h.info["init_acc"] for n, h in histories.items()}

    def show(change=None) -> None:
        name = picker.value
        hist = histories[name]
        line = (
            f"{name}: {hist.info['init_acc']:.1%} before training, "
            f"{hist.last('test_acc'):.1%} after {hist.epochs} epochs | stop: {hist.stop_reason}"
        )
        box.state.update(strategy=name, history=hist, line=line)
        fig = Figure(figsize=(9.0, 3.2))
        ax1, ax2 = fig.subplots(1, 2)
        viz.history_curves(
            histories, "test_acc", highlight=name, hline=reference,
            hline_label="scratch, final", start=start, ax=ax1,
        )  # fmt: skip
        viz.history_curves(
            histories, "param_change", highlight=name, hline=hist.info["tol"],
            hline_label="tol", percent=False, logy=True, ax=ax2,
        )  # fmt: skip
        fig.tight_layout()
        _show_panel(box, line, fig)

    picker.observe(show, names="value")
    show()
    return box


# --------------------------------------------------------------------------------------------
# Quantization (notebook 12)
def quant_state(model, data, bits: int = 8, symmetric: bool = True, per_channel: bool = True):
    """What :func:`quant_explorer` shows for one setting: ``model``'s Linear and Conv2d
    weights quantized by :func:`kdlib.quant.quantize_weights`, their errors and accuracy.

    Returns:
        ``{"errors"`` (every ``x̂ − x``, flattened), ``"relative_error"`` (‖x̂ − x‖ / ‖x‖ over
        all of them), ``"accuracy"`` (on ``data``'s test split), ``"line"}`` (a one-line summary).
    """
    import torch

    from ..quant import quantize_weights
    from ..train import evaluate

    q = quantize_weights(model, bits, symmetric=symmetric, per_channel=per_channel)
    before = dict(model.named_modules())
    diffs, norms = [], []
    for name, m in q.named_modules():
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
            w = before[name].weight.detach()
            diffs.append((m.weight.detach() - w).flatten())
            norms.append(w.flatten())
    errors = torch.cat(diffs)
    rel = float(errors.norm() / torch.cat(norms).norm())
    acc = evaluate(q, data)["accuracy"]
    kind = f"{bits}-bit {'symmetric' if symmetric else 'asymmetric'}, " + (
        "per channel" if per_channel else "per tensor"
    )
    line = f"{kind} | relative weight error {rel:.2%} | test accuracy {acc:.1%}"
    return {"errors": errors, "relative_error": rel, "accuracy": acc, "line": line}


def quant_explorer(model, data, bits: int = 4, symmetric: bool = True, per_channel: bool = True):
    """Bits, symmetric/asymmetric and per-tensor/per-channel in; the weights' error histogram
    and the test accuracy out (:func:`quant_state`, drawn by
    :func:`kdlib.course.viz.quant_errors`). Each change quantizes and evaluates anew (no
    training: a fraction of a second for the course's CNN).

    Returns:
        ``ipywidgets.VBox`` with attributes ``bits`` (``IntSlider``, 2 to 8), ``symmetric``
        and ``per_channel`` (``Checkbox``), ``output``, ``figure`` and ``state`` (the last
        :func:`quant_state` result).
    """
    import ipywidgets as widgets
    from matplotlib.figure import Figure

    bits_w = widgets.IntSlider(value=bits, min=2, max=8, description="bits")
    bits_w.continuous_update = False
    sym_w = widgets.Checkbox(value=symmetric, description="symmetric")
    chan_w = widgets.Checkbox(value=per_channel, description="per channel")
    output = widgets.Output()
    box = _panel([widgets.HBox([bits_w, sym_w, chan_w]), output], "quant_explorer")
    box.bits, box.symmetric, box.per_channel, box.output = bits_w, sym_w, chan_w, output

    def show(change=None) -> None:
        state = quant_state(model, data, bits_w.value, sym_w.value, chan_w.value)
        box.state.clear()
        box.state.update(state)
        fig = Figure(figsize=(7, 3.2))
        label = state["line"].split(" | ")[0]
        viz.quant_errors({label: state["errors"]}, {label: state["accuracy"]}, ax=fig.subplots())
        _show_panel(box, state["line"], fig)

    for w in (bits_w, sym_w, chan_w):
        w.observe(show, names="value")
    show()
    return box
