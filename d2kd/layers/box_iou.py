"""
IoU of axis-aligned boxes (xyxy), pure PyTorch.

Shape shorthand: M, N numbers of boxes. The union is clamped at ``eps`` (1e-6, mmdet's
``bbox_overlaps``), so degenerate boxes give IoU 0 instead of NaN.
"""

import torch
from torch import Tensor

__all__ = ["box_area", "pairwise_iou", "aligned_iou", "box_centers"]


def box_area(boxes: Tensor) -> Tensor:
    """(..., 4) xyxy -> (...,) area (0 for inverted boxes)."""
    wh = (boxes[..., 2:] - boxes[..., :2]).clamp(min=0)
    return wh[..., 0] * wh[..., 1]


def box_centers(boxes: Tensor) -> Tensor:
    """(..., 4) xyxy -> (..., 2) centres (x, y)."""
    return (boxes[..., :2] + boxes[..., 2:]) / 2


def pairwise_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-6) -> Tensor:
    """
    Args:
        boxes1: (M, 4); boxes2: (N, 4), xyxy.
    Returns:
        (M, N) IoU of every pair.
    """
    lt = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])  # (M, N, 2)
    rb = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])  # (M, N, 2)
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = box_area(boxes1)[:, None] + box_area(boxes2)[None, :] - inter
    return inter / union.clamp(min=eps)


def aligned_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-6) -> Tensor:
    """
    Args:
        boxes1, boxes2: (..., 4) xyxy, same shape.
    Returns:
        (...,) IoU of each box with the box at the same position.
    """
    lt = torch.max(boxes1[..., :2], boxes2[..., :2])
    rb = torch.min(boxes1[..., 2:], boxes2[..., 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = box_area(boxes1) + box_area(boxes2) - inter
    return inter / union.clamp(min=eps)
