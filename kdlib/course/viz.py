"""The course's plots, so notebook cells stay short.

Every function draws with matplotlib onto a given or new ``Axes``/``Figure`` and returns it;
none of them calls ``plt.show()``, so notebooks and tests decide what to display.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import torch

__all__ = [
    "cost_bars",
    "sample_grid",
    "attention_grid",
    "pruning_panel",
    "sparsity_curves",
    "sensitivity_curves",
    "schedule_plot",
    "softmax_bars",
    "lines",
    "history_curves",
    "grid_heatmap",
    "pareto",
    "quant_errors",
]


def sample_grid(data, n_per_class: int = 8, split: str = "train", title: str | None = None):
    """A grid of example images: one row per class, ``n_per_class`` columns.

    Returns:
        The matplotlib ``Figure``.
    """
    X, y = (data.X_train, data.y_train) if split == "train" else (data.X_test, data.y_test)
    X = data.unnormalize(X.detach().cpu())
    y = y.cpu()
    fig, axes = plt.subplots(
        data.num_classes, n_per_class, figsize=(n_per_class * 0.6, data.num_classes * 0.6)
    )
    for c in range(data.num_classes):
        idx = torch.nonzero(y == c).flatten()[:n_per_class]
        for j in range(n_per_class):
            ax = axes[c, j]
            ax.set_axis_off()
            if j < len(idx):
                ax.imshow(X[idx[j], 0], cmap="gray_r", vmin=0, vmax=1)
        axes[c, 0].set_title(data.classes[c], fontsize=7, loc="left", x=-0.6, y=0.2)
    fig.suptitle(title or f"{data.name}: {n_per_class} {split} examples per class", fontsize=9)
    fig.tight_layout()
    return fig


def cost_bars(rows: list[dict], keys=("parameters", "MACs", "latency_ms"), log: bool = True):
    """One bar chart per cost (``rows`` are dicts with ``"name"`` and each key).

    Log scale by default: the models differ by orders of magnitude.

    Returns:
        The matplotlib ``Figure``.
    """
    names = [r["name"] for r in rows]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.6 * len(keys), 3.2))
    for ax, key in zip(axes if len(keys) > 1 else [axes], keys, strict=True):
        ax.bar(names, [r[key] for r in rows], color="tab:blue")
        ax.set_title(key)
        if log:
            ax.set_yscale("log")
        ax.tick_params(axis="x", rotation=60, labelsize=8)
    fig.tight_layout()
    return fig


def attention_grid(X, maps: dict, data=None, labels=None, title: str | None = None):
    """Inputs and their attention maps side by side: one row per image, one column per map.

    Args:
        X: ``(N, C, H, W)`` images (normalised ones are shown as they are, or un-normalised
            when ``data`` is given).
        maps: ``{column title: (N, h, w) maps}``, e.g. ``{"teacher": ..., "student after":
            ...}`` from :func:`kdlib.features.attention_maps`. Each panel has its own colour
            scale (brighter = more activity there).
        data: the :class:`~kdlib.data.Dataset` the images come from (for un-normalising).
        labels: optional ``(N,)`` labels written at the left of each row.
        title: the figure's title.

    Returns:
        The matplotlib ``Figure``.
    """
    if not maps:
        raise ValueError("maps is empty: give at least one {title: (N, h, w) maps}")
    n = len(X)
    for name, m in maps.items():
        if m.ndim != 3 or len(m) != n:
            raise ValueError(f"maps[{name!r}] must have shape ({n}, h, w), got {tuple(m.shape)}")
    images = X.detach().cpu()
    images = data.unnormalize(images) if data is not None else images
    cols = 1 + len(maps)
    fig, axes = plt.subplots(n, cols, figsize=(1.5 * cols, 1.5 * n), squeeze=False)
    for i in range(n):
        axes[i, 0].imshow(images[i, 0].numpy(), cmap="gray_r")
        if labels is not None:
            axes[i, 0].set_ylabel(str(int(labels[i])), rotation=0, labelpad=10)
        for j, m in enumerate(maps.values(), start=1):
            axes[i, j].imshow(m[i].detach().cpu().numpy(), cmap="inferno")
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
    for j, name in enumerate(["input", *maps]):
        axes[0, j].set_title(name, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------
# Pruning (notebooks 07 and 08)
def pruning_panel(weight, mask, title: str | None = None, bins: int = 80, image_shape=None):
    """A layer under a mask: histogram of its weights (kept vs pruned) and where the mask keeps.

    The histogram's counts are on a log scale, so the few weights kept at high sparsity stay
    visible next to the many pruned ones. For a ``Linear`` layer that reads an image
    (``in_features`` = H·W, e.g. 784 = 28×28) the right panel is an H×W map of how many of
    the layer's units keep their connection to each input pixel; otherwise it is the mask
    itself, one row per unit.

    Args:
        weight: the unpruned weight, ``(out, in)`` or ``(out, in, kH, kW)``.
        mask: same shape, 1/True where a weight is kept.
        title: figure title.
        bins: histogram bins.
        image_shape: ``(H, W)`` of the inputs; default: a square ``in_features`` (28×28 for
            784), or none (the raw mask) if it is not a square or the weight is a conv's.

    Returns:
        The matplotlib ``Figure``.
    """
    w = weight.detach().float().cpu().flatten()
    m = mask.detach().cpu().flatten().bool()
    fig, (ax_h, ax_m) = plt.subplots(1, 2, figsize=(9, 3.4), width_ratios=(1.3, 1))
    edges = torch.linspace(float(w.min()), float(w.max()), bins + 1).numpy()
    ax_h.hist(w[~m].numpy(), bins=edges, color="lightgray", label="pruned")
    ax_h.hist(w[m].numpy(), bins=edges, color="tab:blue", label="kept")
    ax_h.set_yscale("log")
    ax_h.set_xlabel("weight value (trained, before pruning)")
    ax_h.set_ylabel("number of weights (log scale)")
    ax_h.legend(fontsize=8)
    units, n_in = mask.shape[0], mask[0].numel()
    if image_shape is None and mask.ndim == 2:
        side = round(n_in**0.5)
        image_shape = (side, side) if side > 1 and side * side == n_in else None
    kept = f"{int(m.sum()):,} of {m.numel():,} weights kept"
    if image_shape is not None:
        per_input = mask.detach().cpu().reshape(units, -1).float().sum(0)  # (in,)
        # the colour scale follows the data, so the pattern stays visible at high sparsity
        top = max(float(per_input.max()), 1.0)
        im = ax_m.imshow(per_input.reshape(image_shape).numpy(), cmap="viridis", vmin=0, vmax=top)
        fig.colorbar(im, ax=ax_m, label=f"units still connected (of {units})")
        ax_m.set_xticks([])
        ax_m.set_yticks([])
        ax_m.set_title(f"connections kept per input pixel\n({kept})", fontsize=9)
    else:
        image = mask.detach().cpu().reshape(units, -1).float().numpy()
        ax_m.imshow(image, cmap="gray_r", vmin=0, vmax=1, aspect="auto", interpolation="nearest")
        ax_m.set_xlabel("input")
        ax_m.set_ylabel("unit")
        ax_m.set_title(f"mask: {kept} (black)", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def sparsity_curves(
    curves: dict,
    baseline: float | None = None,
    ax=None,
    ylim=None,
    split: str = "test",
    errors: dict | None = None,
):
    """Accuracy against sparsity, one line per entry of ``curves``.

    Args:
        curves: ``{label: (sparsities, accuracies)}``, both in [0, 1].
        baseline: the dense model's accuracy, drawn as a dashed line.
        split: the data the accuracies were measured on, named on the y axis
            (``"test"``, ``"validation"``, ``"training"``).
        errors: ``{label: stds}`` for curves drawn with error bars (e.g. over seeds).

    Returns:
        The matplotlib ``Axes``.
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(5.5, 3.5))
    errors = errors or {}
    for label, (s, acc) in curves.items():
        xs, ys = [100 * v for v in s], [100 * a for a in acc]
        if label in errors:
            err = [100 * e for e in errors[label]]
            ax.errorbar(xs, ys, yerr=err, marker="o", ms=4, capsize=2, label=label)
        else:
            ax.plot(xs, ys, marker="o", ms=4, label=label)
    if baseline is not None:
        ax.axhline(100 * baseline, color="gray", ls="--", lw=1, label="dense")
    ax.set_xlabel("sparsity (% of weights pruned)")
    ax.set_ylabel(f"{split} accuracy (%)")
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return ax


def sensitivity_curves(sens, ax=None):
    """Accuracy with each layer pruned alone (a :class:`kdlib.prune.Sensitivity`).

    Returns:
        The matplotlib ``Axes``.
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(5.5, 3.5))
    for name, acc in sens.accuracy.items():
        label = f"{name} ({sens.sizes[name]:,} weights)"
        ax.plot([100 * a for a in sens.amounts], [100 * a for a in acc], marker="o", label=label)
    ax.axhline(100 * sens.baseline, color="gray", ls="--", lw=1, label="unpruned")
    ax.set_xlabel("share of the layer's weights pruned (%)")
    split = {"train": "training"}.get(sens.split, sens.split)
    ax.set_ylabel(f"{split} accuracy (%)")
    ax.set_title("sensitivity: each layer pruned alone", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return ax


def schedule_plot(schedule, t_max: float | None = None, ax=None):
    """Zhu & Gupta's sparsity schedule ``s_t`` (an :class:`kdlib.prune.AGPSchedule`),
    with its pruning steps marked.

    Returns:
        The matplotlib ``Axes``.
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(5.5, 3.2))
    times = schedule.times
    t_max = t_max if t_max is not None else times[-1] + 2 * schedule.dt
    t_min = min(0.0, times[0])
    grid = torch.linspace(t_min, t_max, 400).tolist()
    ax.plot(grid, [100 * schedule(t) for t in grid], color="tab:blue", label="$s_t$")
    ax.step(
        times,
        [100 * schedule(t) for t in times],
        where="post",
        color="tab:orange",
        marker="o",
        ms=4,
        label="sparsity after each pruning step",
    )
    ax.set_xlabel("t (pruning happens at $t_0 + k\\,\\Delta t$)")
    ax.set_ylabel("sparsity (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return ax


# --------------------------------------------------------------------------------------------
# Distillation (notebooks 02 to 05)
def softmax_bars(probs, classes, T: float | None = None, true_class=None, ax=None):
    """Class probabilities as bars (e.g. a teacher's softmax at temperature ``T``).

    Args:
        probs: ``(C,)`` probabilities.
        classes: ``C`` class names.
        T: shown in the title if given.
        true_class: index of the correct class, drawn in a different colour.

    Returns:
        The matplotlib ``Axes``.
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(5.5, 3.0))
    p = torch.as_tensor(probs).detach().cpu().flatten().tolist()
    colors = ["tab:green" if i == true_class else "tab:blue" for i in range(len(p))]
    ax.bar(range(len(p)), p, color=colors)
    ax.set_xticks(range(len(p)), [str(c) for c in classes])
    ax.set_ylim(0, 1)
    ax.set_xlabel("class")
    ax.set_ylabel("probability")
    if T is not None:
        ax.set_title(f"teacher's softmax at T = {T:g}", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    return ax


def lines(
    curves: dict,
    xlabel: str = "",
    ylabel: str = "",
    title: str | None = None,
    logx: bool = False,
    logy: bool = False,
    ax=None,
):
    """One line per entry of ``curves = {label: (x, y)}``.

    Returns:
        The matplotlib ``Axes``.
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(5.5, 3.2))
    for label, (x, y) in curves.items():
        ax.plot(list(x), list(y), marker="o", ms=3, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return ax


def history_curves(
    histories: dict,
    column: str = "test_acc",
    highlight=None,
    hline: float | None = None,
    hline_label: str = "",
    start: dict | None = None,
    percent: bool = True,
    logy: bool = False,
    ax=None,
):
    """A column of several :class:`kdlib.train.History` objects against the epoch.

    Args:
        histories: ``{label: history}``.
        column: the history column to draw (``"test_acc"``, ``"agreement"``, ...).
        highlight: the label drawn thick; the others are drawn thin and pale.
        hline: a reference value drawn as a dashed line (e.g. the scratch accuracy).
        start: ``{label: value}`` at epoch 0 (e.g. accuracy before training).
        percent: multiply values by 100.
        logy: logarithmic y axis.

    Returns:
        The matplotlib ``Axes``.
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(5.5, 3.2))
    scale = 100 if percent else 1
    for label, hist in histories.items():
        xs = [r["epoch"] for r in hist.rows if column in r]
        ys = [scale * r[column] for r in hist.rows if column in r]
        if start is not None and label in start:
            xs, ys = [0, *xs], [scale * start[label], *ys]
        strong = highlight is None or label == highlight
        ax.plot(
            xs, ys, marker="o", ms=3 if strong else 2, lw=2 if strong else 1,
            alpha=1.0 if strong else 0.35, label=str(label),
        )  # fmt: skip
    if hline is not None:
        ax.axhline(scale * hline, color="gray", ls="--", lw=1, label=hline_label or None)
    ax.set_xlabel("epoch")
    ax.set_ylabel(column + (" (%)" if percent else ""))
    if logy:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return ax


def grid_heatmap(
    values: dict,
    rows: list,
    cols: list,
    row_label: str,
    col_label: str,
    mark: tuple | None = None,
    title: str | None = None,
    ax=None,
):
    """A heat map of ``values[(row, col)]`` (shown in %), with one cell outlined.

    Returns:
        The matplotlib ``Axes``.
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(4.2, 3.2))
    grid = [[100 * values[(r, c)] for c in cols] for r in rows]
    im = ax.imshow(grid, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(cols)), [f"{c:g}" for c in cols])
    ax.set_yticks(range(len(rows)), [f"{r:g}" for r in rows])
    ax.set_xlabel(col_label)
    ax.set_ylabel(row_label)
    for i in range(len(rows)):
        for j in range(len(cols)):
            ax.text(j, i, f"{grid[i][j]:.1f}", ha="center", va="center", fontsize=8, color="w")
    if mark is not None:
        i, j = rows.index(mark[0]), cols.index(mark[1])
        ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="red", lw=2.5))
    ax.figure.colorbar(im, ax=ax, label="test accuracy (%)")
    if title:
        ax.set_title(title, fontsize=10)
    return ax


def pareto(
    rows: list[dict],
    x: str = "bytes",
    y: str = "accuracy",
    label: str = "method",
    yerr: str | None = None,
    percent: bool = True,
    logx: bool = True,
    title: str | None = None,
    ax=None,
):
    """Every row as a point of ``y`` against ``x``, with their Pareto front as a staircase.

    The front comes from :func:`kdlib.metrics.pareto_front` (smaller ``x``, higher ``y``):
    its points are drawn large with a black edge and joined by a step line, which reads as
    "the best ``y`` reachable with at most this ``x``". Each row has its own colour and
    marker and is named in the legend, since several rows often share one size.

    Args:
        rows: dicts with keys ``label``, ``x`` and ``y`` (and ``yerr`` if given).
        x: the size to minimise, e.g. ``"bytes"`` or ``"parameters"``.
        y: the quality to maximise, e.g. ``"accuracy"`` in [0, 1].
        label: the key naming each row in the legend.
        yerr: a key holding the error bar half-height (e.g. a standard deviation over
            seeds), or ``None`` for none.
        percent: multiply ``y`` (and ``yerr``) by 100 for display.
        logx: logarithmic ``x`` axis (sizes differ by orders of magnitude).
        title: the axes' title.

    Returns:
        The matplotlib ``Axes``.
    """
    from ..metrics import pareto_front

    front = pareto_front(rows, x, y)
    on_front = {id(r) for r in front}
    if ax is None:
        _, ax = plt.subplots(figsize=(7.5, 4))
    scale = 100 if percent else 1
    markers = "osD^vP*Xhp<>"
    colours = plt.get_cmap("tab10").colors
    for i, r in enumerate(rows):
        best = id(r) in on_front
        ax.errorbar(
            r[x], scale * r[y], yerr=None if yerr is None else scale * r[yerr],
            marker=markers[i % len(markers)], color=colours[i % len(colours)],
            ms=9 if best else 6, mec="black" if best else "none", capsize=2, ls="none",
            label=str(r[label]) + ("  (front)" if best else ""),
            zorder=2 if best else 3,  # small points stay visible over large ones
        )  # fmt: skip
    ax.step(
        [r[x] for r in front], [scale * r[y] for r in front],
        where="post", color="black", lw=1, alpha=0.6, zorder=0, label="Pareto front",
    )  # fmt: skip
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(x + (" (log scale)" if logx else ""))
    ax.set_ylabel(y + (" (%)" if percent else ""))
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.figure.tight_layout()
    return ax


def quant_errors(errors: dict, accuracy: dict | None = None, bins: int = 60, title=None, ax=None):
    """Histograms of quantization errors ``x̂ − x``, one per setting, on one log-count axis.

    Args:
        errors: ``{label: tensor of errors}`` (every quantized weight of a model, flattened).
        accuracy: ``{label: test accuracy}`` to print in the legend, or ``None``.
        bins: histogram bins, shared by all settings.
        title: the axes' title.

    Returns:
        The matplotlib ``Axes``.
    """
    if not errors:
        raise ValueError("errors is empty: pass {label: tensor of errors}")
    if ax is None:
        _, ax = plt.subplots(figsize=(7.5, 3.4))
    flat = {k: v.detach().float().cpu().flatten() for k, v in errors.items()}
    top = max(float(v.abs().max()) for v in flat.values()) or 1.0
    edges = torch.linspace(-top, top, bins + 1).numpy()
    for label, e in flat.items():
        rms = float(e.pow(2).mean().sqrt())
        text = f"{label}: rms {rms:.2g}"
        if accuracy is not None and label in accuracy:
            text += f", accuracy {accuracy[label]:.1%}"
        ax.hist(e.numpy(), bins=edges, histtype="step", lw=1.5, label=text)
    ax.set_yscale("log")
    ax.set_xlabel("quantization error of a weight, x̂ − x")
    ax.set_ylabel("number of weights (log)")
    if title:
        ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    ax.figure.tight_layout()
    return ax
