"""FGD's focal masks from ground-truth boxes: area-normalised foreground and background."""

from typing import Dict, List, Sequence

import torch
from detectron2.config import configurable
from torch import Tensor, nn

from d2kd.methods.fgd.terms import focal_masks
from d2kd.modeling.masks.ground_truth import pad_gt_instances
from d2kd.modeling.masks.registry import MASK_GENERATOR_REGISTRY
from d2kd.modeling.record import DistillRecord

__all__ = ["GTBoxMaskGenerator"]


@MASK_GENERATOR_REGISTRY.register()
class GTBoxMaskGenerator(nn.Module):
    """
    Per level, ``{"fg", "bg"}`` masks of shape (N, 1, H_l, W_l) (spec 3.2): a box covers the cells
    floor(x1/s)..ceil(x2/s) x floor(y1/s)..ceil(y2/s) (inclusive) with value 1/(its cell count),
    overlaps keep the max; the background is the rest, normalised to sum 1 per image.

    Boxes are mapped with the level's stride (d2kd default, exact for Detectron2's padding) or,
    with ``img_shape_mapping``, as the reference does: x / img_w * W with the unpadded image width
    and the padded feature width (``MODEL.KD.FGD.EMULATE_IMG_SHAPE_MAPPING``).
    """

    teacher_taps = ()

    @configurable
    def __init__(self, *, img_shape_mapping: bool = False):
        super().__init__()
        self.img_shape_mapping = img_shape_mapping

    @classmethod
    def from_config(cls, cfg, student: nn.Module = None, teacher: nn.Module = None):
        return {"img_shape_mapping": cfg.MODEL.KD.FGD.EMULATE_IMG_SHAPE_MAPPING}

    def forward(
        self, record: DistillRecord, level_shapes: Sequence[Sequence[int]], strides: Sequence[int]
    ) -> Dict[str, List[Tensor]]:
        """
        Args:
            level_shapes: (H_l, W_l) per level; strides: stride per level.
        """
        if record.gt_instances is None:
            raise ValueError("GTBoxMaskGenerator needs ground truth: the batch has no 'instances'")
        boxes, _, valid = pad_gt_instances(record.gt_instances, record.device)
        out: Dict[str, List[Tensor]] = {"fg": [], "bg": []}
        for (h, w), stride in zip(level_shapes, strides):
            fg, bg = focal_masks(self._map(boxes, record.image_sizes, h, w, stride), valid, h, w)
            out["fg"].append(fg[:, None])
            out["bg"].append(bg[:, None])
        return out

    def _map(self, boxes: Tensor, image_sizes, h: int, w: int, stride: int) -> Tensor:
        """(N, G, 4) input pixels -> feature cells of this level."""
        if not self.img_shape_mapping:
            return boxes / stride
        sizes = [[iw, ih, iw, ih] for ih, iw in image_sizes]
        img_wh = torch.as_tensor(sizes, dtype=boxes.dtype, device=boxes.device)[
            :, None
        ]  # (N, 1, 4)
        feat_wh = boxes.new_tensor([w, h, w, h])
        return boxes / img_wh * feat_wh  # this order, as the reference (spec 3.2)
