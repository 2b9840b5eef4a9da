"""Box ops, Hungarian matching and the set criterion on hand-made inputs."""

import math

import pytest
import torch

from d2kd.layers.box_ops import aligned_giou as elementwise_generalized_box_iou
from d2kd.layers.box_ops import box_cxcywh_to_xyxy, box_xyxy_to_cxcywh
from d2kd.layers.box_ops import pairwise_giou as pairwise_generalized_box_iou
from d2kd.layers.detr.criterion import SetCriterion
from d2kd.layers.detr.matcher import HungarianMatcher, focal_class_cost, linear_assignment


def test_box_conversions_and_giou_by_hand():
    xyxy = torch.tensor([[0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 3.0, 3.0], [4.0, 0.0, 5.0, 1.0]])
    torch.testing.assert_close(box_cxcywh_to_xyxy(box_xyxy_to_cxcywh(xyxy)), xyxy)
    giou = pairwise_generalized_box_iou(xyxy[:1], xyxy)
    # Overlap 1, union 7, enclosure 9: 1/7 - 2/9. Disjoint with the third: enclosure 10, union 5.
    expected = torch.tensor([[1.0, 1 / 7 - 2 / 9, 0 - 5 / 10]])
    torch.testing.assert_close(giou, expected)
    torch.testing.assert_close(
        elementwise_generalized_box_iou(xyxy[:1].expand(3, 4), xyxy), expected[0]
    )


def test_linear_assignment_on_hand_made_costs():
    cost = torch.tensor([[4.0, 1.0, 3.0], [2.0, 0.0, 5.0], [3.0, 2.0, 2.0]])
    rows, cols = linear_assignment(cost)  # optimum 1 + 2 + 2 = 5 (the greedy 0 first gives 6)
    assert rows.tolist() == [0, 1, 2] and cols.tolist() == [1, 0, 2]
    rows, cols = linear_assignment(torch.tensor([[1.0, 9.0, 2.0], [3.0, 1.0, 9.0]]))
    assert cols.tolist() == [0, 1]
    rows, cols = linear_assignment(torch.tensor([[5.0], [1.0], [3.0]]))  # 3 rows, 1 column
    assert rows.tolist() == [1] and cols.tolist() == [0]
    with pytest.raises(ValueError, match="NaN or inf"):
        linear_assignment(torch.tensor([[float("nan")]]))


def test_focal_class_cost_value():
    logits = torch.tensor([[0.0, math.log(3.0)]])  # p = 0.5, 0.75
    cost = focal_class_cost(logits, torch.tensor([1]), alpha=0.25, gamma=2.0)
    p = 0.75
    expected = 0.25 * (1 - p) ** 2 * -math.log(p) - 0.75 * p**2 * -math.log(1 - p)
    assert cost.item() == pytest.approx(expected, rel=1e-5)


def test_matcher_recovers_a_permutation():
    gt_boxes = torch.tensor([[0.2, 0.2, 0.1, 0.1], [0.7, 0.5, 0.3, 0.2], [0.4, 0.8, 0.2, 0.2]])
    labels = torch.tensor([0, 2, 1])
    perm = torch.tensor([2, 0, 1])  # query q predicts target perm[q]
    boxes = gt_boxes[perm][None]
    logits = torch.full((1, 3, 3), -4.0)
    logits[0, torch.arange(3), labels[perm]] = 4.0
    ((q, g),) = HungarianMatcher()(logits, boxes, [{"labels": labels, "boxes": gt_boxes}])
    assert g[q.argsort()].tolist() == perm.tolist()
    ((q, g),) = HungarianMatcher()(logits, boxes, [{"labels": labels[:0], "boxes": gt_boxes[:0]}])
    assert len(q) == len(g) == 0


def test_criterion_by_hand():
    matcher = HungarianMatcher()
    crit = SetCriterion(
        num_classes=1, matcher=matcher, weight_class=2.0, weight_bbox=5.0, weight_giou=2.0
    )
    box = torch.tensor([[0.5, 0.5, 0.2, 0.2]])
    logits = torch.zeros(1, 2, 1)  # p = 0.5 everywhere
    boxes = torch.stack([box[0], torch.tensor([0.1, 0.1, 0.1, 0.1])])[None]
    target = [{"labels": torch.tensor([0]), "boxes": box}]
    losses = crit.stage_losses(logits, boxes, target, [(torch.tensor([0]), torch.tensor([0]))])
    # Focal at p = 0.5: alpha * 0.25 * log 2 for the positive, (1 - alpha) * 0.25 * log 2 for the
    # negative, summed (0.25 log 2), per box (1), times the weight 2.
    assert losses["loss_ce"].item() == pytest.approx(2 * 0.25 * math.log(2), rel=1e-5)
    assert losses["loss_bbox"].item() == pytest.approx(0.0, abs=1e-6)
    assert losses["loss_giou"].item() == pytest.approx(0.0, abs=1e-6)
    # Matched to the other query: L1 = |0.5-0.1| + |0.5-0.1| + |0.2-0.1| + |0.2-0.1|.
    wrong = crit.stage_losses(logits, boxes, target, [(torch.tensor([1]), torch.tensor([0]))])
    assert wrong["loss_bbox"].item() == pytest.approx(5 * (0.4 + 0.4 + 0.1 + 0.1), rel=1e-5)
    full = crit(torch.stack([logits, logits]), torch.stack([boxes, boxes]), target)
    assert set(full) == {
        "loss_ce",
        "loss_bbox",
        "loss_giou",
        "loss_ce_0",
        "loss_bbox_0",
        "loss_giou_0",
    }
    assert full["loss_bbox"].item() == pytest.approx(0.0, abs=1e-6)  # the matcher picks query 0
    torch.testing.assert_close(full["loss_ce"], losses["loss_ce"])
