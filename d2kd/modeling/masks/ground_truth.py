"""Ground truth in the padded tensor form that mask generators share."""

from typing import Sequence, Tuple

import torch
from detectron2.structures import Instances
from torch import Tensor

__all__ = ["pad_gt_instances"]


def pad_gt_instances(gt_instances: Sequence[Instances], device) -> Tuple[Tensor, Tensor, Tensor]:
    """
    Stack per-image ground truth, padded to the largest count.

    Returns:
        boxes (N, G, 4) float32, classes (N, G) int64, valid (N, G) bool.
    """
    n, g = len(gt_instances), max([len(x) for x in gt_instances] + [0])
    boxes = torch.zeros((n, g, 4), device=device)
    classes = torch.zeros((n, g), dtype=torch.long, device=device)
    valid = torch.zeros((n, g), dtype=torch.bool, device=device)
    for i, inst in enumerate(gt_instances):
        k = len(inst)
        boxes[i, :k] = inst.gt_boxes.tensor.to(device=device, dtype=torch.float32)
        classes[i, :k] = inst.gt_classes.to(device)
        valid[i, :k] = True
    return boxes, classes, valid
