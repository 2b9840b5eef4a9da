"""
DETRDistill's Hungarian-matching logits distillation (Chang et al., ICCV 2023, Sec. 3.2, as in
the official code): every teacher query is a soft target; student queries are matched to them
one-to-one with a soft-BCE + L1 + GIoU cost, then trained towards their match with the same
three terms. Low-score teacher queries are kept: their near-zero class vectors and boxes are
the "negative" (location) distillation.

Shape shorthand: B images; Ns / Nt student / teacher queries; C classes; boxes cxcywh
normalised by the unpadded image size (h, w).
"""

from typing import List, Sequence, Tuple

import torch
from torch import Tensor
from torch.nn import functional as F

from d2kd.layers.box_ops import (
    DETR_EPS,
    aligned_giou,
    box_cxcywh_to_xyxy,
    box_xyxy_to_cxcywh,
    pairwise_giou,
)
from d2kd.layers.detr.criterion import average_num_boxes
from d2kd.layers.detr.matcher import linear_assignment

__all__ = [
    "soft_bce_cost",
    "clamp_boxes_to_image",
    "to_pixels",
    "logits_distill_cost",
    "match_to_teacher",
    "logits_distill_losses",
]

Indices = Tuple[Tensor, Tensor]


def soft_bce_cost(student_logits: Tensor, teacher_probs: Tensor) -> Tensor:
    """
    ``cost[j, i] = sum_c BCE(z_jc, p_ic)``, the soft-target BCE **summed** over classes (the
    official ``DistillCrossEntropyLossCost``; a mean would shrink it C times and change the
    matching). Since ``BCE(z, p) = softplus(z) - p z``, this is one matrix product.

    Args:
        student_logits: (Ns, C); teacher_probs: (Nt, C) in [0, 1].
    Returns:
        (Ns, Nt).
    """
    return F.softplus(student_logits).sum(-1, keepdim=True) - student_logits @ teacher_probs.T


def to_pixels(boxes: Tensor, image_size: Sequence[int]) -> Tensor:
    """(..., 4) normalised cxcywh -> (..., 4) pixel xyxy for an image of size (h, w)."""
    h, w = image_size
    return box_cxcywh_to_xyxy(boxes) * boxes.new_tensor([w, h, w, h])


def clamp_boxes_to_image(boxes: Tensor) -> Tensor:
    """Normalised cxcywh boxes clipped to the image ([0, 1] in xyxy), back to cxcywh."""
    return box_xyxy_to_cxcywh(box_cxcywh_to_xyxy(boxes).clamp(0.0, 1.0))


def logits_distill_cost(
    s_logits: Tensor,
    s_boxes: Tensor,
    t_probs: Tensor,
    t_boxes: Tensor,
    image_size: Sequence[int],
    weights: Sequence[float] = (1.0, 5.0, 2.0),
) -> Tensor:
    """
    ``w_cls * soft-BCE + w_l1 * L1(cxcywh) - w_giou * GIoU(pixel xyxy)`` of every student query
    (row) against every teacher query (column): (Ns, C), (Ns, 4), (Nt, C), (Nt, 4) -> (Ns, Nt).
    """
    w_cls, w_l1, w_giou = weights
    cls = soft_bce_cost(s_logits, t_probs)
    l1 = torch.cdist(s_boxes, t_boxes, p=1)
    giou = pairwise_giou(
        to_pixels(s_boxes, image_size), to_pixels(t_boxes, image_size), DETR_EPS, floor_areas=False
    )
    return w_cls * cls + w_l1 * l1 - w_giou * giou


@torch.no_grad()
def match_to_teacher(
    s_logits: Tensor,
    s_boxes: Tensor,
    t_logits: Tensor,
    t_boxes: Tensor,
    image_sizes: List[Sequence[int]],
    weights: Sequence[float] = (1.0, 5.0, 2.0),
) -> List[Indices]:
    """
    One-to-one matching per image. With Ns <= Nt every student query is matched; with Ns > Nt
    Nt of them are, the others stay unmatched (background).

    Args:
        s_logits: (B, Ns, C); s_boxes: (B, Ns, 4); t_logits: (B, Nt, C); t_boxes: (B, Nt, 4);
        image_sizes: B pairs (h, w).
    Returns:
        B pairs (student_idx, teacher_idx).
    """
    out = []
    for b, size in enumerate(image_sizes):
        t_box = clamp_boxes_to_image(t_boxes[b].float())
        cost = logits_distill_cost(
            s_logits[b].float(),
            s_boxes[b].float(),
            t_logits[b].float().sigmoid(),
            t_box,
            size,
            weights,
        )
        out.append(linear_assignment(cost))
    return out


def logits_distill_losses(
    s_logits: Tensor,
    s_boxes: Tensor,
    t_logits: Tensor,
    t_boxes: Tensor,
    image_sizes: List[Sequence[int]],
    indices: List[Indices],
) -> Tuple[Tensor, Tensor, Tensor]:
    """
    Unweighted terms for a given matching with M matched pairs in the batch:
    ``cls = (1/M) sum_j sum_c BCE(z_jc, p_sigma(j)c)`` over all B*Ns student queries (unmatched
    ones, when Ns > Nt, get the all-zero target and still count in the sum, not in M),
    ``l1 = (1/M') sum ||b_j - b_sigma(j)||_1`` and ``giou = (1/M') sum (1 - GIoU)`` (pixel xyxy)
    over the matched pairs, M' = M averaged across processes (spec A4: the official code
    divides the class term by this process's M, the box terms by the all-reduced one; with
    Ns <= Nt every student query is matched and M = B*Ns). Teacher boxes are clipped to the
    image first, as in the official code.

    Returns:
        (cls, l1, giou) scalars.
    """
    target = torch.zeros_like(s_logits)
    t_probs = t_logits.sigmoid()
    s_sel, t_sel, scale = [], [], []
    for i, (si, ti) in enumerate(indices):
        target[i, si] = t_probs[i, ti].to(target)
        s_sel.append(s_boxes[i, si])
        t_sel.append(clamp_boxes_to_image(t_boxes[i, ti]))
        h, w = image_sizes[i]
        scale.append(s_boxes.new_tensor([w, h, w, h]).expand(len(si), 4))
    src, tgt, scale = torch.cat(s_sel), torch.cat(t_sel).to(s_boxes), torch.cat(scale)
    cls = F.binary_cross_entropy_with_logits(s_logits, target, reduction="sum") / max(len(src), 1)
    num = average_num_boxes(len(src), s_logits.device)
    l1 = F.l1_loss(src, tgt, reduction="sum") / num
    giou = aligned_giou(
        box_cxcywh_to_xyxy(src) * scale,
        box_cxcywh_to_xyxy(tgt) * scale,
        DETR_EPS,
        floor_areas=False,
    )
    return cls, l1, (1 - giou).sum() / num
