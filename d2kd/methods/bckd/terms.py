"""
The two per-prior terms of BCKD (Yang et al., "Bridging Cross-task Protocol Inconsistency for
Distillation in Dense Object Detection", ICCV 2023), as the official code (TinyTigerPan/BCKD @
121c9aa) computes them.

Shape shorthand: ``(...)`` any leading shape of priors (e.g. (N, R)); K classes; ``s`` student
logits, ``t`` teacher logits, ``p = sigmoid(s)``, ``q = sigmoid(t)`` (teacher detached).

* Classification (eq. of the binary classification distillation)::

      l_cls = sum_c |q_c - p_c| * BCE(s_c, q_c)

  summed over the classes; no temperature. The weight ``|q - p|`` is **not** detached on the
  student side: its gradient through ``p`` is part of the official loss (detaching would keep the
  value and change the gradient).
* Localization (IoU-based)::

      w = max_c |sg(q_c) - sg(p_c)|        (both sides detached)
      l_loc = w * (1 - GIoU(b_s, b_t))     (official config)  or  w * (1 - IoU(b_s, b_t))  (paper)

  ``b_s`` keeps its gradient, ``b_t`` is detached.

Normalisation (by the number of positives) and the loss weights are applied by the caller.
"""

import torch.nn.functional as F
from torch import Tensor

from d2kd.layers.box_ops import aligned_giou, aligned_iou

__all__ = ["bckd_cls_per_prior", "bckd_loc_weight", "bckd_loc_per_prior", "LOC_MODES"]

LOC_MODES = ("giou", "iou")


def bckd_cls_per_prior(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """
    Args:
        student_logits, teacher_logits: (..., K) raw sigmoid-classifier logits.
    Returns:
        (...) ``sum_c |q - p| * BCE(s, q)`` per prior (differentiable in the student logits,
        through the BCE *and* through the weight).
    """
    q = teacher_logits.detach().sigmoid()
    p = student_logits.sigmoid()
    bce = F.binary_cross_entropy_with_logits(student_logits, q, reduction="none")
    return ((q - p).abs() * bce).sum(dim=-1)


def bckd_loc_weight(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """
    Args:
        student_logits, teacher_logits: (..., K).
    Returns:
        (...) ``max_c |q - p|``, detached (no gradient reaches either model through it).
    """
    diff = teacher_logits.detach().sigmoid() - student_logits.detach().sigmoid()
    return diff.abs().max(dim=-1).values


def bckd_loc_per_prior(student_boxes: Tensor, teacher_boxes: Tensor, mode: str = "giou") -> Tensor:
    """
    Args:
        student_boxes, teacher_boxes: (..., 4) decoded xyxy boxes at the same priors.
        mode: "giou" (``1 - GIoU``, official code) or "iou" (``1 - IoU``, paper).
    Returns:
        (...) unweighted localization distance; the teacher boxes are detached.
    """
    if mode not in LOC_MODES:
        raise ValueError(f'BCKD localization mode "{mode}" is not one of {LOC_MODES}')
    overlap = aligned_giou if mode == "giou" else aligned_iou
    # Areas as mmdet's bbox_overlaps (official code): the raw w * h, also for inverted boxes.
    return 1.0 - overlap(student_boxes, teacher_boxes.detach(), signed_area=True)
