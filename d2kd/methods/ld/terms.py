"""
The loss terms of Localization Distillation (LD; Zheng et al., CVPR 2022 / TPAMI 2023), as the
official GFL code (HikariTJU/LD ``LDHead``) computes them.

Shape shorthand: P selected priors; B = reg_max + 1 bins per box side (17); K classes;
``z`` student distribution logits (P, 4, B), ``z_t`` teacher's; KL_T as in
:func:`d2kd.methods.ld.kd_kl.kl_div_with_temperature` (mean over the bins, times T^2).

* Main LD over the positives, weight = the student's own max class score (detached)::

      sum_i w_i * sum_e KL_10(z_ie, z_t_ie) / 4            # avg_factor 4: the only divisor

* VLR LD over the valuable localization region, weight = the anchor's VLR IoU::

      sum_i u_i * sum_e KL_10(z_ie, z_t_ie) / 16           # avg_factor 16

* Main KD (classification) over the positives, softmax over the classes at T = 2, averaged over
  the positives of each level, summed over levels (a level without positives gives 0).

Loss weights (0.25, 0.25, 10) and the batch-size dose (see :mod:`d2kd.methods.ld.loss`) are
applied by the caller.
"""

import torch
from torch import Tensor

from d2kd.methods.ld.kd_kl import kl_div_with_temperature

__all__ = ["weighted_distribution_kl", "per_level_mean_kl"]


def weighted_distribution_kl(
    student_dist: Tensor,
    teacher_dist: Tensor,
    weights: Tensor,
    temperature: float = 10.0,
    avg_factor: float = 4.0,
) -> Tensor:
    """
    ``sum_i w_i sum_e KL_T(z_ie, z_t_ie) / avg_factor`` (main LD with avg_factor 4, VLR LD with 16).

    Args:
        student_dist, teacher_dist: (P, 4, B) distribution logits of the selected priors.
        weights: (P,) per-prior weights (used as given; pass detached values).
        temperature: T.
        avg_factor: the constant divisor of the official code.
    Returns:
        scalar.
    """
    kl = kl_div_with_temperature(student_dist, teacher_dist, temperature)  # (P, 4)
    return (weights[:, None] * kl).sum() / avg_factor


def per_level_mean_kl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    level_ids: Tensor,
    num_levels: int,
    temperature: float = 2.0,
) -> Tensor:
    """
    ``sum_l mean_{i in level l} KL_T(s_i, t_i)``: LD's main KD on the positives.

    Args:
        student_logits, teacher_logits: (P, K) class logits of the positives of the batch.
        level_ids: (P,) level of each positive.
        num_levels: L.
    Returns:
        scalar (0, still differentiable, when P = 0).
    """
    kl = kl_div_with_temperature(student_logits, teacher_logits, temperature)  # (P,)
    sums = torch.zeros(num_levels, dtype=kl.dtype, device=kl.device).index_add(0, level_ids, kl)
    counts = torch.bincount(level_ids, minlength=num_levels).to(kl.dtype)
    return (sums / counts.clamp(min=1)).sum()
