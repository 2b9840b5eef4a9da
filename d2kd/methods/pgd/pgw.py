"""
Prediction-guided weighting (PGW) of PGD (Yang et al., ECCV 2022), batched over images and boxes.

Shape shorthand / naming:
    N: images; R: priors over all FPN levels (points, or anchors with every anchor of a location
    counted); G: ground-truth boxes per image, padded to the batch maximum (``gt_valid`` marks the
    real ones); K: candidates per box; A: anchors per location.
    Boxes are xyxy and positions (x, y), both in input-image pixels.

The steps (spec ``pgd_fgd.md`` 2.4-2.8): quality ``q = p^(1-xi) * IoU^xi`` of every prior for
every box, top-K priors per box jointly over all levels, a 2-D Gaussian fitted (MLE) to the K
candidate positions, the Gaussian weights of the candidates, and the importance of a prior =
max over boxes. Pure PyTorch: no Detectron2 import.
"""

from typing import List, Sequence, Tuple

import torch
from torch import Tensor

__all__ = [
    "IOU_EPS",
    "points_inside_boxes",
    "quality_score",
    "select_candidates",
    "gaussian_mle_weights",
    "prediction_guided_weights",
    "background_mask",
    "split_levels",
]

# Strict-inside margin of the reference code: cx - x1 > 1e-10, etc.
INSIDE_EPS = 1e-10
# Uniform jitter half-width (px) of the reference Gaussian fit, U(-0.05, 0.05).
REFERENCE_JITTER = 0.05
# Union floor of the IoU in the quality score (``box_ops.aligned_iou``; an empty union gives 0).
IOU_EPS = 1e-12


def points_inside_boxes(points: Tensor, boxes: Tensor, swap_xy: bool = False) -> Tensor:
    """
    Strict inside test, broadcasting ``points`` (..., 2) against ``boxes`` (..., 4).

    Args:
        swap_xy: read each point as (y, x), as the reference anchor-free code does by mistake
            (``EMULATE_AXIS_SWAP``, spec 2.14-B).
    Returns:
        bool tensor of the broadcast shape without the last dimension.
    """
    if swap_xy:
        points = points.flip(-1)
    x, y = points[..., 0], points[..., 1]
    return (
        (x - boxes[..., 0] > INSIDE_EPS)
        & (y - boxes[..., 1] > INSIDE_EPS)
        & (boxes[..., 2] - x > INSIDE_EPS)
        & (boxes[..., 3] - y > INSIDE_EPS)
    )


def quality_score(prob: Tensor, iou: Tensor, xi: float) -> Tensor:
    """
    PGD's prediction quality (Eq. 1 without the indicator): ``p^(1-xi) * IoU^xi``.

    Args:
        prob: (N, R, G) teacher probability of each box's class; iou: (N, R, G).
    """
    return prob.clamp(min=0) ** (1.0 - xi) * iou.clamp(min=0) ** xi


def select_candidates(quality: Tensor, k: int, positive_only: bool) -> Tuple[Tensor, Tensor]:
    """
    Top-``k`` priors per box, jointly over all levels.

    Args:
        quality: (N, R, G).
        positive_only: keep only candidates of non-zero quality (d2kd default, where the quality
            is already zero outside the box); otherwise all ``k`` count (reference).
    Returns:
        idx: (N, k', G) prior indices, k' = min(k, R); valid: (N, k', G) bool.
    """
    values, idx = quality.topk(min(k, quality.shape[1]), dim=1)
    valid = values > 0 if positive_only else torch.ones_like(values, dtype=torch.bool)
    return idx, valid


def _inverse_2x2(cov: Tensor) -> Tensor:
    """(..., 2, 2) -> adj(cov) / (det + 1e-10), the reference's analytic inverse."""
    a, b, c, d = cov[..., 0, 0], cov[..., 0, 1], cov[..., 1, 0], cov[..., 1, 1]
    det = (a * d - b * c)[..., None, None] + 1e-10
    adj = torch.stack([torch.stack([d, -b], -1), torch.stack([-c, a], -1)], -2)
    return adj / det


def gaussian_mle_weights(
    positions: Tensor, valid: Tensor, cov_eps: float = 1.0, jitter: float = 0.0
) -> Tensor:
    """
    Fit a 2-D Gaussian (maximum likelihood, biased covariance) to each set of valid positions
    and return exp(-1/2 Mahalanobis^2) at every position (peak 1, unnormalised).

    d2kd default: ``Sigma + cov_eps * I`` (1 px^2), no jitter, deterministic; a set with one
    position gets weight 1, an empty set weight 0. Reference (``EMULATE_COV_NOISE``):
    ``cov_eps = 0`` and ``jitter = 0.05``: the fit uses positions + U(-jitter, jitter), the
    weights are evaluated at the un-jittered positions.

    Args:
        positions: (..., K, 2); valid: (..., K) bool.
    Returns:
        (..., K) weights, 0 where not valid.
    """
    m = valid.to(positions.dtype)[..., None]  # (..., K, 1)
    count = m.sum(-2, keepdim=True).clamp(min=1.0)  # (..., 1, 1)
    fit = positions
    if jitter > 0:
        fit = positions + (torch.rand_like(positions) * 2.0 - 1.0) * jitter
    mu = (fit * m).sum(-2, keepdim=True) / count  # (..., 1, 2)
    centred = (fit - mu) * m
    cov = centred.transpose(-1, -2) @ centred / count  # (..., 2, 2)
    cov = cov + cov_eps * torch.eye(2, dtype=cov.dtype, device=cov.device)
    diff = positions - mu  # (..., K, 2), un-jittered positions
    maha = ((diff @ _inverse_2x2(cov)) * diff).sum(-1)  # (..., K)
    return torch.exp(-0.5 * maha) * m[..., 0]


def prediction_guided_weights(
    quality: Tensor,
    inside: Tensor,
    centres: Tensor,
    k: int,
    cov_eps: float = 1.0,
    topk_before_inside: bool = False,
    jitter: float = 0.0,
) -> Tensor:
    """
    PGW importance of every prior: ``max_g w_{r,g} 1[r in T_g] 1[r inside g]`` (spec 2.5-2.6).

    Args:
        quality: (N, R, G), zero for padded boxes and for priors that may not be candidates.
        inside: (N, R, G) bool, prior centre strictly inside the box (False for padded boxes).
        centres: (R, 2) prior centres (x, y).
        k: candidates per box.
        topk_before_inside: the reference order (``EMULATE_TOPK_BEFORE_INSIDE``): top-K on the
            unmasked quality, the indicator applied to the weights only. d2kd's default zeroes
            the quality outside the box first (Eq. 1) and fits on the non-zero candidates.
    Returns:
        (N, R) importance in [0, 1].
    """
    if not topk_before_inside:
        quality = quality * inside
    idx, valid = select_candidates(quality, k, positive_only=not topk_before_inside)  # (N, K, G)
    positions = centres[idx]  # (N, K, G, 2)
    w = gaussian_mle_weights(
        positions.transpose(1, 2), valid.transpose(1, 2), cov_eps, jitter
    ).transpose(1, 2)
    w = w * inside.gather(1, idx)  # only inside that very box (padded boxes: nowhere)
    out = w.new_zeros(quality.shape[:2])
    return out.scatter_reduce_(1, idx.flatten(1), w.flatten(1), reduce="amax")


def background_mask(inside: Tensor) -> Tensor:
    """
    Args:
        inside: (N, R, G) bool (False for padded boxes).
    Returns:
        (N, R) float: 1 where the prior centre is inside no box, else 0 (spec 2.7).
    """
    return (~inside.any(dim=2)).to(torch.float32)


def split_levels(
    values: Tensor, level_shapes: Sequence[Sequence[int]], num_anchors: int
) -> List[Tensor]:
    """
    Split a flat per-prior map into per-level maps, max over the anchors of a location.

    Args:
        values: (N, R) in Detectron2's order (level, then h, w, anchor).
        level_shapes: (H_l, W_l) per level.
    Returns:
        per level, (N, 1, H_l, W_l).
    """
    sizes = [h * w * num_anchors for h, w in level_shapes]
    if sum(sizes) != values.shape[1]:
        raise ValueError(f"{values.shape[1]} priors but the levels hold {sum(sizes)}")
    out = []
    for chunk, (h, w) in zip(values.split(sizes, dim=1), level_shapes):
        out.append(chunk.reshape(-1, h, w, num_anchors).amax(-1)[:, None])
    return out
