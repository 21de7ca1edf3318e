"""CA and ASR on hand-made predictions, including the cases peers get wrong."""

import math

import numpy as np
import pytest
import torch

from eftclip.evaluation.metrics import (
    accuracy,
    attack_success_rate,
    nan_to_none,
    per_class_rates,
    topk_accuracy,
    topk_hits,
)


def test_asr_excludes_images_of_the_target_class():
    target = 2
    true = np.array([0, 0, 1, 1, 2, 2])
    # both target-class images predicted as the target: correct answers, not attacks
    pred = np.array([2, 0, 2, 2, 2, 2])
    # 3 of the 4 non-target images are pushed to the target
    assert attack_success_rate(pred, true, target) == pytest.approx(3 / 4)
    # counting target-class images as well (the peers' mistake) would give 5/6
    assert attack_success_rate(pred, true, target) != pytest.approx(5 / 6)


def test_asr_is_measured_against_the_target_not_the_true_label():
    target = 0
    true = np.array([1, 1, 2, 2])
    # every image misclassified, but only one of them as the target
    pred = np.array([2, 0, 1, 1])
    assert attack_success_rate(pred, true, target) == pytest.approx(1 / 4)
    # "1 - accuracy against the true label" would claim 100 %
    assert 1 - accuracy(pred, true) == 1.0


def test_asr_with_a_different_target_is_different():
    true = np.array([0, 1, 2, 3])
    pred = np.array([3, 3, 3, 3])
    assert attack_success_rate(pred, true, 3) == 1.0
    assert attack_success_rate(pred, true, 1) == 0.0  # no target hard-coded


def test_asr_accepts_tensors_and_ignores_untriggered_target_entries():
    true = torch.tensor([0, 1, 1, 2])
    pred = torch.tensor([1, -1, -1, 1])  # -1: target-class images left untriggered
    assert attack_success_rate(pred, true, 1) == 1.0


def test_asr_undefined_without_non_target_images():
    assert math.isnan(attack_success_rate([1, 1], [1, 1], 1))
    assert nan_to_none(attack_success_rate([1, 1], [1, 1], 1)) is None


def test_asr_shape_mismatch():
    with pytest.raises(ValueError, match="3 triggered predictions for 2 labels"):
        attack_success_rate([0, 1, 2], [0, 1], 0)


def test_topk_accuracy():
    scores = np.array([
        [0.9, 0.05, 0.05],  # true 0: top-1
        [0.5, 0.3, 0.2],    # true 1: rank 2
        [0.5, 0.3, 0.2],    # true 2: rank 3
        [0.1, 0.2, 0.7],    # true 0: rank 3
    ])
    true = np.array([0, 1, 2, 0])
    assert topk_accuracy(scores, true, 1) == pytest.approx(1 / 4)
    assert topk_accuracy(scores, true, 2) == pytest.approx(2 / 4)
    assert topk_accuracy(scores, true, 3) == 1.0
    # k beyond the class count is clipped: top-5 of 3 classes is top-3
    assert topk_accuracy(torch.tensor(scores), torch.tensor(true), 5) == 1.0
    assert topk_hits(scores, true, 2).tolist() == [True, True, False, False]


def test_topk_ties_are_broken_by_class_index():
    scores = np.zeros((2, 4))
    assert topk_hits(scores, [0, 3], 1).tolist() == [True, False]
    assert topk_hits(scores, [0, 3], 4).tolist() == [True, True]


def test_topk_agrees_with_torch_topk():
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(200, 17, generator=gen)
    true = torch.randint(0, 17, (200,), generator=gen)
    for k in (1, 3, 5):
        expected = (scores.topk(k, dim=1).indices == true[:, None]).any(dim=1).float().mean().item()
        assert topk_accuracy(scores, true, k) == pytest.approx(expected)


def test_topk_rejects_bad_labels():
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        topk_accuracy(np.zeros((1, 2)), [5], 1)
    with pytest.raises(ValueError, match="integer"):
        topk_accuracy(np.zeros((1, 2)), [0.5], 1)


def test_per_class_rates():
    true = np.array([0, 0, 1, 1, 1, 2])
    pred = np.array([0, 1, 1, 1, 0, 2])
    trig = np.array([2, 0, 2, 2, 1, -1])  # target 2; its own image untriggered
    rows = per_class_rates(pred, true, 4, pred_triggered=trig, target_index=2)
    assert rows[0] == {"ca_top1": 0.5, "asr": 0.5, "n": 2}
    assert rows[1] == {"ca_top1": pytest.approx(2 / 3), "asr": pytest.approx(2 / 3), "n": 3}
    assert rows[2] == {"ca_top1": 1.0, "asr": None, "n": 1}  # the target class has no ASR
    assert rows[3] == {"ca_top1": None, "asr": None, "n": 0}
    # without a trigger there is no ASR anywhere
    assert all(r["asr"] is None for r in per_class_rates(pred, true, 3))
