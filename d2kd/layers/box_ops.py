"""
Box geometry shared by every method, PyTorch and torchvision only: areas, centres,
cxcywh <-> xyxy (torchvision's ``box_convert``), IoU, GIoU (d2kd's own: the specs fix their eps
conventions).

Shape shorthand: boxes are ``(..., 4)`` xyxy unless a name says cxcywh, in any unit as long as both
arguments share it. *Pairwise* functions compare every row of ``boxes1`` (M, 4) with every row of
``boxes2`` (N, 4) and return (M, N); *aligned* functions compare the boxes at the same position and
broadcast like any elementwise op: (..., 4) and (..., 4) -> (...).

Conventions (the defaults are those of mmdet's ``bbox_overlaps``, the reference of ATSS, GFL, BCKD
and LD); callers that follow another reference pass their own:

* ``eps`` floors the union (and the enclosing area of GIoU), so degenerate boxes give finite
  values: 1e-6 by default; the DETR code uses :data:`DETR_EPS`, PGD's weighting 1e-12.
* ``signed_area``: by default a negative width or height counts as 0; ``True`` takes the raw
  product ``w * h`` as mmdet does (BCKD). The two differ only for inverted boxes (x2 < x1 or
  y2 < y1), which decoded predictions can be early in training.
* GIoU ``floor_areas``: ``True`` (mmdet) floors the union and the enclosing area at ``eps`` and uses
  the floored values throughout; ``False`` (DETR) uses ``eps`` only to guard the two divisions.
"""

from typing import Tuple

import torch
from torch import Tensor
from torchvision.ops import box_convert

__all__ = [
    "DETR_EPS",
    "box_area",
    "box_centers",
    "box_cxcywh_to_xyxy",
    "box_xyxy_to_cxcywh",
    "enclosing_size",
    "pairwise_iou",
    "aligned_iou",
    "pairwise_giou",
    "aligned_giou",
    "inverse_sigmoid",
]

# Denominator floor of the IoU/GIoU of d2kd's DETR code (the original DETR has none).
DETR_EPS = 1e-7


def box_area(boxes: Tensor, signed_area: bool = False) -> Tensor:
    """(..., 4) xyxy -> (...) area; inverted sides count as 0 unless ``signed_area``."""
    wh = boxes[..., 2:] - boxes[..., :2]
    if not signed_area:
        wh = wh.clamp(min=0)
    return wh[..., 0] * wh[..., 1]


def box_centers(boxes: Tensor) -> Tensor:
    """(..., 4) xyxy -> (..., 2) centres (x, y)."""
    return (boxes[..., :2] + boxes[..., 2:]) / 2


def box_cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """(..., 4) cxcywh -> (..., 4) xyxy (``torchvision.ops.box_convert``)."""
    return box_convert(boxes, "cxcywh", "xyxy")


def box_xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """(..., 4) xyxy -> (..., 4) cxcywh (``torchvision.ops.box_convert``)."""
    return box_convert(boxes, "xyxy", "cxcywh")


def enclosing_size(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """(..., 4), (..., 4) -> (..., 2) width and height of the smallest box enclosing both."""
    rb = torch.max(boxes1[..., 2:], boxes2[..., 2:])
    lt = torch.min(boxes1[..., :2], boxes2[..., :2])
    return (rb - lt).clamp(min=0)


def _inter_union(boxes1: Tensor, boxes2: Tensor, signed_area: bool) -> Tuple[Tensor, Tensor]:
    """Aligned (broadcast) intersection and union areas, (...) each."""
    lt = torch.max(boxes1[..., :2], boxes2[..., :2])
    rb = torch.min(boxes1[..., 2:], boxes2[..., 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = box_area(boxes1, signed_area) + box_area(boxes2, signed_area) - inter
    return inter, union


def aligned_iou(
    boxes1: Tensor, boxes2: Tensor, eps: float = 1e-6, signed_area: bool = False
) -> Tensor:
    """
    Args:
        boxes1, boxes2: (..., 4) xyxy, broadcastable against each other.
    Returns:
        (...) IoU of each box with the box at the same position.
    """
    inter, union = _inter_union(boxes1, boxes2, signed_area)
    return inter / union.clamp(min=eps)


def pairwise_iou(
    boxes1: Tensor, boxes2: Tensor, eps: float = 1e-6, signed_area: bool = False
) -> Tensor:
    """
    Args:
        boxes1: (M, 4); boxes2: (N, 4), xyxy.
    Returns:
        (M, N) IoU of every pair.
    """
    return aligned_iou(boxes1[:, None, :], boxes2[None, :, :], eps, signed_area)


def aligned_giou(
    boxes1: Tensor,
    boxes2: Tensor,
    eps: float = 1e-6,
    signed_area: bool = False,
    floor_areas: bool = True,
) -> Tensor:
    """
    Generalized IoU (Rezatofighi et al., CVPR 2019): ``IoU - (|C| - |A u B|) / |C|``, C the
    smallest box enclosing A and B.

    Args:
        boxes1, boxes2: (..., 4) xyxy, broadcastable against each other.
        floor_areas: see the module docstring (True: mmdet, False: DETR).
    Returns:
        (...) GIoU of each box with the box at the same position, in [-1, 1].
    """
    inter, union = _inter_union(boxes1, boxes2, signed_area)
    wh = enclosing_size(boxes1, boxes2)
    enclose = wh[..., 0] * wh[..., 1]
    if floor_areas:
        union, enclose = union.clamp(min=eps), enclose.clamp(min=eps)
        return inter / union - (enclose - union) / enclose
    return inter / union.clamp(min=eps) - (enclose - union) / enclose.clamp(min=eps)


def pairwise_giou(
    boxes1: Tensor,
    boxes2: Tensor,
    eps: float = 1e-6,
    signed_area: bool = False,
    floor_areas: bool = True,
) -> Tensor:
    """
    Args:
        boxes1: (M, 4); boxes2: (N, 4), xyxy.
    Returns:
        (M, N) GIoU of every pair (see :func:`aligned_giou`).
    """
    return aligned_giou(boxes1[:, None, :], boxes2[None, :, :], eps, signed_area, floor_areas)


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    """
    Normalised box coordinates -> logit space, where Deformable DETR refines its reference boxes:
    ``log(x / (1 - x))`` with x clamped to [eps, 1 - eps].
    """
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))
