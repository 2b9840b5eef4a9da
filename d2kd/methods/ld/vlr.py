"""
LD's valuable localization region (VLR; Zheng et al., CVPR 2022, Sec. 3.3), as the official code
(HikariTJU/LD ``ATSSAssigner.get_vlr_region``) builds it for one image.

1. ``gamma_g``: the ATSS IoU threshold of every ground-truth box g (:func:`atss_iou_thresholds`).
2. Anchor a is a VLR candidate of g when ``alpha * gamma_g <= DIoU(a, g) < gamma_g``
   (alpha = 0.25). Every anchor of every level is a candidate: no "centre inside the box" test, and
   ATSS positives are not excluded (a positive with IoU >= gamma can have DIoU < gamma).
3. With several such g, keep the one with the largest IoU; the anchor's VLR weight is that IoU
   (not the DIoU). Anchors whose weight is 0 are outside the region (the official code keeps
   ``weight > 0``).

DIoU is LD's official IoF-based form by default (see :mod:`d2kd.layers.diou`).
Shape shorthand: R anchors (level by level), G ground-truth boxes.
"""

from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor
from torchvision.ops import distance_box_iou

from d2kd.layers.atss_assign import atss_iou_thresholds
from d2kd.layers.box_ops import pairwise_iou
from d2kd.layers.diou import pairwise_diou_official

__all__ = ["vlr_region", "DIOU_MODES"]

DIOU_MODES = ("official", "textbook")


def vlr_region(
    anchors: Tensor,
    num_anchors_per_level: Sequence[int],
    gt_boxes: Tensor,
    alpha: float = 0.25,
    topk: int = 9,
    diou_mode: str = "official",
    valid: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor]:
    """
    Args:
        anchors: (R, 4) anchor boxes of one image, level by level.
        num_anchors_per_level: R_l per level.
        gt_boxes: (G, 4) ground truth of that image (G may be 0).
        alpha: lower bound of the region as a fraction of gamma.
        topk: ATSS candidates per level.
        diou_mode: "official" (IoF-based, LD's code) or "textbook" (IoU-based).
        valid: optional (R,) bool: anchors outside it are never in the region.
    Returns:
        weight: (R,) IoU with the selected ground truth inside the region, 0 outside.
        gt_index: (R,) long index of that ground truth, -1 outside the region.
    """
    if diou_mode not in DIOU_MODES:
        raise ValueError(f'VLR DIoU mode "{diou_mode}" is not one of {DIOU_MODES}')
    num_anchors = anchors.shape[0]
    weight = anchors.new_zeros(num_anchors)
    gt_index = torch.full((num_anchors,), -1, dtype=torch.long, device=anchors.device)
    if gt_boxes.shape[0] == 0 or num_anchors == 0:
        return weight, gt_index  # the official code crashes here; an empty region is the answer
    ious = pairwise_iou(anchors, gt_boxes)  # (R, G)
    gamma = atss_iou_thresholds(anchors, num_anchors_per_level, gt_boxes, topk, valid, ious)
    diou_fn = pairwise_diou_official if diou_mode == "official" else distance_box_iou
    diou = diou_fn(anchors, gt_boxes)
    member = (diou >= alpha * gamma[None]) & (diou < gamma[None])
    if valid is not None:
        member &= valid[:, None]
    masked = torch.where(member, ious, torch.full_like(ious, -1.0))
    best, idx = masked.max(dim=1)
    inside = best > 0
    weight[inside] = best[inside]
    gt_index[inside] = idx[inside]
    return weight, gt_index
