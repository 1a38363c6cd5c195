"""The benchmarks run and report what they claim to compare (no assertion on time)."""

import pytest

from benchmarks import __main__ as bench
from benchmarks import prune_latency


def test_prune_latency_times_every_model_against_dense(capsys):
    ratios = prune_latency.main(preset="tiny", batch_size=8, rounds=1)
    out = capsys.readouterr().out
    for threads in ratios.values():
        assert set(threads) == {
            "dense",
            "masked 50% units",
            "masked 90% weights",
            "zeroed 50% units",
            "shrunk 50% units",
            "shrunk 75% units",
        }
        assert threads["dense"] == pytest.approx(1.0)
        assert all(r > 0 for r in threads.values())
    # MACs: masks and zeros keep every multiply, shrinking half the units of both
    # hidden layers removes them
    assert "masked 50% units" in out and "shrunk 50% / dense" in out


def test_unknown_benchmark_names_the_known_ones(capsys):
    assert bench.main(["nope"]) == 2
    out = capsys.readouterr().out
    assert "nope" in out and "prune-latency" in out and "kd-cache" in out
