"""
The per-object IoU threshold of ATSS (Zhang et al., CVPR 2020), on its own.

For each ground-truth box g: on every level take the ``topk`` anchors whose centres are closest to
g's centre (``min(topk, anchors of that level)``), and set ``gamma_g = mean + std`` (unbiased std)
of their IoUs with g. ATSS keeps the candidates with IoU >= gamma_g as positives; LD's valuable
localization region is defined relative to gamma_g, so it needs the threshold alone.

This is a stand-alone copy of the ATSS statistic, so LD does not depend on a particular ATSS
assigner implementation; a unified assigner may later provide the same value.

Shape shorthand: R anchors of all levels (level by level), G ground-truth boxes, xyxy.
"""

from typing import Optional, Sequence

import torch
from torch import Tensor

from .box_ops import pairwise_iou

__all__ = ["atss_iou_thresholds"]


def _centres(boxes: Tensor) -> Tensor:
    return torch.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], dim=1)


def atss_iou_thresholds(
    anchors: Tensor,
    num_anchors_per_level: Sequence[int],
    gt_boxes: Tensor,
    topk: int = 9,
    valid: Optional[Tensor] = None,
    ious: Optional[Tensor] = None,
) -> Tensor:
    """
    Args:
        anchors: (R, 4) anchor boxes, ordered level by level.
        num_anchors_per_level: R_l per level (sum = R).
        gt_boxes: (G, 4).
        topk: candidates per level.
        valid: optional (R,) bool; invalid anchors (e.g. in batch padding) are never candidates and
            do not count towards a level's size, as in mmdet where the assigner only sees the
            valid anchors.
        ious: optional precomputed (R, G) IoU of anchors and ``gt_boxes``.
    Returns:
        (G,) ``mean + std`` of the candidates' IoU per ground-truth box (0 where there is no
        candidate; the std of a single candidate, undefined, counts as 0).
    """
    if ious is None:
        ious = pairwise_iou(anchors, gt_boxes)
    dist = torch.cdist(_centres(anchors), _centres(gt_boxes))  # (R, G)
    candidate_ious = []
    start = 0
    for size in num_anchors_per_level:
        level = slice(start, start + size)
        start += size
        d, iou = dist[level], ious[level]
        if valid is not None:
            keep = valid[level]
            d, iou = d[keep], iou[keep]
        k = min(topk, d.shape[0])
        if k == 0:
            continue
        idx = d.topk(k, dim=0, largest=False).indices  # (k, G)
        candidate_ious.append(iou.gather(0, idx))
    if not candidate_ious:
        return gt_boxes.new_zeros(gt_boxes.shape[0])
    cand = torch.cat(candidate_ious, dim=0)  # (sum_l k_l, G)
    std = cand.std(dim=0) if cand.shape[0] > 1 else torch.zeros_like(cand[0])
    return cand.mean(dim=0) + std
