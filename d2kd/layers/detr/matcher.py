"""
Hungarian matching of predictions to targets (DETR), with Deformable DETR's focal class cost.

Shape shorthand: B images; N predictions; C classes; G targets of one image.
"""

from typing import Dict, List, Tuple

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from ..box_ops import DETR_EPS, box_cxcywh_to_xyxy, pairwise_giou

__all__ = ["linear_assignment", "focal_class_cost", "HungarianMatcher"]

Indices = Tuple[Tensor, Tensor]


def linear_assignment(cost: Tensor) -> Indices:
    """
    Minimum-cost assignment of rows to columns (scipy; rectangular costs match min(R, C) pairs).

    Args:
        cost: (R, C) finite costs.
    Returns:
        (rows, cols): long tensors of equal length on ``cost``'s device, rows increasing.
    """
    if not torch.isfinite(cost).all():
        raise ValueError("linear_assignment: the cost matrix has NaN or inf entries")
    rows, cols = linear_sum_assignment(cost.detach().cpu().numpy())
    device = cost.device
    return torch.as_tensor(rows, dtype=torch.long, device=device), torch.as_tensor(
        cols, dtype=torch.long, device=device
    )


def focal_class_cost(logits: Tensor, labels: Tensor, alpha: float, gamma: float) -> Tensor:
    """
    ``alpha (1-p)^gamma (-log p) - (1-alpha) p^gamma (-log(1-p))`` of class ``labels[g]`` for
    each prediction: (N, C) logits, (G,) labels -> (N, G).
    """
    prob = logits.sigmoid()
    neg = (1 - alpha) * prob**gamma * (-(1 - prob + 1e-8).log())
    pos = alpha * (1 - prob) ** gamma * (-(prob + 1e-8).log())
    return pos[:, labels] - neg[:, labels]


class HungarianMatcher(nn.Module):
    """
    One-to-one matching per image minimising
    ``cost_class * focal + cost_bbox * L1(cxcywh) + cost_giou * (-GIoU)``.
    Boxes are normalised cxcywh (prediction and target alike).
    """

    def __init__(
        self,
        cost_class: float = 2.0,
        cost_bbox: float = 5.0,
        cost_giou: float = 2.0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ):
        super().__init__()
        self.cost_class, self.cost_bbox, self.cost_giou = cost_class, cost_bbox, cost_giou
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma

    def cost_matrix(self, logits: Tensor, boxes: Tensor, target: Dict[str, Tensor]) -> Tensor:
        """(N, C) logits, (N, 4) boxes, target {"labels": (G,), "boxes": (G, 4)} -> (N, G)."""
        cls = focal_class_cost(logits.float(), target["labels"], self.focal_alpha, self.focal_gamma)
        l1 = torch.cdist(boxes.float(), target["boxes"].float(), p=1)
        giou = pairwise_giou(
            box_cxcywh_to_xyxy(boxes.float()),
            box_cxcywh_to_xyxy(target["boxes"].float()),
            DETR_EPS,
            floor_areas=False,
        )
        return self.cost_bbox * l1 + self.cost_class * cls - self.cost_giou * giou

    @torch.no_grad()
    def forward(
        self, pred_logits: Tensor, pred_boxes: Tensor, targets: List[Dict[str, Tensor]]
    ) -> List[Indices]:
        """
        Args:
            pred_logits: (B, N, C); pred_boxes: (B, N, 4); targets: B dicts with "labels" (G,)
                and "boxes" (G, 4).
        Returns:
            B pairs (pred_idx, target_idx), each of length min(N, G).
        """
        out = []
        for logits, boxes, target in zip(pred_logits, pred_boxes, targets):
            if len(target["labels"]) == 0:
                empty = torch.empty(0, dtype=torch.long, device=logits.device)
                out.append((empty, empty))
                continue
            out.append(linear_assignment(self.cost_matrix(logits, boxes, target)))
        return out
