"""Sine position encoding of DETR, with Deformable DETR's half-pixel offset."""

import math

import torch
from torch import Tensor, nn

__all__ = ["PositionEmbeddingSine"]


class PositionEmbeddingSine(nn.Module):
    """
    ``sin/cos`` of the normalised (x, y) position of each valid pixel at ``num_pos_feats``
    frequencies per axis. Positions count valid (unpadded) pixels only, so every image's own
    region spans [0, scale] whatever the padding.
    """

    def __init__(
        self,
        num_pos_feats: int = 128,
        temperature: float = 10000.0,
        normalize: bool = True,
        scale: float = 2 * math.pi,
        offset: float = -0.5,
    ):
        """
        Args:
            num_pos_feats: channels per axis (the output has twice as many).
            temperature: base of the frequency progression.
            normalize: divide positions by the valid size and multiply by ``scale``.
            offset: added to the 1-based positions before normalising (Deformable DETR: -0.5,
                i.e. pixel centres).
        """
        super().__init__()
        self.num_pos_feats, self.temperature = num_pos_feats, temperature
        self.normalize, self.scale, self.offset = normalize, scale, offset

    def forward(self, mask: Tensor) -> Tensor:
        """
        Args:
            mask: (B, H, W) bool, True on padding.
        Returns:
            (B, 2 * num_pos_feats, H, W): y channels first, then x channels.
        """
        not_mask = (~mask).float()
        y_embed = not_mask.cumsum(1)
        x_embed = not_mask.cumsum(2)
        if self.normalize:
            eps = 1e-6
            y_embed = (y_embed + self.offset) / (y_embed[:, -1:, :] + eps) * self.scale
            x_embed = (x_embed + self.offset) / (x_embed[:, :, -1:] + eps) * self.scale
        dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32, device=mask.device)
        dim_t = self.temperature ** (
            2 * torch.div(dim_t, 2, rounding_mode="floor") / self.num_pos_feats
        )
        pos_x = x_embed[:, :, :, None] / dim_t  # (B, H, W, F)
        pos_y = y_embed[:, :, :, None] / dim_t
        pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)
        pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)
