"""
Box conversions and (generalised) IoU for set prediction.

Shape shorthand: M, N numbers of boxes; boxes are ``cxcywh`` (centre, size) or ``xyxy``
(corners), in any unit as long as both arguments share it.
"""

from typing import Tuple

import torch
from torch import Tensor

__all__ = [
    "box_cxcywh_to_xyxy",
    "box_xyxy_to_cxcywh",
    "box_area",
    "pairwise_box_iou",
    "pairwise_generalized_box_iou",
    "elementwise_generalized_box_iou",
    "inverse_sigmoid",
]


def box_cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """(..., 4) cxcywh -> (..., 4) xyxy."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def box_xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """(..., 4) xyxy -> (..., 4) cxcywh."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dim=-1)


def box_area(boxes: Tensor) -> Tensor:
    """(..., 4) xyxy -> (...) areas (negative sizes count as zero)."""
    return (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(
        min=0
    )


def pairwise_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tuple[Tensor, Tensor]:
    """
    Args:
        boxes1: (M, 4) xyxy.  boxes2: (N, 4) xyxy.
    Returns:
        (iou, union): both (M, N).
    """
    area1, area2 = box_area(boxes1), box_area(boxes2)
    lt = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])  # (M, N, 2)
    rb = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = area1[:, None] + area2[None, :] - inter
    return inter / union.clamp(min=1e-7), union


def pairwise_generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """
    GIoU (Rezatofighi et al., CVPR 2019) of every pair: ``IoU - (|C| - |A u B|) / |C|`` with C
    the smallest enclosing box.

    Args:
        boxes1: (M, 4) xyxy.  boxes2: (N, 4) xyxy.
    Returns:
        (M, N) values in [-1, 1].
    """
    iou, union = pairwise_box_iou(boxes1, boxes2)
    lt = torch.min(boxes1[:, None, :2], boxes2[None, :, :2])
    rb = torch.max(boxes1[:, None, 2:], boxes2[None, :, 2:])
    enclosing = (rb - lt).clamp(min=0).prod(-1)
    return iou - (enclosing - union) / enclosing.clamp(min=1e-7)


def elementwise_generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """GIoU of matched pairs: (N, 4) xyxy and (N, 4) xyxy -> (N,)."""
    area1, area2 = box_area(boxes1), box_area(boxes2)
    inter = torch.min(boxes1[:, 2:], boxes2[:, 2:]) - torch.max(boxes1[:, :2], boxes2[:, :2])
    inter = inter.clamp(min=0).prod(-1)
    union = area1 + area2 - inter
    iou = inter / union.clamp(min=1e-7)
    enclosing = torch.max(boxes1[:, 2:], boxes2[:, 2:]) - torch.min(boxes1[:, :2], boxes2[:, :2])
    enclosing = enclosing.clamp(min=0).prod(-1)
    return iou - (enclosing - union) / enclosing.clamp(min=1e-7)


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    """``log(x / (1 - x))`` with x clamped to [eps, 1 - eps] (Deformable DETR's helper)."""
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))
