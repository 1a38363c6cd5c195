"""Feature losses of kdlib.losses (FitNets hint, attention transfer, cosine) against references.

The logit losses have their own file, tests/test_losses.py; these are the feature section's.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from kdlib.features import projector
from kdlib.losses import (
    CosineFeatureLoss,
    HintLoss,
    attention_map,
    attention_transfer_loss,
    cosine_feature_loss,
    hint_loss,
)

scales = st.floats(min_value=1e-3, max_value=1e3, allow_nan=False)


# ---------------------------------------------------------------------------- attention map
def test_attention_map_of_a_known_tensor_equals_the_hand_computed_value():
    # 2 channels, 2×2 map: channel 0 = [[1, 2], [0, 0]], channel 1 = [[3, 0], [0, 4]]
    f = torch.tensor([[[[1.0, 2.0], [0.0, 0.0]], [[3.0, 0.0], [0.0, 4.0]]]])
    # mean over channels of the squares: [[(1+9)/2, (4+0)/2], [0, (0+16)/2]] = [5, 2, 0, 8]
    v = torch.tensor([5.0, 2.0, 0.0, 8.0])
    expected = v / math.sqrt(25 + 4 + 0 + 64)
    torch.testing.assert_close(attention_map(f), expected.unsqueeze(0))


def test_attention_map_with_power_p_uses_absolute_values():
    f = torch.tensor([[[[-1.0, 2.0]]]])  # (1, 1, 1, 2)
    expected = torch.tensor([[1.0, 8.0]]) / math.sqrt(65)
    torch.testing.assert_close(attention_map(f, p=3), expected)


@settings(max_examples=25, deadline=None)
@given(c_s=st.integers(1, 6), c_t=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_attention_maps_have_unit_length_and_the_loss_stays_in_0_4(c_s, c_t, seed):
    g = torch.Generator().manual_seed(seed)
    f_s, f_t = torch.randn(3, c_s, 4, 5, generator=g), torch.randn(3, c_t, 4, 5, generator=g)
    torch.testing.assert_close(attention_map(f_s).norm(dim=1), torch.ones(3))
    per = attention_transfer_loss(f_s, f_t, reduction="none")
    assert per.shape == (3,)
    assert bool((per >= 0).all()) and bool((per <= 4 + 1e-6).all())


def test_attention_transfer_loss_is_the_squared_distance_of_the_maps():
    g = torch.Generator().manual_seed(0)
    f_s, f_t = torch.randn(4, 8, 7, 7, generator=g), torch.randn(4, 32, 7, 7, generator=g)
    a_s = F.normalize(f_s.pow(2).mean(1).view(4, -1), dim=1)
    a_t = F.normalize(f_t.pow(2).mean(1).view(4, -1), dim=1)
    per = ((a_s - a_t) ** 2).sum(1)
    torch.testing.assert_close(attention_transfer_loss(f_s, f_t, reduction="none"), per)
    torch.testing.assert_close(attention_transfer_loss(f_s, f_t), per.mean())
    torch.testing.assert_close(attention_transfer_loss(f_s, f_t, reduction="sum"), per.sum())


@settings(max_examples=25, deadline=None)
@given(scale=scales, seed=st.integers(0, 2**16))
def test_attention_transfer_ignores_the_scale_of_a_feature(scale, seed):
    f = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(seed))
    assert float(attention_transfer_loss(scale * f, f)) == pytest.approx(0, abs=1e-6)


def test_attention_transfer_on_vectors_is_refused():
    with pytest.raises(ValueError, match=r"needs feature maps \(N, C, H, W\).*vector"):
        attention_transfer_loss(torch.randn(2, 16), torch.randn(2, 16))
    with pytest.raises(ValueError, match="attention transfer needs feature maps"):
        attention_map(torch.randn(2, 16))


def test_attention_transfer_needs_the_same_spatial_size():
    with pytest.raises(ValueError, match=r"same height and width.*\(14, 14\).*\(7, 7\)"):
        attention_transfer_loss(torch.randn(2, 4, 14, 14), torch.randn(2, 8, 7, 7))


# ---------------------------------------------------------------------------- hint loss
def test_hint_loss_equals_mse_after_the_regressor():
    torch.manual_seed(0)
    f_s, f_t = torch.randn(5, 8, 7, 7), torch.randn(5, 32, 7, 7)
    r = projector(f_s.shape, f_t.shape)
    torch.testing.assert_close(hint_loss(f_s, f_t, r), F.mse_loss(r(f_s), f_t))
    torch.testing.assert_close(HintLoss(r)(f_s, f_t), nn.MSELoss()(r(f_s), f_t))
    per = ((r(f_s) - f_t) ** 2).flatten(1).mean(1)
    torch.testing.assert_close(hint_loss(f_s, f_t, r, reduction="none"), per)


def test_hint_loss_is_the_papers_half_squared_norm_up_to_a_constant():
    f_s, f_t = torch.randn(3, 10), torch.randn(3, 10)
    paper = 0.5 * ((f_t - f_s) ** 2).sum(1)  # ½‖u_t − r(v_s)‖² per example, r = identity
    torch.testing.assert_close(hint_loss(f_s, f_t, reduction="none"), paper / (10 / 2))


def test_hint_loss_trains_the_regressor():
    r = nn.Linear(4, 6)
    hint_loss(torch.randn(3, 4), torch.randn(3, 6), r).backward()
    assert r.weight.grad is not None and r.weight.grad.abs().sum() > 0
    assert [p is r.weight for p in HintLoss(r).parameters()].count(True) == 1


def test_hint_loss_with_mismatched_shapes_points_to_the_projector():
    with pytest.raises(ValueError, match=r"shape \(2, 8, 7, 7\).*\(2, 32, 7, 7\).*projector"):
        hint_loss(torch.randn(2, 8, 7, 7), torch.randn(2, 32, 7, 7))


def test_feature_losses_refuse_different_batch_sizes_and_non_finite_features():
    with pytest.raises(ValueError, match="different batch sizes: 2 vs 3"):
        hint_loss(torch.randn(2, 4), torch.randn(3, 4))
    with pytest.raises(ValueError, match="f_t contains NaN or inf"):
        cosine_feature_loss(torch.randn(2, 4), torch.tensor([[1.0, math.nan, 0, 0]] * 2))
    with pytest.raises(TypeError, match="f_s must be a torch.Tensor"):
        hint_loss([1.0, 2.0], torch.randn(1, 2))


# ---------------------------------------------------------------------------- cosine loss
@settings(max_examples=25, deadline=None)
@given(scale=scales, seed=st.integers(0, 2**16))
def test_cosine_loss_is_0_for_parallel_and_2_for_opposite_features(scale, seed):
    f = torch.randn(4, 3, 5, 5, generator=torch.Generator().manual_seed(seed))
    zero, two = torch.zeros(4), torch.full((4,), 2.0)
    torch.testing.assert_close(cosine_feature_loss(scale * f, f, reduction="none"), zero)
    torch.testing.assert_close(cosine_feature_loss(-scale * f, f, reduction="none"), two)


def test_cosine_loss_is_1_for_orthogonal_features_and_matches_the_builtin():
    a, b = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 5.0]])
    assert float(cosine_feature_loss(a, b)) == pytest.approx(1.0)
    f_s, f_t = torch.randn(6, 16), torch.randn(6, 32)
    r = projector(f_s.shape, f_t.shape)
    expected = (1 - F.cosine_similarity(r(f_s), f_t)).mean()
    torch.testing.assert_close(cosine_feature_loss(f_s, f_t, r), expected)
    torch.testing.assert_close(CosineFeatureLoss(r)(f_s, f_t), expected)


def test_feature_losses_refuse_an_unknown_reduction():
    with pytest.raises(ValueError, match="reduction must be one of"):
        cosine_feature_loss(torch.randn(2, 3), torch.randn(2, 3), reduction="batchmean")
