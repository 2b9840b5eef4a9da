"""
The set-prediction loss of Deformable DETR: Hungarian matching, then sigmoid focal
classification, L1 and GIoU box losses, on the last decoder stage and (auxiliary) every earlier
one, each stage matched on its own.

Shape shorthand: K stages; B images; N queries; C classes; G targets of one image.
"""

from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.ops import sigmoid_focal_loss

from d2kd.utils.comm import reduce_mean

from ..box_ops import DETR_EPS, aligned_giou, box_cxcywh_to_xyxy
from .matcher import HungarianMatcher

__all__ = ["average_num_boxes", "SetCriterion"]

Indices = Tuple[Tensor, Tensor]


def average_num_boxes(num: float, device: torch.device) -> float:
    """The number of target boxes averaged over distributed workers, at least 1."""
    return max(float(reduce_mean(torch.as_tensor([float(num)], device=device)).item()), 1.0)


class SetCriterion(nn.Module):
    """
    Losses ``loss_ce``, ``loss_bbox``, ``loss_giou`` of the last stage and ``<name>_<k>`` of
    auxiliary stage k (0-based), already multiplied by their weights, normalised by the
    (all-reduced) number of target boxes.
    """

    def __init__(
        self,
        num_classes: int,
        matcher: HungarianMatcher,
        weight_class: float = 2.0,
        weight_bbox: float = 5.0,
        weight_giou: float = 2.0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        aux_loss: bool = True,
    ):
        super().__init__()
        self.num_classes, self.matcher, self.aux_loss = num_classes, matcher, aux_loss
        self.weights = {"loss_ce": weight_class, "loss_bbox": weight_bbox, "loss_giou": weight_giou}
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma

    def forward(
        self, pred_logits: Tensor, pred_boxes: Tensor, targets: List[Dict[str, Tensor]]
    ) -> Dict[str, Tensor]:
        """
        Args:
            pred_logits: (K, B, N, C); pred_boxes: (K, B, N, 4) cxcywh in [0, 1];
            targets: B dicts {"labels": (G,) long, "boxes": (G, 4) normalised cxcywh}.
        """
        pred_logits, pred_boxes = pred_logits.float(), pred_boxes.float()  # fp32 under autocast
        num_boxes = average_num_boxes(sum(len(t["labels"]) for t in targets), pred_logits.device)
        k_last = pred_logits.shape[0] - 1
        stages = range(k_last + 1) if self.aux_loss else [k_last]
        losses = {}
        for k in stages:
            indices = self.matcher(pred_logits[k], pred_boxes[k], targets)
            suffix = "" if k == k_last else f"_{k}"
            for name, value in self.stage_losses(
                pred_logits[k], pred_boxes[k], targets, indices, num_boxes
            ).items():
                losses[name + suffix] = value
        return losses

    def proposal_losses(
        self, logits: Tensor, boxes: Tensor, targets: List[Dict[str, Tensor]]
    ) -> Dict[str, Tensor]:
        """
        Two-stage: the set losses of the encoder proposals against the targets as one class
        (class 0: every target is labelled 0, as in Deformable DETR), keys suffixed ``_enc``.

        Args:
            logits: (B, S, C); boxes: (B, S, 4) cxcywh in [0, 1].
        """
        logits, boxes = logits.float(), boxes.float()
        binary = [{"labels": torch.zeros_like(t["labels"]), "boxes": t["boxes"]} for t in targets]
        indices = self.matcher(logits, boxes, binary)
        losses = self.stage_losses(logits, boxes, binary, indices)
        return {name + "_enc": value for name, value in losses.items()}

    def stage_losses(
        self,
        logits: Tensor,
        boxes: Tensor,
        targets: List[Dict[str, Tensor]],
        indices: List[Indices],
        num_boxes: Optional[float] = None,
    ) -> Dict[str, Tensor]:
        """
        Weighted losses of one stage for a given assignment (also used by DETRDistill's
        query-prior group, with the assignment its ``ASSIGNMENT`` setting selects).

        Args:
            logits: (B, N, C); boxes: (B, N, 4); indices: B pairs (query_idx, target_idx).
            num_boxes: normaliser (default: the all-reduced number of targets).
        """
        if num_boxes is None:
            num_boxes = average_num_boxes(sum(len(t["labels"]) for t in targets), logits.device)
        batch_idx = torch.cat([torch.full_like(q, i) for i, (q, _) in enumerate(indices)])
        query_idx = torch.cat([q for q, _ in indices])
        onehot = torch.zeros_like(logits)
        labels = torch.cat([t["labels"][g] for t, (_, g) in zip(targets, indices)])
        onehot[batch_idx, query_idx, labels] = 1.0
        # Focal loss summed over queries and classes, per target box (Deformable DETR).
        loss_ce = (
            sigmoid_focal_loss(logits, onehot, self.focal_alpha, self.focal_gamma).sum() / num_boxes
        )
        src = boxes[batch_idx, query_idx]  # (M, 4)
        tgt = torch.cat([t["boxes"][g] for t, (_, g) in zip(targets, indices)]).to(src)
        loss_bbox = F.l1_loss(src, tgt, reduction="sum") / num_boxes
        giou = aligned_giou(
            box_cxcywh_to_xyxy(src), box_cxcywh_to_xyxy(tgt), DETR_EPS, floor_areas=False
        )
        loss_giou = (1 - giou).sum() / num_boxes
        raw = {"loss_ce": loss_ce, "loss_bbox": loss_bbox, "loss_giou": loss_giou}
        return {k: v * self.weights[k] for k, v in raw.items()}
