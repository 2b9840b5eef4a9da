"""Test-time options d2kd adds to Detectron2's dense detectors (``MODEL.DENSE_TEST``)."""

from typing import List, Tuple

import torch
from detectron2.structures import Boxes, Instances

__all__ = ["ClipBeforeNMSMixin"]


class ClipBeforeNMSMixin:
    """
    With ``self.clip_before_nms`` (``MODEL.DENSE_TEST.CLIP_BEFORE_NMS``), the decoded boxes of
    every level are clipped to the image before NMS, as torchvision and mmdetection do; Detectron2
    clips after NMS (in ``detector_postprocess``), which can keep or drop different boxes.
    """

    clip_before_nms = False

    def _decode_multi_level_predictions(
        self,
        anchors: List[Boxes],
        pred_scores: List[torch.Tensor],
        pred_deltas: List[torch.Tensor],
        score_thresh: float,
        topk_candidates: int,
        image_size: Tuple[int, int],
    ) -> Instances:
        pred = super()._decode_multi_level_predictions(
            anchors, pred_scores, pred_deltas, score_thresh, topk_candidates, image_size
        )
        if self.clip_before_nms:
            pred.pred_boxes.clip(image_size)
        return pred
