"""
Temperature-scaled KL divergence between softmax distributions, as LD's official code computes it.

For student logits ``u`` and teacher logits ``v`` of length K (17 bins of one box side, or the
classes)::

    KL_T(u, v) = T^2 * (1/K) * sum_k P_k (log P_k - log S_k),
    P = softmax(v / T) (detached),  S = softmax(u / T)

The official ``KnowledgeDistillationKLDivLoss`` *averages* over the K entries (``.mean(1)``), so its
value is 1/K of the textbook KL (1/17 for LD, 1/80 for COCO class KD; HikariTJU/LD issue #74).
d2kd keeps the average by default so that the papers' loss weights carry over;
``mean_over_bins=False``
gives the textbook sum (then divide the weight by K for the same dose).
"""

import torch.nn.functional as F
from torch import Tensor

__all__ = ["kl_div_with_temperature"]


def kl_div_with_temperature(
    student_logits: Tensor, teacher_logits: Tensor, temperature: float, mean_over_bins: bool = True
) -> Tensor:
    """
    Args:
        student_logits: (..., K) raw logits (gradients flow into them).
        teacher_logits: (..., K) raw logits (detached here).
        temperature: T >= 1 (the official loss asserts it).
        mean_over_bins: average over K (official) instead of summing (textbook).
    Returns:
        (...) ``T^2 * KL(softmax(v/T) || softmax(u/T))`` per row.
    """
    if temperature < 1:
        raise ValueError(f"temperature must be >= 1, got {temperature}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} vs teacher {tuple(teacher_logits.shape)}"
        )
    t = temperature
    log_s = F.log_softmax(student_logits / t, dim=-1)
    log_p = F.log_softmax(teacher_logits.detach() / t, dim=-1)
    # Written with log_p rather than log(P) so that P_k = 0 terms are exactly 0.
    kl = (log_p.exp() * (log_p - log_s)).sum(dim=-1)
    if mean_over_bins:
        kl = kl / student_logits.shape[-1]
    return kl * (t * t)
