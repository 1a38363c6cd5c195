"""Structured pruning of a residual network with Torch-Pruning (notebook 08, section 6).

kdlib's own ``shrink`` follows ``nn.Sequential`` chains only and refuses a residual network,
naming Torch-Pruning; the course prunes such a network with Torch-Pruning's
``DependencyGraph``. These tests hold what the notebook claims: channels coupled by a
residual add are pruned together, and the shrunk network has fewer parameters and MACs and
computes exactly what the dense network computes once the same channels are zeroed (their
conv filters and BatchNorm scale and shift).
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import kdlib

tp = pytest.importorskip("torch_pruning")


class Block(nn.Module):
    """Two 3×3 convolutions with BatchNorm, and the input added back: relu(x + f(x))."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(x + self.bn2(self.conv2(out)))


class ResNet(nn.Module):
    """The notebook's small residual CNN: a strided stem, two blocks, pooling, a classifier."""

    def __init__(self, channels: int = 16):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, channels, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
        )
        self.block1, self.block2 = Block(channels), Block(channels)
        self.head = nn.Linear(channels * 7 * 7, 10)

    def forward(self, x):
        x = self.block2(self.block1(self.stem(x)))
        return self.head(F.avg_pool2d(x, 2).flatten(1))  # 14x14 -> 7x7


def _trained_like(seed: int = 0) -> ResNet:
    """A ResNet with random, non-trivial BatchNorm parameters and statistics (eval mode)."""
    torch.manual_seed(seed)
    net = ResNet()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.1)
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return net.eval()


def _names(model: nn.Module, group) -> set[tuple[str, str]]:
    """(layer, what is pruned) for the real layers of a pruning group (not traced ops)."""
    names = {m: n for n, m in model.named_modules()}
    return {
        (names[item.dep.target.module], item.dep.handler.__name__)
        for item in group
        if item.dep.target.module in names
    }


def _prune_and_zero(net: nn.Module, amount: float):
    """Prune every conv group by L1 norm with Torch-Pruning; zero the same channels in a copy.

    Returns ``(shrunk, zeroed)``: ``net`` pruned in place, and a dense copy of the original in
    which every removed channel's conv filter and BatchNorm scale and shift are zero.
    """
    zeroed = copy.deepcopy(net)
    example = torch.randn(1, 1, 28, 28)
    graph = tp.DependencyGraph().build_dependency(net, example_inputs=example)
    plan = []  # (root conv, channel indices), chosen on the dense weights
    for group in graph.get_all_groups(ignored_layers=[net.head], root_module_types=[nn.Conv2d]):
        root = group[0].dep.target.module
        score = tp.importance.GroupMagnitudeImportance(p=1)(group)
        idxs = score.argsort()[: int(amount * len(score))].tolist()
        plan.append((root, idxs))
    names = {m: n for n, m in net.named_modules()}
    for root, idxs in plan:
        group = graph.get_pruning_group(root, tp.prune_conv_out_channels, idxs=idxs)
        for item in group:
            m = item.dep.target.module
            if m in names and item.dep.handler.__name__ == "prune_out_channels":
                twin = zeroed.get_submodule(names[m])
                with torch.no_grad():
                    twin.weight[item.idxs] = 0
                    if twin.bias is not None:
                        twin.bias[item.idxs] = 0
        group.prune()
    return net, zeroed


def test_kdlib_shrink_refuses_a_residual_network_and_names_torch_pruning():
    net = _trained_like()
    with pytest.raises(ValueError, match="Torch-Pruning"):
        kdlib.shrink(net)


def test_channels_joined_by_a_residual_add_are_one_group():
    net = _trained_like()
    graph = tp.DependencyGraph().build_dependency(net, example_inputs=torch.randn(1, 1, 28, 28))
    group = graph.get_pruning_group(net.block1.conv2, tp.prune_conv_out_channels, idxs=[0])
    coupled = _names(net, group)
    # every layer that writes the residual stream loses the channel, every reader its input
    for writer in ("stem.0", "stem.1", "block1.conv2", "block1.bn2", "block2.conv2", "block2.bn2"):
        assert (writer, "prune_out_channels") in coupled
    for reader in ("block1.conv1", "block2.conv1", "head"):
        assert (reader, "prune_in_channels") in coupled
    # a channel inside a block (not added to anything) is its own small group
    inner = graph.get_pruning_group(net.block1.conv1, tp.prune_conv_out_channels, idxs=[0])
    assert _names(net, inner) == {
        ("block1.conv1", "prune_out_channels"),
        ("block1.bn1", "prune_out_channels"),
        ("block1.conv2", "prune_in_channels"),
    }


def test_shrunk_equals_dense_with_the_same_channels_zeroed():
    dense = _trained_like()
    shrunk, zeroed = _prune_and_zero(copy.deepcopy(dense), 0.5)
    assert kdlib.count_params(shrunk) < kdlib.count_params(dense)
    assert kdlib.macs(shrunk, (1, 28, 28)) < kdlib.macs(dense, (1, 28, 28))
    assert shrunk.stem[0].out_channels == shrunk.block1.conv1.out_channels == 8
    x = torch.randn(64, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(shrunk(x), zeroed(x), rtol=1e-4, atol=1e-5)
        # and the zeroing did change the network: it is not the dense one
        assert not torch.allclose(zeroed(x), dense(x), atol=1e-3)


def test_zeroing_the_conv_alone_is_not_enough_batchnorm_shift_leaks():
    dense = _trained_like()
    shrunk, zeroed = _prune_and_zero(copy.deepcopy(dense), 0.5)
    leaky = copy.deepcopy(zeroed)
    with torch.no_grad():  # restore the BatchNorm shifts: removed channels output a constant
        for name, m in dense.named_modules():
            if isinstance(m, nn.BatchNorm2d):
                leaky.get_submodule(name).bias.copy_(m.bias)
    x = torch.randn(16, 1, 28, 28)
    with torch.no_grad():
        assert not torch.allclose(shrunk(x), leaky(x), atol=1e-3)
