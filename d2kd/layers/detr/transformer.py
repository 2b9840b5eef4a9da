"""
The deformable transformer of Deformable DETR: an encoder of multi-scale deformable
self-attention over all feature levels, and a decoder of query self-attention plus deformable
cross-attention into the encoder memory, returning every layer's output (for auxiliary losses
and per-stage distillation).

Shape shorthand: B images; N queries; d channels; L levels of H_l x W_l; S = sum H_l * W_l;
K decoder layers.
"""

import copy
import dataclasses
import math
from typing import List, Optional, Tuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..box_ops import inverse_sigmoid
from .ms_deform_attn import MSDeformAttn
from .outputs import EncoderState

__all__ = ["DeformableTransformer", "EncoderLayer", "DecoderLayer"]


class _FFN(nn.Module):
    """Linear-ReLU-dropout-linear with a residual and a post-norm."""

    def __init__(self, d_model: int, d_ffn: int, dropout: float):
        super().__init__()
        self.linear1, self.linear2 = nn.Linear(d_model, d_ffn), nn.Linear(d_ffn, d_model)
        self.dropout1, self.dropout2 = nn.Dropout(dropout), nn.Dropout(dropout)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x: Tensor) -> Tensor:
        y = self.linear2(self.dropout1(F.relu(self.linear1(x))))
        return self.norm(x + self.dropout2(y))


class EncoderLayer(nn.Module):
    """Deformable self-attention over the flattened levels, then the FFN (post-norm)."""

    def __init__(self, d_model, d_ffn, dropout, n_levels, n_heads, n_points):
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(d_model)
        self.ffn = _FFN(d_model, d_ffn, dropout)

    def forward(self, src, pos, reference_points, spatial_shapes, padding_mask):
        """src, pos: (B, S, d); reference_points: (B, S, L, 2) -> (B, S, d)."""
        out = self.self_attn(src + pos, reference_points, src, spatial_shapes, padding_mask)
        return self.ffn(self.norm(src + self.dropout(out)))


class DecoderLayer(nn.Module):
    """Query self-attention, deformable cross-attention into the memory, FFN (post-norm)."""

    def __init__(self, d_model, d_ffn, dropout, n_levels, n_heads, n_points):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, n_heads, dropout=dropout, batch_first=True)
        self.dropout1, self.norm1 = nn.Dropout(dropout), nn.LayerNorm(d_model)
        self.cross_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.dropout2, self.norm2 = nn.Dropout(dropout), nn.LayerNorm(d_model)
        self.ffn = _FFN(d_model, d_ffn, dropout)

    def forward(self, tgt, query_pos, reference_points, memory, spatial_shapes, padding_mask):
        """tgt, query_pos: (B, N, d); reference_points: (B, N, L, 2|4) -> (B, N, d)."""
        q = k = tgt + query_pos
        out = self.self_attn(q, k, tgt, need_weights=False)[0]
        tgt = self.norm1(tgt + self.dropout1(out))
        out = self.cross_attn(
            tgt + query_pos, reference_points, memory, spatial_shapes, padding_mask
        )
        tgt = self.norm2(tgt + self.dropout2(out))
        return self.ffn(tgt)


def _clones(module: nn.Module, n: int) -> nn.ModuleList:
    return nn.ModuleList([copy.deepcopy(module) for _ in range(n)])


class DeformableTransformer(nn.Module):
    """
    Encoder + decoder. :meth:`flatten` and :meth:`encode` build an :class:`EncoderState`;
    :meth:`decode` runs the decoder for any set of queries on it (the query-prior distillation
    runs the student's decoder on the teacher's queries this way, reusing the memory).
    """

    def __init__(
        self,
        d_model: int = 256,
        nhead: int = 8,
        num_encoder_layers: int = 6,
        num_decoder_layers: int = 6,
        dim_feedforward: int = 1024,
        dropout: float = 0.1,
        num_feature_levels: int = 4,
        enc_n_points: int = 4,
        dec_n_points: int = 4,
        two_stage: bool = False,
    ):
        super().__init__()
        self.d_model, self.num_feature_levels = d_model, num_feature_levels
        self.two_stage = two_stage
        enc = EncoderLayer(
            d_model, dim_feedforward, dropout, num_feature_levels, nhead, enc_n_points
        )
        dec = DecoderLayer(
            d_model, dim_feedforward, dropout, num_feature_levels, nhead, dec_n_points
        )
        self.encoder_layers = _clones(enc, num_encoder_layers)
        self.decoder_layers = _clones(dec, num_decoder_layers)
        self.level_embed = nn.Parameter(torch.empty(num_feature_levels, d_model))
        if two_stage:
            # Encoder proposals: memory -> proposal features; proposal boxes -> queries.
            self.enc_output, self.enc_output_norm = nn.Linear(d_model, d_model), nn.LayerNorm(
                d_model
            )
            self.pos_trans = nn.Linear(2 * d_model, 2 * d_model)
            self.pos_trans_norm = nn.LayerNorm(2 * d_model)
        else:
            self.reference_points = nn.Linear(d_model, 2)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for m in self.modules():  # MSDeformAttn's own initialisation wins (zero offsets weights)
            if isinstance(m, MSDeformAttn):
                m._reset_parameters()
        if not self.two_stage:
            nn.init.xavier_uniform_(self.reference_points.weight)
            nn.init.constant_(self.reference_points.bias, 0.0)
        nn.init.normal_(self.level_embed)

    @property
    def num_decoder_layers(self) -> int:
        return len(self.decoder_layers)

    # ----------------------------------------------------------------------------- encoder
    def flatten(
        self, srcs: List[Tensor], masks: List[Tensor], pos_embeds: List[Tensor]
    ) -> EncoderState:
        """
        Args:
            srcs: L maps (B, d, H_l, W_l); masks: L (B, H_l, W_l) bool (True = padding);
            pos_embeds: L maps (B, d, H_l, W_l).
        Returns:
            an :class:`EncoderState` whose ``memory`` is still None (see :meth:`encode`).
        """
        if len(srcs) != self.num_feature_levels:
            raise ValueError(f"expected {self.num_feature_levels} levels, got {len(srcs)}")
        shapes = torch.as_tensor(
            [s.shape[-2:] for s in srcs], dtype=torch.long, device=srcs[0].device
        )
        src = torch.cat([s.flatten(2).transpose(1, 2) for s in srcs], 1)  # (B, S, d)
        pos = torch.cat(
            [
                p.flatten(2).transpose(1, 2) + self.level_embed[lvl]
                for lvl, p in enumerate(pos_embeds)
            ],
            1,
        )
        mask = torch.cat([m.flatten(1) for m in masks], 1)  # (B, S)
        start = torch.cat((shapes.new_zeros(1), shapes.prod(1).cumsum(0)[:-1]))
        ratios = torch.stack([self._valid_ratio(m) for m in masks], 1)  # (B, L, 2)
        return EncoderState(src, pos, mask, shapes, start, ratios, memory=None)

    @staticmethod
    def _valid_ratio(mask: Tensor) -> Tensor:
        """(B, H, W) padding mask -> (B, 2) valid fraction (w, h)."""
        _, h, w = mask.shape
        valid_h = (~mask[:, :, 0]).sum(1).float()
        valid_w = (~mask[:, 0, :]).sum(1).float()
        return torch.stack([valid_w / w, valid_h / h], -1)

    @staticmethod
    def _encoder_reference_points(shapes: Tensor, valid_ratios: Tensor) -> Tensor:
        """Pixel centres of every level, in each level's valid region: (B, S, L, 2)."""
        refs = []
        for lvl, (h, w) in enumerate(shapes.tolist()):
            ys, xs = torch.meshgrid(
                torch.linspace(0.5, h - 0.5, h, device=valid_ratios.device),
                torch.linspace(0.5, w - 0.5, w, device=valid_ratios.device),
                indexing="ij",
            )
            ref_y = ys.reshape(-1)[None] / (valid_ratios[:, None, lvl, 1] * h)
            ref_x = xs.reshape(-1)[None] / (valid_ratios[:, None, lvl, 0] * w)
            refs.append(torch.stack((ref_x, ref_y), -1))
        refs = torch.cat(refs, 1)  # (B, S, 2)
        return refs[:, :, None] * valid_ratios[:, None]

    def encode(self, state: EncoderState) -> EncoderState:
        """Run the encoder on ``state``'s inputs; returns a copy of it with ``memory`` set."""
        refs = self._encoder_reference_points(state.spatial_shapes, state.valid_ratios)
        out = state.src
        for layer in self.encoder_layers:
            out = layer(out, state.pos, refs, state.spatial_shapes, state.mask)
        return dataclasses.replace(state, memory=out)

    # ----------------------------------------------------------------------------- two-stage
    def encoder_proposals(self, state: EncoderState) -> Tuple[Tensor, Tensor]:
        """
        One proposal per memory position (two-stage): a box centred on the position, of side
        0.05 * 2^level of the valid image, and the memory transformed for the proposal heads.

        Returns:
            features (B, S, d): ``enc_output_norm(enc_output(memory))``, memory zeroed first on
            padding and on invalid proposals; proposals (B, S, 4) cxcywh in logit space, +inf on
            padding and where a coordinate is outside (0.01, 0.99).
        """
        b = state.memory.shape[0]
        props, start = [], 0
        for lvl, (h, w) in enumerate(state.spatial_shapes.tolist()):
            mask = state.mask[:, start : start + h * w].view(b, h, w)
            valid = torch.stack([(~mask[:, 0, :]).sum(1), (~mask[:, :, 0]).sum(1)], -1)  # (B, 2)
            ys, xs = torch.meshgrid(
                torch.arange(h, dtype=torch.float32, device=mask.device),
                torch.arange(w, dtype=torch.float32, device=mask.device),
                indexing="ij",
            )
            grid = torch.stack([xs, ys], -1).reshape(1, h * w, 2)
            centre = (grid + 0.5) / valid[:, None].float()
            size = torch.full_like(centre, 0.05 * 2.0**lvl)
            props.append(torch.cat([centre, size], -1))
            start += h * w
        props = torch.cat(props, 1)  # (B, S, 4)
        valid = ((props > 0.01) & (props < 0.99)).all(-1, keepdim=True)
        invalid = state.mask[..., None] | ~valid
        props = torch.log(props / (1 - props)).masked_fill(invalid, float("inf"))
        memory = state.memory.masked_fill(invalid, 0.0)
        return self.enc_output_norm(self.enc_output(memory)), props

    def proposal_queries(self, proposals: Tensor) -> Tensor:
        """
        Queries of the selected proposals (two-stage): sine embedding of the 4 sigmoid
        coordinates (d / 2 frequencies each, interleaved sin/cos), then ``pos_trans`` + norm.

        Args:
            proposals: (B, N, 4) in logit space.
        Returns:
            (B, N, 2d): positional half, then content half.
        """
        n_freq = self.d_model // 2
        dim_t = torch.arange(n_freq, dtype=torch.float32, device=proposals.device)
        dim_t = 10000.0 ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / n_freq)
        pos = proposals.sigmoid()[..., None] * (2 * math.pi) / dim_t  # (B, N, 4, F)
        pos = torch.stack((pos[..., 0::2].sin(), pos[..., 1::2].cos()), dim=4).flatten(2)
        return self.pos_trans_norm(self.pos_trans(pos))

    # ----------------------------------------------------------------------------- decoder
    def decode(
        self,
        state: EncoderState,
        query_embed: Tensor,
        bbox_embed: Optional[nn.ModuleList] = None,
        reference: Optional[Tensor] = None,
    ) -> Tuple[Tensor, Tensor, Tensor]:
        """
        Args:
            state: an encoded :class:`EncoderState`.
            query_embed: (N, 2d) queries, or (B, N, 2d) per image: positional half, then
                content half.
            bbox_embed: per-layer box heads for iterative box refinement (None: no refinement).
            reference: (B, N, 4) initial reference boxes in [0, 1] (two-stage); None: points
                from ``reference_points`` on the positional half.
        Returns:
            hs (K, B, N, d) every layer's output; init_reference (B, N, 2|4) sigmoid reference
            points or boxes; inter_references (K, B, N, 2|4) the references after each layer
            (equal to the initial ones without refinement).
        """
        b = state.memory.shape[0]
        query_pos, tgt = query_embed.split(self.d_model, dim=-1)
        if query_embed.dim() == 2:
            query_pos = query_pos[None].expand(b, -1, -1)
            tgt = tgt[None].expand(b, -1, -1)
        if reference is None:
            reference = self.reference_points(query_pos).sigmoid()  # (B, N, 2)
        init_reference = reference
        hs, inter = [], []
        for lid, layer in enumerate(self.decoder_layers):
            if reference.shape[-1] == 4:
                ratios = torch.cat([state.valid_ratios, state.valid_ratios], -1)
            else:
                ratios = state.valid_ratios
            ref_input = reference[:, :, None] * ratios[:, None]  # (B, N, L, 2|4)
            tgt = layer(tgt, query_pos, ref_input, state.memory, state.spatial_shapes, state.mask)
            if bbox_embed is not None:
                reference = self._refine(bbox_embed[lid](tgt), reference)
            hs.append(tgt)
            inter.append(reference)
        return torch.stack(hs), init_reference, torch.stack(inter)

    @staticmethod
    def _refine(delta: Tensor, reference: Tensor) -> Tensor:
        """Iterative box refinement: new reference = sigmoid(delta + logit(old)), detached."""
        if reference.shape[-1] == 4:
            new = delta + inverse_sigmoid(reference)
        else:
            new = torch.cat([delta[..., :2] + inverse_sigmoid(reference), delta[..., 2:]], -1)
        return new.sigmoid().detach()
