"""
The loss terms of PGD (Yang et al., ECCV 2022) on one FPN level (spec ``pgd_fgd.md`` 2.8-2.10).

Shape shorthand: N images, C channels, H x W the level; F^S / F^T student / teacher tower
features; P spatial attention (N, H, W); A per-pixel channel attention (N, C, H, W); masks
(N, 1, H, W). Attention-weighted terms use the teacher's attention. Pure PyTorch.
"""

from typing import Tuple

from torch import Tensor

from d2kd.layers.feature_attention import pixel_channel_attention, spatial_attention

__all__ = ["normalize_per_image", "pgd_cls_terms", "pgd_reg_terms"]


def normalize_per_image(mask: Tensor) -> Tensor:
    """
    Divide each image's map by its own number of non-zero entries (spec 2.8).

    Args:
        mask: (N, 1, H, W).
    Returns:
        (N, 1, H, W); an all-zero map stays zero.
    """
    count = (mask != 0).to(mask.dtype).sum(dim=(2, 3), keepdim=True)
    return mask / count.clamp(min=1e-10)


def pgd_cls_terms(
    student: Tensor, teacher: Tensor, fg_mask: Tensor, bg_mask: Tensor, tau: float
) -> Tuple[Tensor, Tensor, Tensor]:
    """
    Classification-tower terms (spec 2.9).

    Args:
        student, teacher: (N, C, H, W).
        fg_mask, bg_mask: (N, 1, H, W), already normalised (:func:`normalize_per_image`);
            any shape broadcasting to it works (e.g. (1, 1, H, W) to emulate batch mixing).
        tau: temperature of both attentions.
    Returns:
        (L_fg, L_bg, L_att), scalars:
        ``L_fg = 1/N sum M_fg P^T A^T (F^S - F^T)^2`` (same with M_bg), and
        ``L_att = 1/(N H W) sum |A^S - A^T| + 1/N sum |P^S - P^T|``.
    """
    n, _, h, w = student.shape
    p_t, p_s = spatial_attention(teacher, tau), spatial_attention(student, tau)  # (N, H, W)
    a_t, a_s = pixel_channel_attention(teacher, tau), pixel_channel_attention(student, tau)
    weighted = p_t[:, None] * a_t * (student - teacher) ** 2  # (N, C, H, W)
    l_fg = (weighted * fg_mask).sum() / n
    l_bg = (weighted * bg_mask).sum() / n
    l_att = (a_s - a_t).abs().sum() / (n * h * w) + (p_s - p_t).abs().sum() / n
    return l_fg, l_bg, l_att


def pgd_reg_terms(
    student: Tensor, teacher: Tensor, weight: Tensor, tau: float
) -> Tuple[Tensor, Tensor]:
    """
    Regression-tower terms on the pixels of non-zero importance, pooled over the batch (2.10).

    Args:
        student, teacher: (N, C, H, W).
        weight: (N, 1, H, W) raw (unnormalised) regression importance.
    Returns:
        (L_feat, L_att), scalars: with Omega the selected pixels and A_p = C softmax_c(|x_p|/tau),
        ``L_feat = 1/|Omega| sum_p w_p mean_c A^T_p (F^S_p - F^T_p)^2`` and
        ``L_att = 1/|Omega| sum_p sum_c |A^S_p - A^T_p|``; both 0 (in the graph) if Omega is empty.
    """
    c = student.shape[1]
    keep = weight[:, 0] != 0  # (N, H, W)
    if not bool(keep.any()):
        zero = student.sum() * 0.0
        return zero, zero
    s = student.permute(0, 2, 3, 1)[keep]  # (P, C)
    t = teacher.permute(0, 2, 3, 1)[keep]
    w = weight[:, 0][keep]  # (P,)
    a_t, a_s = pixel_channel_attention(t, tau), pixel_channel_attention(s, tau)
    l_feat = ((a_t * (s - t) ** 2).sum(dim=1) / c * w).mean()
    l_att = (a_s - a_t).abs().sum() / s.shape[0]
    return l_feat, l_att
