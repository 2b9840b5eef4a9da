"""
Class and box heads of Deformable DETR, applied to every decoder stage.

Shape shorthand: K stages; B images; N queries; d channels; C classes.
"""

import copy
import math
from typing import Tuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..box_ops import inverse_sigmoid

__all__ = ["MLP", "DetrPredictionHeads"]


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU in between."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims, dims[1:] + [output_dim]))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


class DetrPredictionHeads(nn.Module):
    """
    A linear classifier (sigmoid, focal-loss prior on the bias) and a 3-layer box MLP predicting
    a correction to the reference point in logit space. Without box refinement one pair of
    heads is shared by every stage; with it each stage has its own, and the box heads also
    refine the decoder's references (``bbox_embed`` is handed to the decoder).
    """

    def __init__(
        self,
        hidden_dim: int,
        num_classes: int,
        num_stages: int,
        with_box_refine: bool = False,
        prior_prob: float = 0.01,
        two_stage: bool = False,
    ):
        """
        Args:
            two_stage: add a last class/box head pair (index ``num_stages``) for the encoder
                proposals of two-stage Deformable DETR (which needs ``with_box_refine``).
        """
        super().__init__()
        if two_stage and not with_box_refine:
            raise ValueError(
                "MODEL.DEFORMABLE_DETR.TWO_STAGE needs WITH_BOX_REFINE (as the official code)"
            )
        class_embed = nn.Linear(hidden_dim, num_classes)
        nn.init.constant_(class_embed.bias, -math.log((1 - prior_prob) / prior_prob))
        bbox_embed = MLP(hidden_dim, hidden_dim, 4, 3)
        nn.init.constant_(bbox_embed.layers[-1].weight, 0.0)
        nn.init.constant_(bbox_embed.layers[-1].bias, 0.0)
        self.with_box_refine, self.num_stages = with_box_refine, num_stages
        self.two_stage = two_stage
        n = (num_stages + int(two_stage)) if with_box_refine else 1
        self.class_embed = nn.ModuleList(copy.deepcopy(class_embed) for _ in range(n))
        self.bbox_embed = nn.ModuleList(copy.deepcopy(bbox_embed) for _ in range(n))
        with torch.no_grad():
            # The first stage starts from small boxes (sigmoid(-2) = 0.12); later refining stages
            # start from "no change" of the previous box, as in Deformable DETR. Two-stage
            # starts every stage from its proposal box.
            self.bbox_embed[0].layers[-1].bias[2:] = 0.0 if two_stage else -2.0

    def proposals(self, features: Tensor, proposals: Tensor) -> Tuple[Tensor, Tensor]:
        """
        The encoder proposals' class logits and boxes (two-stage), from the last head pair.

        Args:
            features: (B, S, d) proposal features; proposals: (B, S, 4) boxes in logit space.
        Returns:
            logits (B, S, C) (class 0 scores the proposal), boxes (B, S, 4) in logit space.
        """
        k = self.num_stages
        return self.class_embed[k](features), self.bbox_embed[k](features) + proposals

    @property
    def refine_embed(self):
        """The box heads the decoder uses to refine references (None without refinement)."""
        return self.bbox_embed if self.with_box_refine else None

    def forward(self, hs: Tensor, init_reference: Tensor, inter_references: Tensor):
        """
        Args:
            hs: (K, B, N, d); init_reference: (B, N, 2|4); inter_references: (K, B, N, 2|4), the
                reference after each stage (stage k reads the one after stage k-1).
        Returns:
            logits (K, B, N, C), boxes (K, B, N, 4) cxcywh in [0, 1].
        """
        logits, boxes = [], []
        for k in range(hs.shape[0]):
            idx = k if self.with_box_refine else 0
            reference = inverse_sigmoid(init_reference if k == 0 else inter_references[k - 1])
            delta = self.bbox_embed[idx](hs[k])
            if reference.shape[-1] == 4:
                delta = delta + reference
            else:
                delta = torch.cat([delta[..., :2] + reference, delta[..., 2:]], -1)
            logits.append(self.class_embed[idx](hs[k]))
            boxes.append(delta.sigmoid())
        return torch.stack(logits), torch.stack(boxes)
