"""The results command's prune section, on a short budget: its numbers against hand counts."""

import copy

import pytest
import torch

import kdlib
from kdlib.course import results


@pytest.fixture(scope="module")
def data():
    return kdlib.load("mnist-5k").subset(512, 256)


def test_magnitude_rows_count_what_they_report(data):
    dense = kdlib.model("lenet-300-100", seed=0)
    kdlib.fit(dense, data, epochs=1, seed=0, progress=False)
    before = copy.deepcopy(dense.state_dict())
    quick = dict(steps=2, finetune_epochs=1, lr_scale=0.3)
    rows = results.magnitude_rows(dense, data, sparsities=(0.5, 0.9), iterative=quick)
    assert all(torch.equal(v, dense.state_dict()[k]) for k, v in before.items())
    weights, biases = 784 * 300 + 300 * 100 + 100 * 10, 300 + 100 + 10
    for r, s in zip(rows, (0.5, 0.9), strict=True):
        kept = weights - round(s * weights)
        assert r["params_kept"] == kept + biases  # biases are not pruned
        assert r["dense_bytes"] == 4 * (weights + biases)
        # CSR per matrix: 4-byte value + 4-byte column index per nonzero, rows + 1 pointers
        assert r["csr_bytes"] == 8 * kept + 4 * (301 + 101 + 11) + 4 * biases
        oneshot = kdlib.prune_to_sparsity(copy.deepcopy(dense), s)
        assert r["acc_oneshot"] == kdlib.evaluate(oneshot, data)["accuracy"]
        assert 0 <= r["acc_finetuned"] <= 1


def test_shrink_rows_report_sizes_macs_and_ratios(data):
    dense = kdlib.model("hinton-student", seed=0)
    rows, seconds = results.shrink_rows(dense, data, (0.5,), finetune_epochs=1, rounds=1)
    by_name = {r["model"]: r for r in rows}
    assert list(by_name) == ["dense", "masked 50%", "shrunk 50%"]
    assert by_name["dense"]["ratio"] == 1.0
    assert by_name["shrunk 50%"]["macs"] == 784 * 400 + 400 * 400 + 400 * 10
    assert by_name["masked 50%"]["macs"] == by_name["dense"]["macs"]  # zeros still multiplied
    assert by_name["shrunk 50%"]["params"] == 784 * 400 + 400 + 400 * 400 + 400 + 4010
    # masked: nonzero parameters only. Half of fc1's and fc2's rows and biases are zero;
    # the columns that read the removed units are still there, in fc2 and fc3.
    nonzero = 784 * 400 + 400 + 400 * 800 + 400 + 10 * 800 + 10
    assert by_name["masked 50%"]["params"] == nonzero
    assert set(seconds) == set(by_name) and all(t > 0 for t in seconds.values())
