"""
Per-channel batch statistics of feature maps, pure PyTorch (shared by CrossKD's alignment and PKD).

Shape shorthand: x is (N, C, H, W); statistics of channel c are taken over all M = N * H * W
positions of the batch (images coupled, as train-mode BN; batch padding included).
"""

from typing import Tuple

from torch import Tensor

__all__ = ["channel_mean_std", "channel_standardize"]


def channel_mean_std(x: Tensor) -> Tuple[Tensor, Tensor]:
    """
    Args:
        x: (N, C, H, W).
    Returns:
        mean and unbiased std, each (1, C, 1, 1). With a single position (M = 1) the unbiased std
        is undefined (NaN in torch); it is 0 here, so a standardised map is then all zeros.
    """
    dims = (0, 2, 3)
    mean = x.mean(dim=dims, keepdim=True)
    if x.numel() // x.shape[1] <= 1:
        return mean, (x - mean)  # exactly 0, with the same graph and shape
    return mean, x.std(dim=dims, keepdim=True, unbiased=True)


def channel_standardize(x: Tensor, eps: float = 1e-6) -> Tensor:
    """(N, C, H, W) -> same shape: ``(x - mean_c) / (std_c + eps)`` per channel (unbiased std)."""
    mean, std = channel_mean_std(x)
    return (x - mean) / (std + eps)
