"""QFL, DFL and the distribution box coder against the formulas, on hand-checkable values."""

import math

import pytest
import torch

from d2kd.layers.distribution_boxes import (
    DistributionBoxCoder,
    boxes_to_distances,
    distances_to_boxes,
    distribution_integral,
)
from d2kd.layers.gfl_losses import distribution_focal_loss, quality_focal_loss

LN2 = math.log(2.0)


def test_qfl_negative_prior_is_bce_to_zero_times_sigma_pow_beta():
    # logit 0 -> sigma 0.5, target 0: BCE = ln 2, factor 0.5^2 = 0.25, two classes.
    loss = quality_focal_loss(torch.zeros(1, 2), torch.tensor([2]), torch.tensor([0.9]))
    assert loss.tolist() == pytest.approx([2 * 0.25 * LN2], abs=1e-6)


def test_qfl_positive_class_uses_the_iou_target():
    # Class 1 with target 0.8 at logit 0: BCE(0, 0.8) = ln 2, factor |0.8 - 0.5|^2 = 0.09.
    # Class 0 (target 0) at logit ln 3 (sigma 0.75): BCE = ln 4, factor 0.75^2.
    logits = torch.tensor([[math.log(3.0), 0.0]])
    loss = quality_focal_loss(logits, torch.tensor([1]), torch.tensor([0.8]), beta=2.0)
    expected = 0.5625 * math.log(4.0) + 0.09 * LN2
    assert loss.tolist() == pytest.approx([expected], abs=1e-6)
    # beta = 1: factors 0.75 and 0.3.
    loss1 = quality_focal_loss(logits, torch.tensor([1]), torch.tensor([0.8]), beta=1.0)
    assert loss1.tolist() == pytest.approx([0.75 * math.log(4.0) + 0.3 * LN2], abs=1e-6)


def test_qfl_is_zero_when_the_prediction_equals_the_target_factor():
    # sigma == y on the GT class -> factor 0; other classes at a very negative logit -> ~0.
    logits = torch.tensor([[-30.0, math.log(0.6 / 0.4), -30.0]])
    loss = quality_focal_loss(logits, torch.tensor([1]), torch.tensor([0.6]))
    assert loss.item() == pytest.approx(0.0, abs=1e-9)


def test_qfl_modulating_factor_keeps_its_gradient():
    logits = torch.tensor([[0.3]], requires_grad=True)
    quality_focal_loss(logits, torch.tensor([1]), torch.tensor([0.0])).sum().backward()
    # d/dx [p^2 * softplus(x)] = 2 p^2 (1 - p) softplus(x) + p^3, at x = 0.3.
    p = 1 / (1 + math.exp(-0.3))
    expected = 2 * p * p * (1 - p) * math.log1p(math.exp(0.3)) + p**3
    assert logits.grad.item() == pytest.approx(expected, abs=1e-6)


def test_dfl_splits_the_target_between_its_two_bins():
    # softmax([0, ln 2, 0]) = [1/4, 1/2, 1/4].
    logits = torch.tensor([[0.0, LN2, 0.0]] * 3)
    loss = distribution_focal_loss(logits, torch.tensor([0.5, 1.0, 1.25]))
    expected = [
        0.5 * math.log(4) + 0.5 * math.log(2),  # bins 0 and 1, half each
        math.log(2),  # exactly on bin 1
        0.75 * math.log(2) + 0.25 * math.log(4),  # bins 1 and 2
    ]
    assert loss.tolist() == pytest.approx(expected, abs=1e-6)


def test_dfl_gradient_vanishes_at_the_target_distribution():
    # The minimum is softmax = (bin weights): [0, 0.75, 0.25] for target 1.25.
    logits = torch.log(torch.tensor([[1e-12, 0.75, 0.25]])).requires_grad_(True)
    distribution_focal_loss(logits, torch.tensor([1.25])).sum().backward()
    assert logits.grad.abs().max().item() < 1e-6


def test_integral_is_the_expected_bin():
    reg_max = 4
    peaked = torch.full((4, reg_max + 1), -50.0)
    peaked[torch.arange(4), torch.tensor([0, 1, 3, 4])] = 0.0
    flat = torch.zeros(4 * (reg_max + 1))
    out = distribution_integral(torch.stack([peaked.flatten(), flat]), reg_max)
    assert torch.allclose(out, torch.tensor([[0.0, 1, 3, 4], [2, 2, 2, 2]]), atol=1e-5)


def test_distances_and_boxes_round_trip_and_clip():
    centers = torch.tensor([[10.0, 20.0]])
    boxes = distances_to_boxes(centers, torch.tensor([[1.0, 2.0, 3.0, 4.0]]))
    assert boxes.tolist() == [[9.0, 18.0, 13.0, 24.0]]
    assert boxes_to_distances(centers, boxes, 16).tolist() == [[1.0, 2.0, 3.0, 4.0]]
    far = torch.tensor([[-100.0, 25.0, 40.0, 30.0]])  # left 110, top -5 (centre outside)
    expected = torch.tensor([[15.9, 0.0, 15.9, 10.0]])
    assert torch.allclose(boxes_to_distances(centers, far, 16), expected)


def test_coder_scales_by_each_priors_stride():
    # Two priors of side 8 x stride: stride 8 (side 64) and stride 16 (side 128), centre (32, 32).
    coder = DistributionBoxCoder(reg_max=4, anchor_scale=8.0)
    anchors = torch.tensor([[0.0, 0.0, 64.0, 64.0], [-32.0, -32.0, 96.0, 96.0]])
    logits = torch.full((2, 4, 5), -50.0)
    logits[:, :, 2] = 0.0  # every side at distance 2 (strides)
    boxes = coder.apply_deltas(logits.reshape(2, 20), anchors)
    expected = torch.tensor([[16.0, 16, 48, 48], [0, 0, 64, 64]])
    assert torch.allclose(boxes, expected, atol=1e-4)
    # Leading batch dimension broadcasts against (R, 4) anchors.
    assert coder.apply_deltas(logits.reshape(1, 2, 20), anchors).shape == (1, 2, 4)
