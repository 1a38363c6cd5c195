"""kdlib.losses (logit losses): against PyTorch built-ins, hand-written formulas and properties."""

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from kdlib import losses as L


def _logits(n=6, c=10, seed=0, scale=3.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, generator=g, dtype=dtype) * scale


@pytest.fixture
def pair():
    return _logits(seed=1), _logits(seed=2)


# --------------------------------------------------------------------------------------------
# Reference checks
@pytest.mark.parametrize("T", [0.5, 1.0, 2.0, 4.0, 10.0])
def test_soft_kl_equals_hand_written_sum(pair, T):
    s, t = pair
    p_t = torch.softmax(t / T, 1)
    hand = (p_t * (torch.log(p_t) - torch.log(torch.softmax(s / T, 1)))).sum() * T**2 / len(s)
    torch.testing.assert_close(L.soft_target_kl(s, t, T), hand)


@pytest.mark.parametrize("T", [0.5, 1.0, 3.0, 8.0])
def test_soft_kl_equals_torch_kl_div_batchmean(pair, T):
    s, t = pair
    ref = F.kl_div(
        F.log_softmax(s / T, 1), F.log_softmax(t / T, 1), reduction="batchmean", log_target=True
    )
    torch.testing.assert_close(L.soft_target_kl(s, t, T), ref * T**2)


@pytest.mark.parametrize("T", [1.0, 2.0, 4.0, 8.0, 16.0])
def test_soft_kl_gradient_is_T_times_prob_difference(pair, T):
    s, t = pair
    s = s.clone().requires_grad_(True)
    L.soft_target_kl(s, t, T).backward()
    p_s, p_t = torch.softmax(s.detach() / T, 1), torch.softmax(t / T, 1)
    torch.testing.assert_close(s.grad, T * (p_s - p_t) / len(s))
    # Without the T² factor the same gradient would shrink like 1/T: that is what T² undoes.
    s2 = s.detach().clone().requires_grad_(True)
    (L.soft_target_kl(s2, t, T) / T**2).backward()
    torch.testing.assert_close(s2.grad, (p_s - p_t) / (T * len(s)))


@pytest.mark.parametrize("T", [1.0, 2.5, 6.0])
def test_ce_variant_minus_kl_is_teacher_entropy(pair, T):
    s, t = pair
    p_t = torch.softmax(t / T, 1)
    entropy = -(p_t * torch.log(p_t)).sum(1)
    diff = L.soft_target_ce(s, t, T, reduction="none") - L.soft_target_kl(
        s, t, T, reduction="none"
    )
    torch.testing.assert_close(diff, entropy * T**2)


def test_ce_variant_equals_torch_cross_entropy_with_probabilities(pair):
    s, t = pair
    T = 3.0
    ref = F.cross_entropy(s / T, torch.softmax(t / T, 1)) * T**2
    torch.testing.assert_close(L.soft_target_ce(s, t, T), ref)


def test_ce_and_kl_variants_have_the_same_gradient(pair):
    s, t = pair
    grads = []
    for fn in (L.soft_target_kl, L.soft_target_ce):
        x = s.clone().requires_grad_(True)
        fn(x, t, 4.0).backward()
        grads.append(x.grad)
    torch.testing.assert_close(grads[0], grads[1])


def test_mse_logits_equals_torch_mse_loss(pair):
    s, t = pair
    torch.testing.assert_close(L.mse_logits(s, t), F.mse_loss(s, t))
    torch.testing.assert_close(L.mse_logits(s, t, "sum"), F.mse_loss(s, t) * len(s))


def test_mse_logits_sees_a_shift_that_softmax_ignores(pair):
    s, _ = pair
    assert float(L.mse_logits(s + 2.0, s)) == pytest.approx(4.0)
    assert float(L.soft_target_kl(s + 2.0, s, 1.0)) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.9, 1.0])
@pytest.mark.parametrize("soft", ["kl", "ce"])
def test_kd_loss_is_the_weighted_sum(pair, alpha, soft):
    s, t = pair
    y = torch.arange(len(s)) % s.shape[1]
    T = 4.0
    soft_ref = F.kl_div(
        F.log_softmax(s / T, 1), F.log_softmax(t / T, 1), reduction="batchmean", log_target=True
    )
    if soft == "ce":
        soft_ref = F.cross_entropy(s / T, torch.softmax(t / T, 1))
    ref = alpha * soft_ref * T**2 + (1 - alpha) * F.cross_entropy(s, y)
    torch.testing.assert_close(L.kd_loss(s, t, y, T, alpha, soft=soft), ref)


@pytest.mark.parametrize("lam", [0.0, 0.1, 2.0])
def test_mse_kd_loss_is_labels_plus_lambda_match(pair, lam):
    s, t = pair
    y = torch.arange(len(s)) % s.shape[1]
    ref = F.cross_entropy(s, y) + lam * F.mse_loss(s, t)
    torch.testing.assert_close(L.mse_kd_loss(s, t, y, lam), ref)


@pytest.mark.parametrize(
    "fn, extra",
    [
        (L.mse_logits, ()),
        (L.soft_target_kl, (2.0,)),
        (L.soft_target_ce, (2.0,)),
    ],
)
def test_reduction_none_returns_per_sample_losses(pair, fn, extra):
    s, t = pair
    per = fn(s, t, *extra, reduction="none")
    assert per.shape == (len(s),)
    torch.testing.assert_close(per.sum(), fn(s, t, *extra, reduction="sum"))
    torch.testing.assert_close(per.mean(), fn(s, t, *extra))
    # Row n's loss depends on row n only.
    torch.testing.assert_close(per[2], fn(s[2:3], t[2:3], *extra, reduction="none")[0])


def test_reduction_none_for_combined_losses(pair):
    s, t = pair
    y = torch.arange(len(s)) % s.shape[1]
    for fn in (lambda **k: L.kd_loss(s, t, y, **k), lambda **k: L.mse_kd_loss(s, t, y, **k)):
        per = fn(reduction="none")
        assert per.shape == (len(s),)
        torch.testing.assert_close(per.mean(), fn())
        torch.testing.assert_close(per.sum(), fn(reduction="sum"))


def test_stateless_loss_modules_are_gone():
    # a loss module exists only where it holds state (a regressor)
    for name in ("MSELogitLoss", "SoftTargetKLLoss", "SoftTargetCELoss", "KDLoss", "MSEKDLoss"):
        assert not hasattr(L, name)


# --------------------------------------------------------------------------------------------
# Hypothesis properties
def _logit_arrays(max_abs=1e4):
    shapes = st.tuples(st.integers(1, 6), st.integers(2, 8))
    return shapes.flatmap(
        lambda shape: hnp.arrays(
            np.float64, shape, elements=st.floats(-max_abs, max_abs, allow_nan=False)
        )
    )


temperatures = st.floats(0.05, 50.0)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), T=temperatures)
def test_kl_is_nonnegative(data, T):
    s = data.draw(_logit_arrays())
    t = data.draw(hnp.arrays(np.float64, s.shape, elements=st.floats(-1e4, 1e4)))
    per = L.soft_target_kl(torch.tensor(s), torch.tensor(t), T, reduction="none")
    assert bool((per >= -1e-9 * T**2 * (1 + np.abs(t).max() / T)).all())


@settings(max_examples=60, deadline=None)
@given(s=_logit_arrays(), T=temperatures)
def test_kl_is_zero_for_identical_logits(s, T):
    z = torch.tensor(s)
    assert float(L.soft_target_kl(z, z.clone(), T, reduction="sum")) == 0.0


@settings(max_examples=60, deadline=None)
@given(data=st.data(), T=temperatures, shift=st.floats(-1e3, 1e3))
def test_kl_is_invariant_to_a_constant_added_to_a_row(data, T, shift):
    s = torch.tensor(data.draw(_logit_arrays(max_abs=100.0)))
    t = torch.tensor(
        data.draw(hnp.arrays(np.float64, tuple(s.shape), elements=st.floats(-100, 100)))
    )
    row = data.draw(st.integers(0, len(s) - 1))
    base = L.soft_target_kl(s, t, T, reduction="none")
    s2, t2 = s.clone(), t.clone()
    s2[row] += shift
    t2[row] -= shift / 3
    torch.testing.assert_close(
        L.soft_target_kl(s2, t2, T, reduction="none"), base, rtol=1e-6, atol=1e-6 * T**2
    )


@settings(max_examples=60, deadline=None)
@given(data=st.data(), T=temperatures)
def test_losses_and_gradients_are_finite_for_huge_logits(data, T):
    s = data.draw(_logit_arrays())
    t = data.draw(hnp.arrays(np.float64, s.shape, elements=st.floats(-1e4, 1e4)))
    y = torch.zeros(len(s), dtype=torch.long)
    for dtype in (torch.float32, torch.float64):
        z_s = torch.tensor(s, dtype=dtype, requires_grad=True)
        z_t = torch.tensor(t, dtype=dtype)
        total = L.soft_target_kl(z_s, z_t, T) + L.soft_target_ce(z_s, z_t, T)
        total = total + L.kd_loss(z_s, z_t, y, T, 0.5)
        total.backward()
        assert torch.isfinite(total) and bool(torch.isfinite(z_s.grad).all())


# --------------------------------------------------------------------------------------------
# Bad input gets a clear error
@pytest.mark.parametrize("T", [0, 0.0, -1.0, float("nan"), float("inf"), True, "4"])
def test_bad_temperature(pair, T):
    s, t = pair
    with pytest.raises(ValueError, match="temperature T must be a (finite )?number > 0"):
        L.soft_target_kl(s, t, T)
    with pytest.raises(ValueError, match="temperature T"):
        L.kd_loss(s, t, torch.zeros(len(s), dtype=torch.long), T=T)


@pytest.mark.parametrize("alpha", [-0.1, 1.5, float("nan"), None])
def test_bad_alpha(pair, alpha):
    s, t = pair
    y = torch.zeros(len(s), dtype=torch.long)
    with pytest.raises(ValueError, match=r"alpha must be a (finite )?number in \[0, 1\]"):
        L.kd_loss(s, t, y, 4.0, alpha)


def test_different_class_counts(pair):
    s, t = pair
    with pytest.raises(ValueError, match=r"differ in shape \(class counts\).*\(6, 10\).*\(6, 5\)"):
        L.soft_target_kl(s, t[:, :5])
    with pytest.raises(ValueError, match=r"differ in shape \(batch sizes\)"):
        L.mse_logits(s, t[:3])
    with pytest.raises(ValueError, match=r"must have shape \(N, C\)"):
        L.mse_logits(s.flatten(), t.flatten())


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_logits_name_the_rows(pair, bad):
    s, t = pair
    s = s.clone()
    s[3, 1] = bad
    with pytest.raises(ValueError, match=r"student_logits contains NaN or inf .* index \[3\]"):
        L.soft_target_kl(s, t)
    t = t.clone()
    t[0, 0] = bad
    t[4, 2] = bad
    with pytest.raises(ValueError, match=r"teacher_logits contains NaN or inf .* index \[0, 4\]"):
        L.mse_logits(pair[0], t)


def test_labels_out_of_range(pair):
    s, t = pair
    for y in (torch.tensor([0, 1, 2, 3, 4, 10]), torch.tensor([0, 1, 2, 3, 4, -1])):
        with pytest.raises(ValueError, match=r"labels out of range.*must be in \[0, 9\]"):
            L.kd_loss(s, t, y)
        with pytest.raises(ValueError, match="labels out of range"):
            L.mse_kd_loss(s, t, y)
    with pytest.raises(TypeError, match="integer tensor of class indices"):
        L.kd_loss(s, t, torch.zeros(6))
    with pytest.raises(ValueError, match=r"labels y must have shape \(6,\)"):
        L.kd_loss(s, t, torch.zeros(5, dtype=torch.long))


def test_kl_refuses_mean_reduction_and_explains(pair):
    s, t = pair
    with pytest.raises(ValueError, match="'mean' would also average over classes"):
        L.soft_target_kl(s, t, reduction="mean")
    with pytest.raises(ValueError, match="reduction must be one of"):
        L.mse_logits(s, t, reduction="batchmean")


def test_bad_lambda_and_soft_kind(pair):
    s, t = pair
    y = torch.zeros(len(s), dtype=torch.long)
    with pytest.raises(ValueError, match="lam must be a number >= 0"):
        L.mse_kd_loss(s, t, y, lam=-1)
    with pytest.raises(ValueError, match="soft must be 'kl' or 'ce'"):
        L.kd_loss(s, t, y, soft="js")
    with pytest.raises(TypeError, match="student_logits must be a torch.Tensor"):
        L.mse_logits(s.numpy(), t)


def test_soften_is_softmax_of_logits_over_T():
    z = _logits()
    for T in (0.5, 1.0, 4.0):
        torch.testing.assert_close(L.soften(z, T), torch.softmax(z / T, dim=1))
    assert float(L.soften(torch.tensor([3.0, 0.0]), 1e-3)[0]) == 1.0
    with pytest.raises(ValueError, match="temperature T must be a (finite )?number > 0"):
        L.soften(z, -1.0)
    with pytest.raises(TypeError, match="logits must be a torch.Tensor"):
        L.soften([1.0, 2.0], 1.0)
