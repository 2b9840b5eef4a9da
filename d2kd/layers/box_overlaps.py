"""
IoU and GIoU of boxes, in the two layouts distillation losses need.

Shape shorthand: boxes are ``(..., 4)`` xyxy. *Aligned* functions compare ``a[i]`` with ``b[i]``
(same leading shape, result ``(...)``); *pairwise* functions compare every row of ``a (R, 4)`` with
every row of ``b (G, 4)`` (result ``(R, G)``). ``eps`` floors the denominators as mmdet's
``bbox_overlaps`` does (1e-6), so degenerate boxes give finite values.
"""

from typing import Tuple

import torch
from torch import Tensor

__all__ = ["aligned_box_iou", "aligned_box_giou", "pairwise_box_iou", "box_area"]


def box_area(boxes: Tensor) -> Tensor:
    """(...) area of xyxy boxes (negative widths are not clamped, as mmdet)."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def _aligned_inter_union(a: Tensor, b: Tensor) -> Tuple[Tensor, Tensor]:
    lt = torch.max(a[..., :2], b[..., :2])
    rb = torch.min(a[..., 2:], b[..., 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter, box_area(a) + box_area(b) - inter


def aligned_box_iou(a: Tensor, b: Tensor, eps: float = 1e-6) -> Tensor:
    """
    Args:
        a, b: (..., 4) boxes of the same shape.
    Returns:
        (...) IoU of ``a[i]`` and ``b[i]``.
    """
    inter, union = _aligned_inter_union(a, b)
    return inter / union.clamp(min=eps)


def aligned_box_giou(a: Tensor, b: Tensor, eps: float = 1e-6) -> Tensor:
    """
    Generalized IoU (Rezatofighi et al., CVPR 2019): ``IoU - (|C| - |A u B|) / |C|``, C the
    smallest enclosing box.

    Args:
        a, b: (..., 4) boxes of the same shape.
    Returns:
        (...) GIoU of ``a[i]`` and ``b[i]``, in [-1, 1].
    """
    inter, union = _aligned_inter_union(a, b)
    union = union.clamp(min=eps)
    enclose_wh = (torch.max(a[..., 2:], b[..., 2:]) - torch.min(a[..., :2], b[..., :2])).clamp(
        min=0
    )
    enclose = (enclose_wh[..., 0] * enclose_wh[..., 1]).clamp(min=eps)
    return inter / union - (enclose - union) / enclose


def pairwise_box_iou(a: Tensor, b: Tensor, eps: float = 1e-6) -> Tensor:
    """
    Args:
        a: (R, 4); b: (G, 4).
    Returns:
        (R, G) IoU of every pair.
    """
    inter, union = _aligned_inter_union(a[:, None, :], b[None, :, :])
    return inter / union.clamp(min=eps)
