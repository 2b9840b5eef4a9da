"""IoU, GIoU and both DIoU forms on boxes whose values are worked out by hand."""

import math

import pytest
import torch
from torchvision.ops import distance_box_iou as pairwise_diou

from d2kd.layers.box_ops import aligned_giou as aligned_box_giou
from d2kd.layers.box_ops import aligned_iou as aligned_box_iou
from d2kd.layers.box_ops import pairwise_iou as pairwise_box_iou
from d2kd.layers.diou import pairwise_diou_official


def test_aligned_iou_and_giou_by_hand():
    a = torch.tensor([[0.0, 0, 2, 2], [0, 0, 1, 1], [0, 0, 1, 1]])
    b = torch.tensor([[1.0, 1, 3, 3], [2, 0, 3, 1], [0, 0, 1, 1]])
    # overlap 1, union 7, enclosing 9; disjoint: union 2, enclosing 3; identical.
    assert torch.allclose(aligned_box_iou(a, b), torch.tensor([1 / 7, 0.0, 1.0]))
    expected = torch.tensor([1 / 7 - 2 / 9, -1 / 3, 1.0])
    assert torch.allclose(aligned_box_giou(a, b), expected)


def test_pairwise_iou_matches_aligned():
    a = torch.tensor([[0.0, 0, 2, 2], [1, 1, 4, 5]])
    b = torch.tensor([[1.0, 1, 3, 3], [0, 0, 2, 2], [5, 5, 6, 6]])
    full = pairwise_box_iou(a, b)
    assert full.shape == (2, 3)
    for i in range(2):
        for j in range(3):
            assert torch.isclose(full[i, j], aligned_box_iou(a[i], b[j]))


def test_official_diou_is_iof_based_and_textbook_is_iou_based():
    anchor = torch.tensor([[0.0, 0, 4, 4]])  # area 16, centre (2, 2)
    gt = torch.tensor([[2.0, 0, 6, 2]])  # area 8, centre (4, 1)
    # intersection 4; IoU 4/20; IoF 4/16; rho^2 = 2^2 + 1^2; enclosing box 6 x 4: c^2 = 52.
    penalty = 5 / 52
    assert torch.allclose(pairwise_diou_official(anchor, gt), torch.tensor([[0.25 - penalty]]))
    assert torch.allclose(pairwise_diou(anchor, gt), torch.tensor([[0.2 - penalty]]))


@pytest.mark.parametrize("fn", [pairwise_diou, pairwise_diou_official])
def test_diou_of_a_box_with_itself_is_one(fn):
    box = torch.tensor([[3.0, 4, 10, 12]])
    assert math.isclose(fn(box, box).item(), 1.0, rel_tol=1e-6)
