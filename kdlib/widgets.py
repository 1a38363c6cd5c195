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

__all__ = ["sparsity_slider", "schedule_explorer"]


def _show_figure(fig) -> None:
    """Display ``fig`` once (in the current output) and release it."""
    from IPython.display import display

    display(fig)
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# Pruning (notebooks 07 and 08)
def sparsity_slider(model, sweep, layer: str = "fc1", value: float | None = None):
    """A sparsity slider over a precomputed :func:`kdlib.prune.sparsity_sweep`.

    Moving the slider only looks things up (no pruning, no evaluation): it prints
    ``sparsity … | test accuracy … | <layer> keeps …`` and draws
    :func:`kdlib.viz.pruning_panel` (weight histogram and mask image of ``layer``).

    Args:
        model: the unpruned model the sweep was made from (for ``layer``'s weights).
        sweep: a ``SparsitySweep`` made with ``keep_masks=True``.
        layer: the layer whose histogram and mask are drawn.
        value: initial sparsity (default: the middle of the swept values).

    Returns:
        ``ipywidgets.VBox([slider, output])`` with attributes ``slider``
        (``SelectionSlider``), ``output`` (``Output``) and ``state`` (the last shown
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
    options = [(f"{s:.0%}", s) for s in sweep.sparsities]
    if value is None:
        value = sweep.sparsities[len(sweep.sparsities) // 2]
    slider = widgets.SelectionSlider(
        options=options,
        value=value,
        description="sparsity",
        continuous_update=False,
        layout=widgets.Layout(width="420px"),
    )
    output = widgets.Output()
    box = widgets.VBox([slider, output])
    box.slider, box.output, box.state = slider, output, {}

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
        output.clear_output(wait=True)
        with output:
            print(line)
            fig = viz.pruning_panel(weight, mask, title=f"{layer} at {s:.0%} global sparsity")
            _show_figure(fig)

    slider.observe(show, names="value")
    show()
    return box


def schedule_explorer(s_i: float = 0.0, s_f: float = 0.9, n: int = 10, t0: int = 0, dt: int = 1):
    """Sliders for :func:`kdlib.prune.agp_schedule`'s ``s_i``, ``s_f`` and ``n``.

    Each change prints the sparsity after the first pruning step and the step at which half
    of the added sparsity is reached, and redraws :func:`kdlib.viz.schedule_plot`. A bad
    combination (``s_f < s_i``) shows the schedule's own error message instead.

    Returns:
        ``ipywidgets.VBox`` with attributes ``s_i``, ``s_f``, ``n`` (the sliders),
        ``output`` and ``state`` (``{"schedule", "line"}``; ``schedule`` is None on error).
    """
    import ipywidgets as widgets

    from .prune import agp_schedule

    style = {"description_width": "40px"}
    s_i_w = widgets.FloatSlider(
        value=s_i, min=0, max=0.95, step=0.05, description="s_i", style=style
    )
    s_f_w = widgets.FloatSlider(
        value=s_f, min=0, max=0.99, step=0.01, description="s_f", style=style
    )
    n_w = widgets.IntSlider(value=n, min=1, max=30, description="n", style=style)
    for w in (s_i_w, s_f_w, n_w):
        w.continuous_update = False
    output = widgets.Output()
    box = widgets.VBox([widgets.HBox([s_i_w, s_f_w, n_w]), output])
    box.s_i, box.s_f, box.n, box.output, box.state = s_i_w, s_f_w, n_w, output, {}

    def show(change=None) -> None:
        output.clear_output(wait=True)
        try:
            sched = agp_schedule(s_i_w.value, s_f_w.value, t0, n_w.value, dt)
        except ValueError as err:
            box.state.update(schedule=None, line=f"invalid schedule: {err}")
            with output:
                print(box.state["line"])
            return
        half = (sched.s_i + sched.s_f) / 2
        k_half = next(k for k, t in enumerate(sched.times) if sched(t) >= half - 1e-12)
        line = (
            f"s_i={sched.s_i:.0%}, s_f={sched.s_f:.0%}, n={sched.n}: "
            f"{sched(t0 + dt):.1%} after the first step; half-way ({half:.1%}) at step "
            f"{k_half} of {sched.n}"
        )
        box.state.update(schedule=sched, line=line)
        with output:
            print(line)
            _, ax = plt.subplots(figsize=(5.5, 3.2))
            viz.schedule_plot(sched, ax=ax)
            _show_figure(ax.figure)

    for w in (s_i_w, s_f_w, n_w):
        w.observe(show, names="value")
    show()
    return box
