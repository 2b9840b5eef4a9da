"""GcBlock (Cao et al., GCNet): global context added to every pixel, FGD's relation module."""

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["GcBlock"]


class GcBlock(nn.Module):
    """
    ``R(x) = x + T(sum_hw softmax_hw(conv_mask(x)) * x)`` with the channel transform
    ``T = Conv1x1(C -> C/2) -> LayerNorm([C/2, 1, 1]) -> ReLU -> Conv1x1(C/2 -> C)``.

    Initialisation as FGD: ``conv_mask`` Kaiming (fan_in), the last conv zero, so ``R(x) = x``
    at the start; the rest PyTorch's defaults.

    Shape shorthand: N images, C channels, H x W.
    """

    def __init__(self, channels: int):
        super().__init__()
        if channels < 2:
            raise ValueError(f"GcBlock needs at least 2 channels, got {channels}")
        hidden = channels // 2
        self.conv_mask = nn.Conv2d(channels, 1, kernel_size=1)
        self.channel_add = nn.Sequential(
            nn.Conv2d(channels, hidden, kernel_size=1),
            nn.LayerNorm([hidden, 1, 1]),
            nn.ReLU(),
            nn.Conv2d(hidden, channels, kernel_size=1),
        )
        nn.init.kaiming_normal_(self.conv_mask.weight, mode="fan_in", nonlinearity="relu")
        nn.init.zeros_(self.conv_mask.bias)
        nn.init.zeros_(self.channel_add[-1].weight)
        nn.init.zeros_(self.channel_add[-1].bias)

    def context(self, x: Tensor) -> Tensor:
        """(N, C, H, W) -> (N, C, 1, 1): the attention-pooled global context."""
        n, c, h, w = x.shape
        attn = F.softmax(self.conv_mask(x).reshape(n, 1, h * w), dim=2)  # (N, 1, HW)
        return torch.bmm(x.reshape(n, c, h * w), attn.transpose(1, 2)).reshape(n, c, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        """(N, C, H, W) -> (N, C, H, W)."""
        return x + self.channel_add(self.context(x))
