"""
CrossKD's per-element terms, pure PyTorch (spec crosskd_pkd.md sections 2.4 and 2.6).

Shape shorthand: N images, C channels, H x W one level, R priors, K classes, S = 4 box sides,
B = reg_max + 1 distribution bins.
"""

import torch
from torch import Tensor
from torch.nn import functional as F

from d2kd.layers.box_ops import aligned_giou, aligned_iou
from d2kd.layers.channel_stats import channel_mean_std

__all__ = [
    "align_to_teacher",
    "kd_quality_focal",
    "regression_weight",
    "giou_distance",
    "iou_log_distance",
    "distribution_kl",
    "AVG_EPS",
    "normalized_sum",
    "kl_regression_loss",
    "clamp_size_deltas",
]

# mmdet's weight_reduce_loss divides a sum by (avg_factor + float32 eps).
AVG_EPS = 1.1920928955078125e-07


def align_to_teacher(student: Tensor, teacher: Tensor, eps: float = 1e-6) -> Tensor:
    """
    Give the student's map the teacher's per-channel batch statistics (CrossKD's ``align_scale``).

    ``sigma_t * (s - mu_s) / (sigma_s + eps) + mu_t`` per channel; mean and unbiased std over
    all N * H * W positions of the batch (images coupled). The student's statistics keep their
    gradient, the teacher's are constants; ``eps`` is added to the student's std only. A single
    position gives std 0 (so the result is ``mu_t``) instead of the official NaN.

    Args:
        student: (N, C, H, W).
        teacher: (N, C, H, W) (or any shape with the same channel count).
    Returns:
        (N, C, H, W).
    """
    if student.shape[1] != teacher.shape[1]:
        raise ValueError(
            f"CrossKD aligns channel by channel: student {student.shape[1]} vs teacher "
            f"{teacher.shape[1]} channels (an adapter must map them first)"
        )
    mu_s, sd_s = channel_mean_std(student)
    mu_t, sd_t = channel_mean_std(teacher.detach())
    return sd_t * (student - mu_s) / (sd_s + eps) + mu_t


def kd_quality_focal(cross_logits: Tensor, teacher_logits: Tensor, beta: float = 1.0) -> Tensor:
    """
    ``BCE(s, q) * |sigmoid(s) - q|^beta`` elementwise, q = sigmoid(t) detached; the focal factor
    keeps its gradient through s (mmdet's KD quality focal loss).

    Args:
        cross_logits, teacher_logits: (..., K).
    Returns:
        (..., K).
    """
    q = teacher_logits.detach().sigmoid()
    bce = F.binary_cross_entropy_with_logits(cross_logits, q, reduction="none")
    return bce * (cross_logits.sigmoid() - q).abs().pow(beta)


def regression_weight(teacher_logits: Tensor) -> Tensor:
    """(..., K) -> (...): ``sigmoid(max_c t)``, the teacher's top class probability (no
    gradient)."""
    return teacher_logits.detach().max(dim=-1).values.sigmoid()


def giou_distance(boxes: Tensor, target: Tensor) -> Tensor:
    """(..., 4) xyxy pairs -> (...): ``1 - GIoU`` as mmdet (signed areas, union/hull floored
    at 1e-6)."""
    return 1.0 - aligned_giou(boxes, target.detach(), eps=1e-6, signed_area=True)


def iou_log_distance(boxes: Tensor, target: Tensor) -> Tensor:
    """(..., 4) xyxy pairs -> (...): ``-ln max(IoU, 1e-6)`` (mmdet's IoU loss, mode 'log')."""
    iou = aligned_iou(boxes, target.detach(), eps=1e-6, signed_area=True)
    return -iou.clamp(min=1e-6).log()


def distribution_kl(cross: Tensor, teacher: Tensor, bins: int, temperature: float = 1.0) -> Tensor:
    """
    KL(teacher || cross) of each side's bin distribution, summed over the bins, times T^2.

    Args:
        cross, teacher: (..., S * B) distribution logits (sides in order l, t, r, b).
        bins: B.
    Returns:
        (..., S).
    """
    shape = cross.shape[:-1] + (-1, bins)
    log_p_cross = F.log_softmax(cross.reshape(shape) / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher.detach().reshape(shape) / temperature, dim=-1)
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_cross)).sum(dim=-1)
    return kl * temperature**2


def normalized_sum(values: Tensor, weights: Tensor, normalizer) -> Tensor:
    """``sum(values * weights) / (normalizer + eps)`` (mmdet's avg_factor reduction); any shapes
    that broadcast, e.g. (N, R) per-prior terms and (N, R) prior weights."""
    return (values * weights).sum() / (normalizer + AVG_EPS)


def kl_regression_loss(
    cross: Tensor, teacher: Tensor, weights: Tensor, bins: int, temperature: float = 1.0
) -> Tensor:
    """
    GFL's CrossKD regression term: ``sum_i w_i sum_e KL_ie / sum_i w_i`` (the official config's
    weight 4.0 against its avg_factor 4 makes the effective weight 1; the official (4 + eps)
    divisor is taken as 4). ``sum w`` is not clamped in the official code; here a sum of 0 (only
    padding priors) gives 0 instead of NaN.

    Args:
        cross, teacher: (..., 4 * bins) distribution logits; weights: (...) prior weights.
    Returns:
        scalar.
    """
    kl = distribution_kl(cross, teacher, bins, temperature).sum(dim=-1)  # (...)
    return (kl * weights).sum() / weights.sum().clamp(min=1e-12)


def clamp_size_deltas(deltas: Tensor, weights, scale_clamp: float) -> Tensor:
    """
    Clamp the width and height deltas from below, ``dw / w_w >= -scale_clamp`` (likewise dh),
    so that a coder that clamps from above only (Detectron2's ``Box2BoxTransform``) decodes as
    mmdet's ``DeltaXYWHBBoxCoder``, which clamps ``|dw|, |dh|`` to ``ln(1000 / 16)``: no box
    narrower or lower than ``1 / 62.5`` of its anchor. Centre deltas are untouched; the gradient
    passes where a delta is inside the bound (as ``clamp``).

    Args:
        deltas: (..., 4) raw deltas (dx, dy, dw, dh) times the coder's ``weights``.
        weights: the coder's (w_x, w_y, w_w, w_h).
        scale_clamp: the coder's upper bound of ``dw / w_w``.
    Returns:
        (..., 4).
    """
    dw = deltas[..., 2:3].clamp(min=-scale_clamp * float(weights[2]))
    dh = deltas[..., 3:4].clamp(min=-scale_clamp * float(weights[3]))
    return torch.cat([deltas[..., :2], dw, dh], dim=-1)
