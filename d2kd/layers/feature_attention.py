"""
Attention maps of feature maps, as used by FGD (CVPR 2022) and PGD (ECCV 2022).

Shape shorthand: N images, C channels, H x W one feature level. Every map is scaled so that its
mean is 1 (a softmax times the number of elements it is taken over). Pure PyTorch.
"""

import torch
from torch import Tensor
from torch.nn import functional as F

__all__ = ["spatial_attention", "pixel_channel_attention", "global_channel_attention"]


def spatial_attention(x: Tensor, tau: float) -> Tensor:
    """
    ``H*W * softmax_{hw}(mean_c |x| / tau)``, one softmax per image.

    Args:
        x: (N, C, H, W).
    Returns:
        (N, H, W).
    """
    n, _, h, w = x.shape
    g = x.abs().mean(dim=1).reshape(n, h * w)
    return (h * w * F.softmax(g / tau, dim=1)).reshape(n, h, w)


def pixel_channel_attention(x: Tensor, tau: float) -> Tensor:
    """
    PGD's channel attention, a softmax over channels at every pixel: ``C * softmax_c(|x| / tau)``.

    Args:
        x: (N, C, H, W) or (P, C) (selected pixels).
    Returns:
        same shape as ``x``.
    """
    return x.shape[1] * F.softmax(x.abs() / tau, dim=1)


def global_channel_attention(x: Tensor, tau: float) -> Tensor:
    """
    FGD's channel attention from spatially pooled magnitudes: ``C * softmax_c(mean_hw |x| / tau)``.

    Args:
        x: (N, C, H, W).
    Returns:
        (N, C).
    """
    g = x.abs().mean(dim=(2, 3))
    return x.shape[1] * torch.softmax(g / tau, dim=1)
