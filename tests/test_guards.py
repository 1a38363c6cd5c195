"""kdlib.guards: each guard catches its mistake and lets the correct code through."""

import copy

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


def test_student_that_is_the_teacher_is_refused():
    teacher = kdlib.model("cnn-teacher", seed=0)
    teacher_model = teacher  # a "student" under the teacher's name: the same object
    with pytest.raises(ValueError, match="the student is the teacher object itself"):
        guards.assert_smaller(teacher_model, teacher)
    with pytest.raises(ValueError, match="teacher object itself"):
        guards.assert_distinct(teacher_model, teacher)
    # a copy is a separate model (and then refused only for its size)
    with pytest.raises(ValueError, match="compresses nothing"):
        guards.assert_smaller(copy.deepcopy(teacher), teacher)
    guards.assert_distinct(copy.deepcopy(teacher), teacher)


def test_student_sharing_the_teachers_parameters_is_refused():
    teacher = kdlib.model("cnn-teacher", seed=0)
    # a smaller student that reuses the teacher's first stage as a module
    reuse = torch.nn.Sequential(
        teacher.stage1, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 10)
    )
    with pytest.raises(ValueError, match=r"shares \d+ parameter tensor\(s\) with the teacher"):
        guards.assert_smaller(reuse, teacher)
    # a view of a teacher tensor shares its memory too
    tied = kdlib.model("cnn-thin", seed=0)
    tied.head.fc1.bias = torch.nn.Parameter(teacher.head.fc2.bias.data[:10])
    with pytest.raises(ValueError, match="head.fc1.bias = teacher's head.fc2.bias"):
        guards.assert_distinct(tied, teacher)
    # the same layers deep-copied are the student's own
    own = copy.deepcopy(reuse)
    own[0] = copy.deepcopy(teacher.stage1)
    assert guards.assert_smaller(own, teacher) > 1
