"""kdlib.course.viz: what the plots draw, read back from the matplotlib objects."""

import matplotlib.pyplot as plt

import kdlib


def test_pareto_draws_every_row_and_the_front_as_a_staircase():
    rows = [
        {"name": "teacher", "bytes": 400_000, "acc": 0.98, "std": 0.0},
        {"name": "scratch", "bytes": 27_000, "acc": 0.91, "std": 0.01},
        {"name": "pruned + KD", "bytes": 27_000, "acc": 0.966, "std": 0.002},
        {"name": "wide MLP", "bytes": 5_000_000, "acc": 0.97, "std": 0.003},
    ]
    ax = kdlib.course.viz.pareto(rows, "bytes", "acc", label="name", yerr="std")
    front = kdlib.pareto_front(rows, "bytes", "acc")
    (step,) = [line for line in ax.lines if line.get_label() == "Pareto front"]
    assert list(step.get_xdata()) == [r["bytes"] for r in front] == [27_000, 400_000]
    assert list(step.get_ydata()) == [100 * r["acc"] for r in front]
    assert step.get_drawstyle() == "steps-post"
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    rows_in_legend = ["teacher  (front)", "scratch", "pruned + KD  (front)", "wide MLP"]
    assert sorted(labels) == sorted(["Pareto front", *rows_in_legend])
    assert len(ax.containers) == len(rows)  # one error bar per row
    assert ax.get_xscale() == "log" and ax.get_ylabel() == "acc (%)"
    plt.close(ax.figure)


def test_pareto_rejects_rows_without_the_keys():
    import pytest

    with pytest.raises(ValueError, match=r"rows\[0\] has no key 'bytes'"):
        kdlib.course.viz.pareto([{"method": "a", "accuracy": 0.9}])
