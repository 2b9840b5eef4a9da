"""
PKD's loss on one feature pair, pure PyTorch (spec crosskd_pkd.md section 3.1).

Both maps are standardised per channel over the whole batch (mean and unbiased std over
(N, H, W), ``eps`` added to the std), then compared by ``mean((norm(S) - norm(T))^2) / 2``. For one
channel of M positions this equals ``(M - 1) / M * (1 - r)`` with r the Pearson correlation (up to
``eps``), so the loss is invariant to any positive per-channel affine change of either side.
"""

from torch import Tensor

from d2kd.layers.channel_stats import channel_standardize

__all__ = ["pkd_loss"]


def pkd_loss(student: Tensor, teacher: Tensor, eps: float = 1e-6) -> Tensor:
    """
    Args:
        student: (N, C, H, W), keeps its gradient (through its statistics too).
        teacher: (N, C, H, W), same shape; treated as a constant.
    Returns:
        scalar: the mean over all N * C * H * W elements of the squared difference of the
        standardised maps, halved.
    """
    if student.shape != teacher.shape:
        raise ValueError(
            f"PKD compares maps of one shape: student {tuple(student.shape)} vs teacher "
            f"{tuple(teacher.shape)}"
        )
    diff = channel_standardize(student, eps) - channel_standardize(teacher.detach(), eps)
    return diff.pow(2).mean() / 2
