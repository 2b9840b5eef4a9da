"""
Detectron2's RetinaNet with mmdetection's (and torchvision's) test-time box handling, for
teachers converted from those frameworks (``MODEL.META_ARCHITECTURE: "RetinaNetClipBeforeNMS"``).
"""

from typing import List, Tuple

from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.modeling.meta_arch.retinanet import RetinaNet
from detectron2.structures import Boxes, Instances
from torch import Tensor

__all__ = ["RetinaNetClipBeforeNMS"]


@META_ARCH_REGISTRY.register()
class RetinaNetClipBeforeNMS(RetinaNet):
    """
    :class:`detectron2.modeling.meta_arch.retinanet.RetinaNet` (same config keys, parameters,
    training) whose decoded test-time boxes are clipped to the image *before* class-wise NMS, as
    mmdetection and torchvision do; Detectron2 clips after NMS (``detector_postprocess``), so the
    overlaps NMS sees differ for boxes that cross the image border.
    """

    def _decode_multi_level_predictions(
        self,
        anchors: List[Boxes],
        pred_scores: List[Tensor],
        pred_deltas: List[Tensor],
        score_thresh: float,
        topk_candidates: int,
        image_size: Tuple[int, int],
    ) -> Instances:
        """Detectron2's decoding of all levels (see there), then the boxes clipped to
        ``image_size`` (h, w)."""
        pred = super()._decode_multi_level_predictions(
            anchors, pred_scores, pred_deltas, score_thresh, topk_candidates, image_size
        )
        pred.pred_boxes.clip(image_size)
        return pred
