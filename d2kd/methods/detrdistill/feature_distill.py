"""
DETRDistill's target-aware feature distillation (Chang et al., ICCV 2023, Sec. 3.3, as in the
official ``Distiller.forward_train``): a soft mask from the similarity of the teacher's best
decoder queries with the teacher's encoder-input features, each query weighted by a quality
score (class probability x best IoU with the ground truth), and an MSE between the masked
teacher and student features.

Shape shorthand: B images; Nt teacher queries; C classes; T selected (query, class) entries;
d channels; H x W one feature level; G ground-truth boxes of one image.
"""

from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.nn import functional as F

from d2kd.layers.box_ops import DETR_EPS, box_cxcywh_to_xyxy, pairwise_iou

__all__ = [
    "select_quality_queries",
    "batch_quality_queries",
    "target_aware_mask",
    "masked_feature_mse",
]


@torch.no_grad()
def select_quality_queries(
    t_logits: Tensor,
    t_boxes: Tensor,
    hs: Tensor,
    gt_boxes: Optional[Tensor],
    image_size: Sequence[int],
    topk: int = 100,
    use_iou: bool = True,
) -> Tuple[Tensor, Tensor]:
    """
    The top-``topk`` entries of one image's flattened (Nt x C) teacher probabilities (a query may
    appear under several classes) and their quality ``t_s = p_{i,c} * max_g IoU(b_i, g)``
    (teacher box not clipped; no ground truth, or ``use_iou`` False: ``t_s = p_{i,c}``).

    Args:
        t_logits: (Nt, C); t_boxes: (Nt, 4) normalised cxcywh; hs: (Nt, d) decoder states;
        gt_boxes: (G, 4) pixel xyxy or None; image_size: (h, w).
    Returns:
        (queries (T, d), quality (T,)) with T = min(topk, Nt * C).
    """
    num_classes = t_logits.shape[-1]
    scores, flat = t_logits.sigmoid().flatten().topk(min(topk, t_logits.numel()))
    query = torch.div(flat, num_classes, rounding_mode="floor")
    quality = scores
    if use_iou and gt_boxes is not None and len(gt_boxes) > 0:
        h, w = image_size
        boxes = box_cxcywh_to_xyxy(t_boxes[query]) * t_boxes.new_tensor([w, h, w, h])
        quality = scores * pairwise_iou(boxes, gt_boxes.to(boxes), DETR_EPS).max(-1)[0]
    return hs[query], quality


@torch.no_grad()
def target_aware_mask(
    queries: Tensor,
    quality: Tensor,
    feature: Tensor,
    floor: float = 0.01,
    valid: Optional[Tensor] = None,
) -> Tensor:
    """
    ``psi(x) = m(x) / max_x m(x)`` with ``m(x) = max(sum_s t_s cos(h_s, F(x)), floor)``.

    Args:
        queries: (B, T, d); quality: (B, T); feature: (B, d, H, W) teacher features.
        valid: optional (B, H, W) bool, True on real pixels: padding is then excluded from the
            maximum and set to 0 (opt-in; the official code keeps padding).
    Returns:
        (B, 1, H, W) in [0, 1].
    """
    q = F.normalize(queries.float(), dim=-1)
    f = F.normalize(feature.float(), dim=1)
    sim = torch.einsum("btd,bdhw->bthw", q, f)
    mask = torch.einsum("bthw,bt->bhw", sim, quality.float()).clamp(min=floor)
    if valid is not None:
        mask = mask * valid
    peak = mask.flatten(1).max(-1)[0].clamp(min=1e-12)
    return (mask / peak[:, None, None]).unsqueeze(1)


def masked_feature_mse(student_feat: Tensor, teacher_feat: Tensor, mask: Tensor) -> Tensor:
    """
    ``mean_{b,c,x} (psi F_t - psi F_s)^2``.

    Args:
        student_feat / teacher_feat: (B, d, H, W); mask: (B, 1, H, W).
    Raises:
        ValueError: when the two features differ in shape.
    """
    if student_feat.shape != teacher_feat.shape:
        raise ValueError(
            f"feature distillation: student {tuple(student_feat.shape)} vs teacher "
            f"{tuple(teacher_feat.shape)}"
        )
    return F.mse_loss(mask * student_feat, mask * teacher_feat)


def batch_quality_queries(
    t_logits: Tensor,
    t_boxes: Tensor,
    hs: Tensor,
    gt_boxes: Optional[List[Tensor]],
    image_sizes: List[Sequence[int]],
    topk: int = 100,
    use_iou: bool = True,
) -> Tuple[Tensor, Tensor]:
    """:func:`select_quality_queries` for a batch: (B, Nt, .) inputs -> (B, T, d), (B, T)."""
    out = [
        select_quality_queries(
            t_logits[b],
            t_boxes[b],
            hs[b],
            None if gt_boxes is None else gt_boxes[b],
            size,
            topk,
            use_iou,
        )
        for b, size in enumerate(image_sizes)
    ]
    return torch.stack([q for q, _ in out]), torch.stack([t for _, t in out])
