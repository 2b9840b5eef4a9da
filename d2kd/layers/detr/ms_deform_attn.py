"""
Multi-scale deformable attention (Zhu et al., "Deformable DETR", ICLR 2021), in pure PyTorch.

Every query attends to ``P`` sampled points per head and per feature level, around its
reference point; the samples are read with bilinear interpolation (``F.grid_sample``), so the
module runs on CPU and GPU and gets its gradients from autograd, with no compiled operator.
(The official CUDA kernel computes the same sum faster; d2kd does not ship it.)

Shape shorthand:
    B: batch; Lq: queries; S = sum_l H_l * W_l: flattened multi-scale values;
    M: heads; D: channels per head; L: feature levels; P: points per head and level.
"""

import math
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["ms_deform_attn_core", "MSDeformAttn"]


def ms_deform_attn_core(
    value: Tensor,
    spatial_shapes: Sequence[Tuple[int, int]],
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """
    ``out[b, q, m] = sum_{l, p} w[b, q, m, l, p] * bilinear(value_l[b, :, m], loc[b, q, m, l, p])``.

    Args:
        value: (B, S, M, D), the levels flattened row-major one after the other.
        spatial_shapes: L pairs (H_l, W_l) with sum H_l * W_l == S.
        sampling_locations: (B, Lq, M, L, P, 2), (x, y) in [0, 1] of each level (0 and 1 are the
            outer edges of the map; outside points read zeros).
        attention_weights: (B, Lq, M, L, P).
    Returns:
        (B, Lq, M * D).
    """
    b, _, m, d = value.shape
    _, lq, _, n_levels, n_points, _ = sampling_locations.shape
    values = value.split([h * w for h, w in spatial_shapes], dim=1)
    # grid_sample's [-1, 1] coordinates, in the values' dtype (they differ under autocast).
    grids = (2 * sampling_locations - 1).to(value.dtype)
    sampled = []
    for lvl, (h, w) in enumerate(spatial_shapes):
        v = values[lvl].flatten(2).transpose(1, 2).reshape(b * m, d, h, w)  # (B*M, D, H, W)
        g = grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1)  # (B*M, Lq, P, 2)
        sampled.append(
            F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False)
        )  # (B*M, D, Lq, P)
    weights = attention_weights.transpose(1, 2).reshape(b * m, 1, lq, n_levels * n_points)
    out = (torch.stack(sampled, dim=-2).flatten(-2) * weights).sum(-1)  # (B*M, D, Lq)
    return out.view(b, m * d, lq).transpose(1, 2).contiguous()


class MSDeformAttn(nn.Module):
    """
    The attention module: projects the query to sampling offsets and attention weights, the
    input to values, samples with :func:`ms_deform_attn_core` and projects the result.
    """

    def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4):
        """
        Args:
            d_model: channels of queries and values (divisible by ``n_heads``).
            n_levels / n_heads / n_points: L, M, P above.
        """
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model {d_model} must be divisible by n_heads {n_heads}")
        self.d_model, self.n_levels, self.n_heads, self.n_points = (
            d_model,
            n_levels,
            n_heads,
            n_points,
        )
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        # Offsets start at zero weight with biases pointing in M evenly spread directions, the
        # p-th point p+1 units away (Deformable DETR's initialisation).
        nn.init.constant_(self.sampling_offsets.weight, 0.0)
        thetas = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = grid / grid.abs().max(-1, keepdim=True)[0]
        grid = grid.view(self.n_heads, 1, 1, 2).repeat(1, self.n_levels, self.n_points, 1)
        grid = grid * torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.view(-1))
        nn.init.constant_(self.attention_weights.weight, 0.0)
        nn.init.constant_(self.attention_weights.bias, 0.0)
        for proj in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.constant_(proj.bias, 0.0)

    def forward(
        self,
        query: Tensor,
        reference_points: Tensor,
        input_flatten: Tensor,
        spatial_shapes: Tensor,
        padding_mask: Optional[Tensor] = None,
    ) -> Tensor:
        """
        Args:
            query: (B, Lq, C).
            reference_points: (B, Lq, L, 2) points (x, y) in [0, 1], or (B, Lq, L, 4) boxes
                (cx, cy, w, h): offsets are then scaled by half the box size.
            input_flatten: (B, S, C) multi-scale values, levels flattened one after the other.
            spatial_shapes: (L, 2) long tensor of (H_l, W_l).
            padding_mask: (B, S) bool, True on padding (those values are zeroed).
        Returns:
            (B, Lq, C).
        """
        b, lq, _ = query.shape
        m, n_l, n_p = self.n_heads, self.n_levels, self.n_points
        shapes: List[Tuple[int, int]] = [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
        if len(shapes) != n_l:
            raise ValueError(f"expected {n_l} levels, got spatial_shapes of {len(shapes)}")
        value = self.value_proj(input_flatten)
        if padding_mask is not None:
            value = value.masked_fill(padding_mask[..., None], 0.0)
        value = value.view(b, -1, m, self.d_model // m)
        offsets = self.sampling_offsets(query).view(b, lq, m, n_l, n_p, 2)
        weights = self.attention_weights(query).view(b, lq, m, n_l * n_p).softmax(-1)
        weights = weights.view(b, lq, m, n_l, n_p)
        if reference_points.shape[-1] == 2:
            normalizer = torch.stack([spatial_shapes[:, 1], spatial_shapes[:, 0]], -1).to(query)
            locations = (
                reference_points[:, :, None, :, None, :]
                + offsets / normalizer[None, None, None, :, None, :]
            )
        elif reference_points.shape[-1] == 4:
            locations = (
                reference_points[:, :, None, :, None, :2]
                + offsets / n_p * reference_points[:, :, None, :, None, 2:] * 0.5
            )
        else:
            raise ValueError(
                f"reference_points must end in 2 or 4, got {tuple(reference_points.shape)}"
            )
        out = ms_deform_attn_core(value, shapes, locations, weights)
        return self.output_proj(out)
