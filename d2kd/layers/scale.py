"""A learnable scalar multiplier (FCOS/ATSS/GFL heads apply one per FPN level to the regression)."""

import torch
from torch import Tensor, nn

__all__ = ["Scale"]


class Scale(nn.Module):
    """``x * s`` with a learnable scalar ``s`` (initialised to ``init``)."""

    def __init__(self, init: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(init)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale
