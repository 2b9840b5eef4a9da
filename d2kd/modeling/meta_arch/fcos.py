"""
Detectron2's FCOS, registered for yacs configs (``MODEL.META_ARCHITECTURE: "FCOS"``), with
options (``MODEL.FCOS.HEAD_SCALES``, ``CENTERNESS_ON_REG``, ``BOX_PARAM``, ``TEST_SCORE_MODE``,
``POINT_OFFSET``; ``MODEL.DENSE_TEST.CLIP_BEFORE_NMS``) that make it compute what mmdetection's
(or torchvision's) FCOS computes, for teachers converted from those frameworks. The defaults
are Detectron2's FCOS.

Shape shorthand: N images, K classes, L levels, R points over all levels.
"""

from typing import Dict, List, Tuple

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
from detectron2.modeling.meta_arch.fcos import FCOS as _D2FCOS
from detectron2.modeling.meta_arch.fcos import FCOSHead
from detectron2.structures import Boxes, ImageList, Instances
from torch import Tensor, nn

from d2kd.layers.box_ops import box_centers
from d2kd.layers.scale import Scale

from .clip_nms import ClipBeforeNMSMixin
from .dense_config import dense_detector_config
from .mmdet_inference import score_factor_inference_batch

__all__ = ["FCOS", "FCOSScaledHead", "ExpDistanceTransform"]


class FCOSScaledHead(FCOSHead):
    """
    Detectron2's :class:`FCOSHead` (same parameter names) with mmdetection's options: a learnable
    scale per level on the box regression (``scales.{l}.scale``) and the centerness branch on the
    classification tower instead of the box tower.
    """

    def __init__(self, *, input_shape, conv_dims, scales: bool, centerness_on_reg: bool, **kwargs):
        """
        Args:
            input_shape / conv_dims / kwargs: as :class:`FCOSHead`.
            scales: add a :class:`Scale` (init 1) per level on the box regression.
            centerness_on_reg: centerness from the box tower (True) or the class tower.
        """
        super().__init__(input_shape=input_shape, conv_dims=conv_dims, **kwargs)
        self.centerness_on_reg = bool(centerness_on_reg)
        self.scales = nn.ModuleList([Scale(1.0) for _ in input_shape]) if scales else None

    def forward(self, features: List[Tensor]) -> Tuple[List[Tensor], List[Tensor], List[Tensor]]:
        """
        Args:
            features: L maps (N, C, H_l, W_l).
        Returns:
            logits (N, K, H_l, W_l), bbox_reg (N, 4, H_l, W_l) (scaled), centerness
            (N, 1, H_l, W_l): three lists of L tensors.
        """
        assert len(features) == self._num_features
        logits, bbox_reg, ctrness = [], [], []
        for level, feature in enumerate(features):
            cls_feature = self.cls_subnet(feature)
            bbox_feature = self.bbox_subnet(feature)
            logits.append(self.cls_score(cls_feature))
            reg = self.bbox_pred(bbox_feature)
            bbox_reg.append(self.scales[level](reg) if self.scales is not None else reg)
            ctrness.append(self.ctrness(bbox_feature if self.centerness_on_reg else cls_feature))
        return logits, bbox_reg, ctrness


class ExpDistanceTransform:
    """
    mmdetection's FCOS regression with ``norm_on_bbox=False``: distances ``exp(x)`` in pixels
    from the point (the centre of its anchor box) to the four sides (left, top, right, bottom).
    """

    def apply_deltas(self, deltas: Tensor, boxes: Tensor) -> Tensor:
        """deltas (M, 4) log-distances, boxes (M, 4) anchor boxes -> (M, 4) xyxy boxes."""
        centers = box_centers(boxes.to(deltas.dtype))  # (M, 2)
        distances = deltas.exp()
        return torch.cat([centers - distances[:, :2], centers + distances[:, 2:]], dim=1)

    def get_deltas(self, src_boxes: Tensor, target_boxes: Tensor) -> Tensor:
        """(M, 4) anchor boxes, (M, 4) targets -> (M, 4) log-distances (distances >= 1e-6)."""
        centers = box_centers(src_boxes)
        ltrb = torch.cat([centers - target_boxes[:, :2], target_boxes[:, 2:] - centers], dim=1)
        return ltrb.clamp(min=1e-6).log()


@META_ARCH_REGISTRY.register()
class FCOS(ClipBeforeNMSMixin, _D2FCOS):
    """
    :class:`detectron2.modeling.meta_arch.fcos.FCOS` with a ``from_config`` reading ``MODEL.FCOS``.
    Behaviour is Detectron2's own (points at (i + 0.5) x stride, as mmdet's, unless
    ``MODEL.FCOS.POINT_OFFSET``; regression normalised by stride, GIoU loss, centerness on the box
    tower) unless the mmdetection options are set; ``MODEL.DENSE_TEST.CLIP_BEFORE_NMS`` clips
    boxes to the image before NMS (default off: Detectron2's order).
    """

    @configurable
    def __init__(
        self,
        *,
        test_score_mode: str = "sqrt",
        clip_before_nms: bool = False,
        point_offset: float = 0.5,
        **kwargs,
    ):
        """
        Args:
            test_score_mode: "sqrt" (Detectron2) or "mmdet" (see ``MODEL.FCOS.TEST_SCORE_MODE``).
            clip_before_nms: clip test-time boxes to the image before NMS.
            point_offset: where the points sit in each cell, in strides (Detectron2: 0.5).
            kwargs: those of Detectron2's FCOS.
        """
        super().__init__(**kwargs)
        if test_score_mode not in ("sqrt", "mmdet"):
            raise ValueError(
                f'MODEL.FCOS.TEST_SCORE_MODE must be "sqrt" or "mmdet", got {test_score_mode!r}'
            )
        self.test_score_mode = test_score_mode
        self.clip_before_nms = bool(clip_before_nms)
        if point_offset != 0.5:  # Detectron2's FCOS builds its points at cell centres
            strides = [self.backbone.output_shape()[k].stride for k in self.head_in_features]
            self.anchor_generator = DefaultAnchorGenerator(
                sizes=[[s] for s in strides],
                aspect_ratios=[1.0],
                strides=strides,
                offset=point_offset,
            )

    @classmethod
    def from_config(cls, cfg) -> Dict:
        c = cfg.MODEL.FCOS
        head_cls, head_kwargs = FCOSHead, {}
        if c.HEAD_SCALES or not c.CENTERNESS_ON_REG:
            head_cls = FCOSScaledHead
            head_kwargs = {"scales": c.HEAD_SCALES, "centerness_on_reg": c.CENTERNESS_ON_REG}
        if c.BOX_PARAM not in ("relu", "exp"):
            raise ValueError(f'MODEL.FCOS.BOX_PARAM must be "relu" or "exp", got {c.BOX_PARAM!r}')
        extra = {"box2box_transform": ExpDistanceTransform()} if c.BOX_PARAM == "exp" else {}
        return {
            **dense_detector_config(cfg, "FCOS", head_cls, **head_kwargs),
            **extra,
            "center_sampling_radius": c.CENTER_SAMPLING_RADIUS,
            "focal_loss_alpha": c.FOCAL_LOSS_ALPHA,
            "focal_loss_gamma": c.FOCAL_LOSS_GAMMA,
            "test_score_mode": c.TEST_SCORE_MODE,
            "clip_before_nms": cfg.MODEL.DENSE_TEST.CLIP_BEFORE_NMS,
            "point_offset": c.POINT_OFFSET,
        }

    @property
    def kd_head_output_dims(self):
        """Per-anchor widths of the head's outputs: class logits, box deltas, centerness."""
        return [self.num_classes, 4, 1]

    def compute_ctrness_targets(self, anchors: List[Boxes], gt_boxes: List[Tensor]) -> Tensor:
        """Detectron2's centerness targets (N, R), from distances whatever the box coder."""
        if not isinstance(self.box2box_transform, ExpDistanceTransform):
            return super().compute_ctrness_targets(anchors, gt_boxes)
        points = Boxes.cat(anchors).tensor
        return torch.stack([self._ctrness(points, m) for m in gt_boxes])

    @staticmethod
    def _ctrness(points: Tensor, boxes: Tensor) -> Tensor:
        """points (R, 4) anchor boxes, boxes (R, 4) -> (R,) sqrt of the side ratios."""
        centers = box_centers(points)
        lr = torch.stack([centers[:, 0] - boxes[:, 0], boxes[:, 2] - centers[:, 0]], dim=1)
        tb = torch.stack([centers[:, 1] - boxes[:, 1], boxes[:, 3] - centers[:, 1]], dim=1)
        ratio = (lr.min(dim=1).values / lr.max(dim=1).values) * (
            tb.min(dim=1).values / tb.max(dim=1).values
        )
        return ratio.sqrt()

    def forward_inference(
        self, images: ImageList, features: List[Tensor], predictions: List[List[Tensor]]
    ) -> List[Instances]:
        """Detectron2's inference, or mmdetection's with ``test_score_mode`` "mmdet"."""
        if self.test_score_mode != "mmdet":
            return super().forward_inference(images, features, predictions)
        pred_logits, pred_deltas, pred_ctr = self._transpose_dense_predictions(
            predictions, self.kd_head_output_dims
        )
        anchors = self.anchor_generator(features)
        return score_factor_inference_batch(
            self, anchors, pred_logits, pred_deltas, pred_ctr, images.image_sizes
        )
