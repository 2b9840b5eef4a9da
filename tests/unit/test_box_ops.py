"""d2kd.layers.box_ops: the eps and area conventions, conversions and helpers, by hand."""

import math

import pytest
import torch

from d2kd.layers.box_ops import (
    aligned_giou,
    box_area,
    box_centers,
    box_cxcywh_to_xyxy,
    box_xyxy_to_cxcywh,
    enclosing_size,
    inverse_sigmoid,
    pairwise_giou,
)


def test_inverted_box_area_clamped_by_default_signed_as_mmdet_on_request():
    inverted = torch.tensor([[2.0, 0, 0, 2]])  # width -2, height 2
    box = torch.tensor([[0.0, 0, 2, 2]])
    assert box_area(inverted).item() == 0.0
    assert box_area(inverted, signed_area=True).item() == -4.0
    # Intersection 0 either way; enclosing box [0, 0, 2, 2] (area 4).
    # Clamped: union 4 -> GIoU 0 - (4 - 4) / 4 = 0.
    assert aligned_giou(inverted, box).item() == 0.0
    # Signed: union -4 + 4 = 0, floored at 1e-6 -> GIoU 0 - (4 - 1e-6) / 4.
    signed = aligned_giou(inverted, box, signed_area=True)
    assert math.isclose(signed.item(), -(4 - 1e-6) / 4, rel_tol=1e-6)


def test_giou_eps_floors_the_areas_mmdet_or_only_guards_divisions_detr():
    a = torch.tensor([[0.0, 0, 1e-4, 1e-4]], dtype=torch.float64)
    b = torch.tensor([[2e-4, 0, 3e-4, 1e-4]], dtype=torch.float64)
    # Disjoint: intersection 0, union 2e-8, enclosing box 3e-4 x 1e-4 = 3e-8 (both below eps).
    assert math.isclose(aligned_giou(a, b, eps=1e-9).item(), -1 / 3, rel_tol=1e-9)
    # mmdet: union and enclosing area both floored to 1e-6 -> 0 - (1e-6 - 1e-6) / 1e-6 = 0.
    assert aligned_giou(a, b, eps=1e-6).item() == 0.0
    # DETR: 0 - (3e-8 - 2e-8) / max(3e-8, 1e-6) = -0.01.
    detr = aligned_giou(a, b, eps=1e-6, floor_areas=False)
    assert math.isclose(detr.item(), -0.01, rel_tol=1e-9)
    pairwise = pairwise_giou(a, b, eps=1e-6, floor_areas=False)
    assert pairwise.shape == (1, 1) and math.isclose(pairwise.item(), -0.01, rel_tol=1e-9)


def test_conversions_centres_enclosing_size_and_inverse_sigmoid():
    xyxy = torch.tensor([[1.0, 2, 5, 8]])
    assert box_xyxy_to_cxcywh(xyxy).tolist() == [[3.0, 5.0, 4.0, 6.0]]
    assert box_cxcywh_to_xyxy(torch.tensor([[3.0, 5, 4, 6]])).tolist() == xyxy.tolist()
    assert box_centers(xyxy).tolist() == [[3.0, 5.0]]
    other = torch.tensor([[-1.0, 4, 2, 9]])
    assert enclosing_size(xyxy, other).tolist() == [[6.0, 7.0]]  # [-1, 2, 5, 9]
    x = torch.tensor([0.0, 0.25, 0.5, 1.0])
    expected = [math.log(1e-5), math.log(1 / 3), 0.0, math.log(1 / 1e-5)]
    assert inverse_sigmoid(x).tolist() == pytest.approx(expected, rel=1e-5)
