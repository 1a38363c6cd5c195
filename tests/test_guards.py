"""kdlib.guards: each guard catches its mistake and lets the correct code through."""

import pytest
import torch
import torch.nn.functional as F

import kdlib
from kdlib import guards


def test_probabilities_are_refused_logits_pass():
    z = torch.randn(5, 10) * 3
    assert guards.assert_logits(z) is z
    assert guards.looks_like_probabilities(F.softmax(z, 1))
    with pytest.raises(ValueError, match="look like probabilities"):
        guards.assert_logits(F.softmax(z, 1))
    # Non-negative logits that do not sum to 1 are still logits.
    assert not guards.looks_like_probabilities(z.abs())
    assert not guards.looks_like_probabilities(torch.zeros(0, 3))


def test_fingerprint_detects_each_kind_of_change():
    teacher = kdlib.model("cnn-thin", seed=0).eval()
    snap = guards.fingerprint(teacher)
    guards.assert_unchanged(teacher, snap)  # nothing happened yet

    teacher.train()  # mode flip only
    with pytest.raises(AssertionError, match="train/eval mode changed"):
        guards.assert_unchanged(teacher, snap)
    teacher.eval()

    teacher(torch.randn(4, 1, 28, 28)).sum().backward()  # a stray gradient
    with pytest.raises(AssertionError, match="received gradients"):
        guards.assert_unchanged(teacher, snap)
    teacher.zero_grad(set_to_none=True)

    teacher.train()(torch.randn(4, 1, 28, 28))  # batch norm statistics move in train mode
    teacher.eval()
    with pytest.raises(AssertionError, match=r"tensors changed: .*running_mean"):
        guards.assert_unchanged(teacher, snap)


def test_distill_leaves_the_fingerprint_intact():
    data = kdlib.load("mnist-5k").subset(256, 128)
    teacher = kdlib.model("cnn-thin", seed=0)
    kdlib.fit(teacher, data, epochs=1, lr=1e-3, progress=False)
    snap = guards.fingerprint(teacher)
    kdlib.distill(kdlib.model("tiny", seed=0), teacher, data, epochs=1, progress=False)
    guards.assert_unchanged(teacher, snap)


def test_untrained_teacher_is_refused():
    data = kdlib.load("mnist-5k").subset(256, 500)
    untrained = kdlib.model("tiny", seed=0)
    acc = kdlib.evaluate(untrained, data)["accuracy"]
    assert acc < 0.2  # a random network is near chance
    with pytest.raises(ValueError, match="train the teacher first"):
        guards.assert_trained(untrained, data)
    kdlib.fit(untrained, data, epochs=3, lr=1e-2, progress=False)
    assert guards.assert_trained(untrained, data) > 0.2


def test_student_must_be_smaller():
    teacher = kdlib.model("hinton-teacher")
    assert guards.assert_smaller(kdlib.model("hinton-student"), teacher) > 1
    with pytest.raises(ValueError, match="compresses nothing"):
        guards.assert_smaller(kdlib.model("hinton-teacher"), teacher)
