"""
What a DETR-type detector hands to distillation losses: :class:`EncoderState` and
:class:`DETROutputs`.

Shape shorthand: K decoder stages; B images; N queries; C classes; d hidden channels;
L feature levels of sizes H_l x W_l; S = sum_l H_l * W_l.
"""

import dataclasses
from dataclasses import dataclass
from typing import List, Optional, Tuple

from torch import Tensor

__all__ = ["EncoderState", "DETROutputs"]


@dataclass
class EncoderState:
    """
    The flattened encoder inputs and the encoder output, enough to run the decoder again (or
    the encoder, for ``RERUN_ENCODER``) without the backbone.

    Attributes:
        src: (B, S, d) encoder inputs (projected backbone features), levels flattened.
        pos: (B, S, d) position encoding plus level embedding.
        mask: (B, S) bool, True on padding.
        spatial_shapes: (L, 2) long, (H_l, W_l).
        level_start_index: (L,) long, offset of each level in S.
        valid_ratios: (B, L, 2) float, (w, h) fraction of each level that is not padding.
        memory: (B, S, d) encoder output.
    """

    src: Tensor
    pos: Tensor
    mask: Tensor
    spatial_shapes: Tensor
    level_start_index: Tensor
    valid_ratios: Tensor
    memory: Tensor

    def float(self) -> "EncoderState":
        """A copy with fp32 floating tensors (the state of an autocast forward may be fp16)."""
        f = {k: getattr(self, k) for k in ("src", "pos", "valid_ratios", "memory")}
        return dataclasses.replace(self, **{k: v.float() for k, v in f.items() if v is not None})

    def level_maps(self, flat: Tensor) -> List[Tensor]:
        """(B, S, d) -> per level (B, d, H_l, W_l)."""
        maps = []
        for (h, w), start in zip(self.spatial_shapes.tolist(), self.level_start_index.tolist()):
            part = flat[:, start : start + h * w]  # (B, H*W, d)
            maps.append(part.transpose(1, 2).reshape(flat.shape[0], flat.shape[2], h, w))
        return maps


@dataclass
class DETROutputs:
    """
    One forward of a DETR: per-stage predictions and what DETRDistill reads.

    Attributes:
        pred_logits: (K, B, N, C) class logits (sigmoid classification) of every decoder stage.
        pred_boxes: (K, B, N, 4) boxes, cxcywh normalised by each image's unpadded size.
        hs: (K, B, N, d) decoder output states.
        features: L tensors (B, d, H_l, W_l): the encoder inputs (projected multi-scale features).
        masks: L tensors (B, H_l, W_l) bool, True on padding.
        encoder: the flattened encoder state (memory included).
        query_embed: (N, 2d) the learnable queries (positional half first, then content).
        image_sizes: B pairs (h, w) of the unpadded images.
        enc_logits / enc_boxes: two-stage only (else None): (B, S, C) class logits and
            (B, S, 4) boxes of the encoder proposals; ``query_embed`` is then per image,
            (B, N, 2d), made from the selected proposals.
    """

    pred_logits: Tensor
    pred_boxes: Tensor
    hs: Tensor
    features: List[Tensor]
    masks: List[Tensor]
    encoder: EncoderState
    query_embed: Tensor
    image_sizes: List[Tuple[int, int]]
    enc_logits: Optional[Tensor] = None
    enc_boxes: Optional[Tensor] = None

    @property
    def num_stages(self) -> int:
        return self.pred_logits.shape[0]
