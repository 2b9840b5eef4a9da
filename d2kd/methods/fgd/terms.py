"""
The masks and loss terms of FGD (Yang et al., CVPR 2022) on one FPN level (spec ``pgd_fgd.md`` 3).

Shape shorthand: N images, C channels, H x W the level, G boxes per image (padded; ``valid``
marks real ones). F^S / F^T: student (already channel-aligned) / teacher features. Pure PyTorch.
"""

from typing import Tuple

import torch
from torch import Tensor

from d2kd.layers.feature_attention import global_channel_attention, spatial_attention
from d2kd.methods.fgd.gc_block import GcBlock

__all__ = ["focal_masks", "fgd_feature_terms", "fgd_global_term"]


def focal_masks(boxes: Tensor, valid: Tensor, height: int, width: int) -> Tuple[Tensor, Tensor]:
    """
    FGD's foreground and background masks from boxes in feature-map coordinates (spec 3.2).

    A box covers rows floor(y1)..ceil(y2) and columns floor(x1)..ceil(x2), inclusive, with value
    1 / (rows * columns) counted *before* clipping to the map; overlapping boxes keep the maximum
    (the smaller box wins). The background is 1 where the foreground is 0, divided by its count.

    Args:
        boxes: (N, G, 4) xyxy in units of the level's cells; valid: (N, G) bool.
    Returns:
        fg, bg: (N, H, W) each.
    """
    x_min, y_min = boxes[..., 0].floor(), boxes[..., 1].floor()
    x_max, y_max = boxes[..., 2].ceil(), boxes[..., 3].ceil()
    value = 1.0 / ((y_max - y_min + 1) * (x_max - x_min + 1))  # (N, G)
    rows = torch.arange(height, device=boxes.device, dtype=boxes.dtype)
    cols = torch.arange(width, device=boxes.device, dtype=boxes.dtype)
    in_rows = (rows >= y_min[..., None]) & (rows <= y_max[..., None])  # (N, G, H)
    in_cols = (cols >= x_min[..., None]) & (cols <= x_max[..., None])  # (N, G, W)
    cover = in_rows[..., :, None] & in_cols[..., None, :] & valid[..., None, None]  # (N, G, H, W)
    if boxes.shape[1] == 0:
        fg = boxes.new_zeros((boxes.shape[0], height, width))
    else:
        fg = (cover * value[..., None, None]).amax(dim=1)
    bg = (fg == 0).to(fg.dtype)
    bg = bg / bg.sum(dim=(1, 2), keepdim=True).clamp(min=1.0)
    return fg, bg


def fgd_feature_terms(
    student: Tensor, teacher: Tensor, fg: Tensor, bg: Tensor, tau: float
) -> Tuple[Tensor, Tensor, Tensor]:
    """
    Focal terms and the attention loss (spec 3.3-3.5).

    Args:
        student, teacher: (N, C, H, W); fg, bg: (N, H, W) masks (:func:`focal_masks`).
    Returns:
        (L_fg, L_bg, L_at), scalars: ``L_fg = 1/N sum M_fg A^S_T A^C_T (F^S - F^T)^2`` (bg alike),
        ``L_at = 1/N sum |A^C_S - A^C_T| + 1/N sum |A^S_S - A^S_T|``.
    """
    n = student.shape[0]
    sp_t, sp_s = spatial_attention(teacher, tau), spatial_attention(student, tau)  # (N, H, W)
    ch_t, ch_s = global_channel_attention(teacher, tau), global_channel_attention(student, tau)
    weighted = sp_t[:, None] * ch_t[:, :, None, None] * (student - teacher) ** 2  # (N, C, H, W)
    l_fg = (weighted * fg[:, None]).sum() / n
    l_bg = (weighted * bg[:, None]).sum() / n
    l_at = (ch_s - ch_t).abs().sum() / n + (sp_s - sp_t).abs().sum() / n
    return l_fg, l_bg, l_at


def fgd_global_term(
    student: Tensor, teacher: Tensor, gc_student: GcBlock, gc_teacher: GcBlock
) -> Tensor:
    """
    FGD's global relation loss, ``1/N sum (R_S(F^S) - R_T(F^T))^2`` with one GcBlock per side.

    Args:
        student, teacher: (N, C, H, W).
    """
    return ((gc_student(student) - gc_teacher(teacher)) ** 2).sum() / student.shape[0]
