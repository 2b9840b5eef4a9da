"""BCKD's per-prior terms: hand values, gradient semantics, zero when teacher == student."""

import math

import pytest
import torch

from d2kd.methods.bckd.terms import bckd_cls_per_prior, bckd_loc_per_prior, bckd_loc_weight


def _logits():
    # Teacher probabilities (0.75, 0.5), student (0.5, 0.5).
    s = torch.tensor([[0.0, 0.0]], requires_grad=True)
    t = torch.tensor([[math.log(3.0), 0.0]])
    return s, t


def test_cls_term_by_hand():
    s, t = _logits()
    # class 0: |0.75 - 0.5| * BCE(0, 0.75) = 0.25 * ln 2; class 1: weight 0.
    assert torch.allclose(bckd_cls_per_prior(s, t), torch.tensor([0.25 * math.log(2)]))


def test_cls_weight_keeps_its_gradient_through_the_student():
    s, t = _logits()
    bckd_cls_per_prior(s, t).sum().backward()
    # d/ds [(q - sigmoid(s)) * BCE(s, q)] at s = 0: -sigmoid'(0) * ln 2 + (q - p) * (p - q).
    expected0 = -0.25 * math.log(2) - 0.0625
    assert torch.allclose(s.grad, torch.tensor([[expected0, 0.0]]))
    # With a detached weight the gradient would be (q - p) * (p - q) = -0.0625 only.
    s2, _ = _logits()
    q = t.sigmoid()
    w = (q - s2.sigmoid()).abs().detach()
    bce = torch.nn.functional.binary_cross_entropy_with_logits(s2, q, reduction="none")
    (w * bce).sum().backward()
    assert not torch.allclose(s.grad, s2.grad)
    assert math.isclose(s2.grad[0, 0].item(), -0.0625, rel_tol=1e-6)


def test_teacher_gets_no_gradient():
    s, _ = _logits()
    t = torch.tensor([[1.0, -2.0]], requires_grad=True)
    boxes_t = torch.tensor([[1.0, 1, 3, 3]], requires_grad=True)
    loss = (
        bckd_cls_per_prior(s, t).sum()
        + bckd_loc_per_prior(torch.tensor([[0.0, 0, 2, 2]]), boxes_t).sum()
    )
    loss.backward()
    assert t.grad is None and boxes_t.grad is None


def test_loc_weight_is_detached_max_abs_difference():
    s, t = _logits()
    w = bckd_loc_weight(s, t)
    assert torch.allclose(w, torch.tensor([0.25]))
    assert not w.requires_grad


@pytest.mark.parametrize("mode,expected", [("giou", 1 - (1 / 7 - 2 / 9)), ("iou", 1 - 1 / 7)])
def test_loc_term_by_hand_and_gradient_into_student_boxes(mode, expected):
    b_s = torch.tensor([[0.0, 0, 2, 2]], requires_grad=True)
    b_t = torch.tensor([[1.0, 1, 3, 3]])
    loss = bckd_loc_per_prior(b_s, b_t, mode)
    assert torch.allclose(loss, torch.tensor([expected]))
    loss.sum().backward()
    assert b_s.grad.abs().sum() > 0


def test_loc_term_of_an_inverted_student_box_uses_mmdet_signed_areas():
    # Student box inverted along x (area -4 as in mmdet's bbox_overlaps), teacher [0, 0, 2, 2]:
    # intersection 0, union -4 + 4 = 0 floored at 1e-6, enclosing area 4.
    b_s = torch.tensor([[2.0, 0, 0, 2]])
    b_t = torch.tensor([[0.0, 0, 2, 2]])
    giou = -(4 - 1e-6) / 4
    assert math.isclose(bckd_loc_per_prior(b_s, b_t, "giou").item(), 1 - giou, rel_tol=1e-6)
    assert bckd_loc_per_prior(b_s, b_t, "iou").item() == 1.0


def test_unknown_loc_mode_raises():
    with pytest.raises(ValueError, match="giou"):
        bckd_loc_per_prior(torch.zeros(1, 4), torch.zeros(1, 4), "diou")


def test_everything_is_zero_when_teacher_equals_student():
    torch.manual_seed(0)
    logits = torch.randn(2, 7, 5, requires_grad=True)
    boxes = torch.rand(2, 7, 4) * 10
    boxes[..., 2:] += boxes[..., :2] + 1
    assert torch.equal(bckd_cls_per_prior(logits, logits.detach()), torch.zeros(2, 7))
    assert torch.equal(bckd_loc_weight(logits, logits), torch.zeros(2, 7))
    assert torch.allclose(bckd_loc_per_prior(boxes, boxes), torch.zeros(2, 7), atol=1e-6)
