"""
Deformable DETR's multi-scale input: backbone maps projected to the transformer width (1x1
conv + GroupNorm), extra coarser levels from stride-2 3x3 convs, and per-level padding masks.

Shape shorthand: B images; C_l backbone channels of level l; d transformer width; H x W the
padded input size; H_l x W_l a level's size.
"""

import math
from typing import List, Tuple

from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["MultiScaleProjection", "downsample_mask"]


def downsample_mask(mask: Tensor, size) -> Tensor:
    """(B, H, W) bool padding mask -> (B, h, w) bool, nearest neighbour."""
    return F.interpolate(mask[None].float(), size=tuple(size)).to(mask.dtype)[0]


class MultiScaleProjection(nn.Module):
    """The ``input_proj`` of Deformable DETR."""

    def __init__(self, in_channels: List[int], hidden_dim: int, num_levels: int):
        """
        Args:
            in_channels: channels of the backbone maps used, finest first.
            hidden_dim: d.
            num_levels: levels returned (>= len(in_channels)); the first extra level reads the
                coarsest backbone map, later ones the previous extra level.
        """
        super().__init__()
        if num_levels < len(in_channels):
            raise ValueError(
                f"NUM_FEATURE_LEVELS {num_levels} is smaller than the {len(in_channels)} "
                "IN_FEATURES"
            )
        groups = math.gcd(32, hidden_dim)
        layers = [
            nn.Sequential(nn.Conv2d(c, hidden_dim, 1), nn.GroupNorm(groups, hidden_dim))
            for c in in_channels
        ]
        prev = in_channels[-1]
        for _ in range(num_levels - len(in_channels)):
            layers.append(
                nn.Sequential(
                    nn.Conv2d(prev, hidden_dim, 3, stride=2, padding=1),
                    nn.GroupNorm(groups, hidden_dim),
                )
            )
            prev = hidden_dim
        self.proj = nn.ModuleList(layers)
        self.num_inputs = len(in_channels)
        for seq in self.proj:
            nn.init.xavier_uniform_(seq[0].weight, gain=1)
            nn.init.constant_(seq[0].bias, 0)

    def forward(self, features: List[Tensor], mask: Tensor) -> Tuple[List[Tensor], List[Tensor]]:
        """
        Args:
            features: the backbone maps (B, C_l, H_l, W_l), finest first.
            mask: (B, H, W) bool, True on padding of the input image.
        Returns:
            (srcs, masks): L maps (B, d, H_l, W_l) and L masks (B, H_l, W_l).
        """
        srcs = [proj(f) for proj, f in zip(self.proj, features)]
        last = features[-1]
        for proj in self.proj[self.num_inputs :]:
            last = proj(last)
            srcs.append(last)
        return srcs, [downsample_mask(mask, s.shape[-2:]) for s in srcs]
