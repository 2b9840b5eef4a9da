"""
Boxes as discrete distributions over the distances from a prior's centre to the four sides
(GFL's "general distribution", Li et al., NeurIPS 2020, Sec. 3.3), pure PyTorch.

Shape shorthand: n = reg_max, so n + 1 bins {0, 1, ..., n} per side; D = 4 (n + 1) logits per
prior, ordered side by side (left, top, right, bottom), 17 bins each for n = 16. Distances are in
units of the prior's stride; boxes are xyxy.
"""

import torch
from torch import Tensor

from .box_ops import box_centers

__all__ = [
    "distribution_integral",
    "distances_to_boxes",
    "boxes_to_distances",
    "DistributionBoxCoder",
]


def distribution_integral(logits: Tensor, reg_max: int) -> Tensor:
    """
    Expected distance per side: ``sum_k k * softmax(logits_side)_k`` (GFL's Integral).

    Args:
        logits: (..., 4 (reg_max + 1)).
    Returns:
        (..., 4) distances (left, top, right, bottom) in [0, reg_max].
    """
    probs = logits.reshape(*logits.shape[:-1], 4, reg_max + 1).softmax(dim=-1)
    bins = torch.arange(reg_max + 1, dtype=probs.dtype, device=probs.device)
    return (probs * bins).sum(dim=-1)


def distances_to_boxes(centers: Tensor, distances: Tensor) -> Tensor:
    """centers (..., 2), distances (..., 4) ltrb -> (..., 4) xyxy (no clipping)."""
    return torch.cat([centers - distances[..., :2], centers + distances[..., 2:]], dim=-1)


def boxes_to_distances(centers: Tensor, boxes: Tensor, max_dist: float, eps: float = 0.1) -> Tensor:
    """
    centers (..., 2), boxes (..., 4) -> (..., 4) ltrb distances clipped to [0, max_dist - eps]
    (mmdet's ``bbox2distance``: the upper clip keeps a right neighbour bin for the DFL).
    """
    ltrb = torch.cat([centers - boxes[..., :2], boxes[..., 2:] - centers], dim=-1)
    return ltrb.clamp(min=0, max=max_dist - eps)


class DistributionBoxCoder:
    """
    Decodes distribution logits against square priors whose side is ``anchor_scale * stride``
    (GFL's anchors), so that each prior's stride is recovered from its own width and priors of
    all levels can be decoded together.

    Exposes ``apply_deltas`` like Detectron2's box transforms, so Detectron2's dense-detector
    decoding helpers work with it.
    """

    def __init__(self, reg_max: int, anchor_scale: float):
        self.reg_max = int(reg_max)
        self.anchor_scale = float(anchor_scale)

    def strides(self, anchors: Tensor) -> Tensor:
        """(..., 4) priors -> (...,) their level's stride."""
        return (anchors[..., 2] - anchors[..., 0]) / self.anchor_scale

    def apply_deltas(self, logits: Tensor, anchors: Tensor) -> Tensor:
        """
        Args:
            logits: (..., 4 (reg_max + 1)).
            anchors: (..., 4), broadcastable against ``logits``' leading dimensions.
        Returns:
            (..., 4) boxes in input pixels: centre -/+ integral * stride.
        """
        centers = box_centers(anchors)
        distances = distribution_integral(logits.float(), self.reg_max)
        return distances_to_boxes(centers, distances * self.strides(anchors)[..., None])
