"""
Adaptive Training Sample Selection (ATSS, Zhang et al., CVPR 2020, Algorithm 1), pure PyTorch.

Shape shorthand: R anchors of one image over all levels, ordered level by level; G ground-truth
boxes; R_l anchors on level l; C = sum_l min(topk, R_l) candidates per GT. Boxes are xyxy.

The rules are those of mmdet's ``ATSSAssigner`` (the reference code of BCKD, LD and GFL):

1. on every level, the ``topk`` anchors whose centres are closest (L2) to the GT centre are
   candidates (``topk`` clipped to the level's size; ties in ``torch.topk`` order);
2. the GT's threshold is ``t_g = mean + std`` of the candidates' IoU (std unbiased, N - 1);
3. a candidate is positive when ``IoU >= t_g`` and its centre lies inside the GT by more than
   ``center_eps`` (0.01) on all four sides;
4. an anchor positive for several GTs goes to the GT with which its IoU is largest (first GT
   on exact ties).

mmdet runs the assigner on an image's valid anchors only (those inside the image's own padded
extent, ``valid_flags``): with ``valid`` given, anchors outside it are never candidates and do not
count towards a level's size, so an object touching the batch padding of a smaller image draws its
candidates from the image alone (:func:`d2kd.layers.prior_mask.valid_prior_mask` gives the mask).

Everything is batched over GTs; the only Python loop is over the (few) levels.
:func:`atss_iou_thresholds` gives the thresholds alone (LD's valuable localization region needs
them), over the same valid anchors.
"""

from typing import NamedTuple, Optional, Sequence

import torch
from torch import Tensor

from .box_ops import box_centers, pairwise_iou

__all__ = ["ATSSAssignment", "atss_assign", "atss_iou_thresholds"]


class ATSSAssignment(NamedTuple):
    """
    Attributes:
        matched_gt_idx: (R,) long, index of the assigned GT, -1 for background.
        iou_thresholds: (G,) the per-GT threshold ``mean + std`` of the candidates' IoU.
        candidate_idxs: (C, G) long, anchor indices of each GT's candidates (level by level).
        ious: (R, G) IoU of every anchor with every GT.
    """

    matched_gt_idx: Tensor
    iou_thresholds: Tensor
    candidate_idxs: Tensor
    ious: Tensor


def _check_levels(num_anchors: int, num_anchors_per_level: Sequence[int]) -> None:
    if sum(num_anchors_per_level) != num_anchors:
        raise ValueError(
            f"num_anchors_per_level {list(num_anchors_per_level)} sums to "
            f"{sum(num_anchors_per_level)}, but {num_anchors} anchors were given"
        )


def _check_valid(num_anchors: int, valid: Optional[Tensor]) -> None:
    if valid is not None and tuple(valid.shape) != (num_anchors,):
        raise ValueError(
            f"valid must be a ({num_anchors},) bool mask, got shape {tuple(valid.shape)}"
        )


def _valid_level_sizes(
    num_anchors_per_level: Sequence[int], valid: Optional[Tensor]
) -> Sequence[int]:
    """Valid anchors per level (all of them when ``valid`` is None)."""
    if valid is None:
        return num_anchors_per_level
    return [int(v.sum()) for v in valid.split(list(num_anchors_per_level))]


def _candidates(
    anchor_centers: Tensor,
    gt_centers: Tensor,
    num_anchors_per_level: Sequence[int],
    topk: int,
    valid: Optional[Tensor] = None,
) -> Tensor:
    """
    (C, G) indices of the ``topk`` closest anchors per level and GT. With ``valid`` (R,) bool,
    a level is first reduced to its valid anchors (as mmdet's assigner only sees those), so
    ``C = sum_l min(topk, valid anchors of level l)``.
    """
    # Explicit L2 (not torch.cdist, whose matrix-product path can reorder near-ties).
    distances = (
        (anchor_centers[:, None, :] - gt_centers[None, :, :]).pow(2).sum(-1).sqrt()
    )  # (R, G)
    out, start = [], 0
    for n in num_anchors_per_level:
        level = distances[start : start + n]
        kept = None if valid is None else valid[start : start + n].nonzero().squeeze(1)
        if kept is not None:
            level = level[kept]
        idx = level.topk(min(topk, level.shape[0]), dim=0, largest=False).indices  # (k, G)
        out.append((idx if kept is None else kept[idx]) + start)
        start += n
    return torch.cat(out, dim=0)


def _iou_thresholds(candidate_ious: Tensor) -> Tensor:
    """(C, G) -> (G,) ``mean + std`` per GT (0 where there is no candidate)."""
    if candidate_ious.shape[0] == 0:
        return candidate_ious.new_zeros(candidate_ious.shape[1:])
    mean = candidate_ious.mean(dim=0)
    if candidate_ious.shape[0] < 2:
        # The std of one sample is undefined (NaN in the reference, which then selects nothing);
        # here the single candidate is judged against its own IoU, i.e. kept if its centre is
        # inside.
        return mean
    return mean + candidate_ious.std(dim=0)


def _centers_inside(centers: Tensor, gt_boxes: Tensor, eps: float) -> Tensor:
    """centers (C, G, 2), gt_boxes (G, 4) -> (C, G) bool: inside by more than ``eps`` on
    every side."""
    x, y = centers[..., 0], centers[..., 1]
    ltrb = torch.stack(
        [x - gt_boxes[:, 0], y - gt_boxes[:, 1], gt_boxes[:, 2] - x, gt_boxes[:, 3] - y], dim=-1
    )
    return ltrb.min(dim=-1).values > eps


def atss_assign(
    anchors: Tensor,
    num_anchors_per_level: Sequence[int],
    gt_boxes: Tensor,
    topk: int = 9,
    center_eps: float = 0.01,
    valid: Optional[Tensor] = None,
) -> ATSSAssignment:
    """
    Assign each anchor of one image to a GT box or to the background.

    Args:
        anchors: (R, 4) anchors of all levels, concatenated level by level.
        num_anchors_per_level: R_l per level (sum = R).
        gt_boxes: (G, 4) ground-truth boxes (G may be 0).
        topk: candidates per level and GT.
        center_eps: margin of the centre-inside-GT test, in pixels.
        valid: optional (R,) bool; invalid anchors (batch padding) are never candidates, hence
            always background, and do not count towards a level's size. None: all valid.
    Returns:
        :class:`ATSSAssignment`.
    Raises:
        ValueError: when the level sizes do not add up to R, or ``valid`` is not (R,).
    """
    num_anchors = anchors.shape[0]
    _check_levels(num_anchors, num_anchors_per_level)
    _check_valid(num_anchors, valid)
    anchors, gt_boxes = anchors.float(), gt_boxes.float()
    ious = pairwise_iou(anchors, gt_boxes)  # (R, G)
    num_gt = gt_boxes.shape[0]
    matched = torch.full((num_anchors,), -1, dtype=torch.long, device=anchors.device)
    if num_gt == 0:
        num_candidates = sum(min(topk, n) for n in _valid_level_sizes(num_anchors_per_level, valid))
        empty = torch.zeros((num_candidates, 0), dtype=torch.long, device=anchors.device)
        return ATSSAssignment(matched, ious.new_zeros((0,)), empty, ious)

    anchor_centers = box_centers(anchors)  # (R, 2)
    candidate_idxs = _candidates(
        anchor_centers, box_centers(gt_boxes), num_anchors_per_level, topk, valid
    )
    gt_idxs = torch.arange(num_gt, device=anchors.device).expand_as(candidate_idxs)  # (C, G)
    candidate_ious = ious[candidate_idxs, gt_idxs]  # (C, G)
    thresholds = _iou_thresholds(candidate_ious)
    is_pos = candidate_ious >= thresholds[None, :]
    is_pos &= _centers_inside(anchor_centers[candidate_idxs], gt_boxes, center_eps)

    # IoU of the positive (anchor, GT) pairs, -inf elsewhere; the best GT per anchor wins.
    pos_ious = torch.full_like(ious, float("-inf"))
    pos_anchor, pos_gt = candidate_idxs[is_pos], gt_idxs[is_pos]
    pos_ious[pos_anchor, pos_gt] = ious[pos_anchor, pos_gt]
    best_iou, best_gt = pos_ious.max(dim=1)
    matched = torch.where(best_iou > float("-inf"), best_gt, matched)
    return ATSSAssignment(matched, thresholds, candidate_idxs, ious)


def atss_iou_thresholds(
    anchors: Tensor,
    num_anchors_per_level: Sequence[int],
    gt_boxes: Tensor,
    topk: int = 9,
    valid: Optional[Tensor] = None,
    ious: Optional[Tensor] = None,
) -> Tensor:
    """
    The per-GT threshold ``mean + std`` of :func:`atss_assign` alone.

    Args:
        anchors: (R, 4) anchors, level by level; num_anchors_per_level: R_l per level (sum = R).
        gt_boxes: (G, 4); topk: candidates per level.
        valid: optional (R,) bool; invalid anchors (e.g. in batch padding) are never candidates
            and do not count towards a level's size.
        ious: optional precomputed (R, G) IoU of ``anchors`` and ``gt_boxes``.
    Returns:
        (G,) thresholds (0 where a GT has no candidate at all).
    Raises:
        ValueError: when the level sizes do not add up to R.
    """
    _check_levels(anchors.shape[0], num_anchors_per_level)
    _check_valid(anchors.shape[0], valid)
    if ious is None:
        ious = pairwise_iou(anchors, gt_boxes)
    candidate_idxs = _candidates(
        box_centers(anchors), box_centers(gt_boxes), num_anchors_per_level, topk, valid
    )
    return _iou_thresholds(ious.gather(0, candidate_idxs))
