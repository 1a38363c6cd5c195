"""kdlib.metrics against hand-computed values and PyTorch built-ins."""

import pytest
import torch
import torch.nn.functional as F
import torch.nn.utils.prune as torch_prune
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import kdlib


def test_accuracy_agreement_by_hand():
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 1, 1, 1])
    assert kdlib.accuracy(logits, y) == 0.75
    other = torch.tensor([[0.0, 1.0], [0.0, 3.0], [1.0, 0.0], [2.0, 1.0]])
    assert kdlib.agreement(logits, other) == 0.5


def test_accuracy_on_model():
    net = nn.Linear(3, 2)
    X, y = torch.randn(10, 3), torch.randint(0, 2, (10,))
    expected = (net(X).argmax(1) == y).float().mean().item()
    assert kdlib.accuracy(net, X, y) == pytest.approx(expected)


def test_mean_kl_equals_builtin():
    s, t = torch.randn(6, 5), torch.randn(6, 5)
    for T in (1.0, 4.0):
        p_t = F.softmax(t / T, 1)
        expected = (p_t * (p_t.log() - F.log_softmax(s / T, 1))).sum(1).mean()
        assert kdlib.mean_kl(s, t, T=T) == pytest.approx(expected.item(), rel=1e-5)
    assert kdlib.mean_kl(t, t) == pytest.approx(0, abs=1e-7)
    with pytest.raises(ValueError, match="T must be a number > 0"):
        kdlib.mean_kl(s, t, T=0)
    with pytest.raises(ValueError, match="differ in shape"):
        kdlib.agreement(s, t[:, :4])


def test_count_params_and_size_dense():
    net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    assert kdlib.count_params(net) == 4 * 3 + 3 + 3 * 2 + 2
    assert kdlib.size_bytes(net) == 4 * (4 * 3 + 3 + 3 * 2 + 2)


def test_pruned_model_is_measured_on_effective_weights():
    lin = nn.Linear(10, 4)
    torch_prune.l1_unstructured(lin, "weight", amount=30)
    net = nn.Sequential(lin)
    assert kdlib.count_params(net) == 44  # not 84: weight_orig and weight_mask are bookkeeping
    assert kdlib.count_params(net, nonzero=True) == 44 - 30
    # CSR: 10 nonzeros · (4 value + 4 index) bytes + (4 rows + 1) · 4 pointer bytes; bias dense.
    assert kdlib.size_bytes(net, sparse=True) == 10 * 8 + 5 * 4 + 4 * 4


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
def test_csr_size_matches_torch_csr():
    w = torch.randn(6, 8)
    w[w.abs() < 0.8] = 0
    lin = nn.Linear(8, 6, bias=False)
    lin.weight.data = w
    csr = w.to_sparse_csr()
    expected = (
        csr.values().numel() * 4 + csr.col_indices().numel() * 4 + csr.crow_indices().numel() * 4
    )
    assert kdlib.size_bytes(nn.Sequential(lin), sparse=True) == expected


def test_macs_by_hand():
    net = kdlib.mlp(784, [300, 100], 10)
    assert kdlib.macs(net) == 784 * 300 + 300 * 100 + 100 * 10
    conv = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1))
    assert kdlib.macs(conv, (1, 8, 8)) == 8 * 8 * 4 * 9


def test_macs_and_latency_read_the_input_shape_from_the_model():
    from kdlib.metrics import input_shape_of

    # A CNN records its input shape: CIFAR presets need no input_shape argument.
    cifar = kdlib.model("cifar-student")
    assert input_shape_of(cifar) == (3, 32, 32)
    assert kdlib.macs(cifar) == kdlib.macs(cifar, (3, 32, 32)) > 0
    assert kdlib.latency(cifar, batch_size=2, min_run_time=0.01) > 0
    # A shrunk copy keeps it.
    assert input_shape_of(kdlib.prune.shrink(kdlib.model("cnn-thin"))) == (1, 28, 28)
    # An MLP takes its first layer's in_features (its Flatten accepts that shape too).
    assert input_shape_of(kdlib.model("tiny")) == (784,)
    # A convolution built by hand does not say its height and width: a clear error.
    with pytest.raises(ValueError, match=r"input shape of this Sequential.*input_shape="):
        kdlib.macs(nn.Sequential(nn.Conv2d(3, 4, 3)))


def test_latency_is_positive_and_restores_mode():
    net = kdlib.model("tiny").train()
    t = kdlib.latency(net, batch_size=8, min_run_time=0.01)
    assert t > 0 and net.training


def _dominated_brute_force(rows, x, y):
    """The definition, pair by pair: indices of rows some other row dominates."""
    return {
        i
        for i, a in enumerate(rows)
        for b in rows
        if b[x] <= a[x] and b[y] >= a[y] and (b[x] < a[x] or b[y] > a[y])
    }


def test_pareto_front_by_hand():
    rows = [
        {"name": "teacher", "bytes": 400, "acc": 0.98},
        {"name": "scratch", "bytes": 30, "acc": 0.90},
        {"name": "kd", "bytes": 30, "acc": 0.93},  # same size as scratch, more accurate
        {"name": "big mlp", "bytes": 5000, "acc": 0.97},  # larger and worse than the teacher
        {"name": "pruned", "bytes": 45, "acc": 0.93},  # larger than kd, no better: dominated
        {"name": "pruned+kd", "bytes": 45, "acc": 0.95},
    ]
    front = kdlib.pareto_front(rows, "bytes", "acc")
    assert [r["name"] for r in front] == ["kd", "pruned+kd", "teacher"]
    assert front[0] is rows[2]  # the rows themselves, sorted by size
    assert kdlib.pareto_front([], "bytes", "acc") == []


def test_pareto_front_keeps_ties_and_drops_equal_but_larger():
    rows = [{"x": 1, "y": 0.5}, {"x": 1, "y": 0.5}, {"x": 2, "y": 0.5}]
    front = kdlib.pareto_front(rows, "x", "y")
    assert front == rows[:2] and front[0] is rows[0] and front[1] is rows[1]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 6)), max_size=12))
def test_pareto_front_matches_the_definition(points):
    rows = [{"x": px, "y": py, "i": i} for i, (px, py) in enumerate(points)]
    front = kdlib.pareto_front(rows, "x", "y")
    expected = [i for i in range(len(rows)) if i not in _dominated_brute_force(rows, "x", "y")]
    assert sorted(r["i"] for r in front) == expected
    assert [r["x"] for r in front] == sorted(r["x"] for r in front)
    # along the front, more size always buys strictly more accuracy
    pairs = zip(front[:-1], front[1:], strict=True)
    assert all(a["y"] < b["y"] for a, b in pairs if a["x"] < b["x"])


def test_pareto_front_bad_input():
    with pytest.raises(ValueError, match=r"rows\[1\] has no key 'acc'"):
        kdlib.pareto_front([{"bytes": 1, "acc": 0.5}, {"bytes": 2}], "bytes", "acc")
    with pytest.raises(ValueError, match=r"rows\[0\]\['acc'\] must be a (finite )?number"):
        kdlib.pareto_front([{"bytes": 1, "acc": float("nan")}], "bytes", "acc")
    with pytest.raises(ValueError, match="must be a number, got '3'"):
        kdlib.pareto_front([{"bytes": "3", "acc": 0.5}], "bytes", "acc")
    with pytest.raises(TypeError, match="rows\\[0\\] must be a mapping"):
        kdlib.pareto_front([(1, 0.5)], "bytes", "acc")
    with pytest.raises(TypeError, match="x must be a key"):
        kdlib.pareto_front([{"bytes": 1, "acc": 0.5}], 0, "acc")
