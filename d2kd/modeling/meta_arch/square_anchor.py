"""
What ATSS and GFL share (mmdet's ``ATSSHead`` and ``GFLHead`` have the same skeleton): one square
anchor of side ``anchor_scale x stride`` per location (offset 0), ATSS assignment, RetinaNet-style
towers, Detectron2's threshold / top-k / class-wise NMS inference.

Shape shorthand: N images, K classes, L levels, R anchors over all levels (one per location,
level by level, row-major as Detectron2's ``permute_to_N_HWA_K``).
"""

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.layers import batched_nms
from detectron2.modeling import Backbone
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
from detectron2.modeling.meta_arch.dense_detector import DenseDetector
from detectron2.structures import Boxes, Instances
from torch import Tensor, nn

from d2kd.layers.atss_assign import atss_assign
from d2kd.layers.prior_mask import valid_prior_mask
from d2kd.utils.comm import reduce_mean

from .dense_config import dense_detector_config

__all__ = [
    "SquareAnchorDetector",
    "atss_label_anchors",
    "num_positives",
    "square_anchor_generator",
]


def square_anchor_generator(strides: List[int], anchor_scale: float) -> DefaultAnchorGenerator:
    """One square anchor of side ``anchor_scale x stride`` per location, offset 0 (mmdet's
    ATSS/GFL)."""
    return DefaultAnchorGenerator(
        sizes=[[anchor_scale * s] for s in strides],
        aspect_ratios=[1.0],
        strides=strides,
        offset=0.0,
    )


@torch.no_grad()
def atss_label_anchors(
    anchors: List[Boxes],
    gt_instances: List[Instances],
    num_classes: int,
    topk: int,
    valid: Optional[Sequence[Tensor]] = None,
) -> Tuple[List[Tensor], List[Tensor]]:
    """
    ATSS labels of every anchor, in the format of Detectron2's ``RetinaNet.label_anchors``.

    Args:
        anchors: L Boxes (R_l, 4), the same for every image.
        gt_instances: N Instances with ``gt_boxes`` and ``gt_classes``.
        valid: optional N (R,) bool masks of the anchors on each image's own padded extent
            (:meth:`SquareAnchorDetector.valid_anchors`); only those are ATSS candidates, as in
            mmdet. None: every anchor is (a batch without padding).
    Returns:
        gt_labels: N tensors (R,), class in [0, K), K (background) or -1 (ignored: an invalid
            anchor, which mmdet gives ``label_weights = 0``).
        matched_gt_boxes: N tensors (R, 4), the assigned GT box (undefined on background).
    """
    sizes = [len(a) for a in anchors]
    flat = Boxes.cat(anchors).tensor  # (R, 4)
    gt_labels, matched_boxes = [], []
    if valid is not None and len(valid) != len(gt_instances):
        raise ValueError(f"{len(valid)} valid masks for {len(gt_instances)} images")
    for i, inst in enumerate(gt_instances):
        boxes = inst.gt_boxes.tensor
        mask = None if valid is None else valid[i]
        idx = atss_assign(flat, sizes, boxes, topk=topk, valid=mask).matched_gt_idx  # (R,)
        if len(inst) > 0:
            labels = inst.gt_classes[idx.clamp(min=0)]
            labels = torch.where(idx >= 0, labels, torch.full_like(labels, num_classes))
            matched = boxes[idx.clamp(min=0)]
        else:
            labels = torch.full_like(idx, num_classes)
            matched = torch.zeros_like(flat)
        if mask is not None:
            labels = torch.where(mask, labels, torch.full_like(labels, -1))
        gt_labels.append(labels)
        matched_boxes.append(matched)
    return gt_labels, matched_boxes


def num_positives(pos_mask: Tensor) -> Tensor:
    """
    mmdet's normaliser: sum over images of max(#positives, 1), averaged over workers, at least 1.

    Args:
        pos_mask: (N, R) bool.
    """
    per_image = pos_mask.sum(dim=1).clamp(min=1).sum().float()
    return reduce_mean(per_image).clamp(min=1.0)


class SquareAnchorDetector(DenseDetector):
    """
    Base of :class:`~d2kd.modeling.meta_arch.atss.ATSS` and
    :class:`~d2kd.modeling.meta_arch.gfl.GFL`:
    keeps the anchor generator, the ATSS ``topk`` and the test-time parameters, labels anchors
    with ATSS and runs one image's inference. Subclasses set ``box2box_transform`` and add their
    losses; :meth:`shared_config` is the common part of their ``from_config``.
    """

    def __init__(
        self,
        *,
        backbone: Backbone,
        head: nn.Module,
        head_in_features: List[str],
        num_classes: int,
        anchor_scale: float = 8.0,
        topk: int = 9,
        test_score_thresh: float = 0.05,
        test_topk_candidates: int = 1000,
        test_nms_thresh: float = 0.6,
        max_detections_per_image: int = 100,
        clip_before_nms: bool = False,
        pixel_mean: Tuple[float, ...],
        pixel_std: Tuple[float, ...],
    ):
        """
        Args:
            backbone / head / head_in_features: as :class:`DenseDetector`.
            num_classes: K.
            anchor_scale: anchor side in strides.
            topk: ATSS candidates per level and GT.
            test_*: score threshold, candidates per level before NMS, NMS IoU threshold.
            max_detections_per_image: detections kept after NMS.
            clip_before_nms: clip the decoded boxes to the image before NMS (mmdet) rather
                than after it (Detectron2's ``detector_postprocess``).
        """
        super().__init__(
            backbone, head, head_in_features, pixel_mean=pixel_mean, pixel_std=pixel_std
        )
        self.num_classes = num_classes
        shapes = backbone.output_shape()
        strides = [shapes[f].stride for f in self.head_in_features]
        self.anchor_scale = float(anchor_scale)
        self.anchor_generator = square_anchor_generator(strides, self.anchor_scale)
        self.topk = topk
        self.test_score_thresh = test_score_thresh
        self.test_topk_candidates = test_topk_candidates
        self.test_nms_thresh = test_nms_thresh
        self.max_detections_per_image = max_detections_per_image
        self.clip_before_nms = bool(clip_before_nms)

    @staticmethod
    def shared_config(cfg, node: str, head_cls, **head_kwargs) -> Dict:
        """
        The ``from_config`` entries ATSS and GFL read alike from ``cfg.MODEL.<node>``: those of
        :func:`dense_detector_config` plus ANCHOR_SCALE, TOPK and
        ``MODEL.DENSE_TEST.CLIP_BEFORE_NMS``.
        """
        c = cfg.MODEL[node]
        return {
            **dense_detector_config(cfg, node, head_cls, **head_kwargs),
            "anchor_scale": c.ANCHOR_SCALE,
            "topk": c.TOPK,
            "clip_before_nms": cfg.MODEL.DENSE_TEST.CLIP_BEFORE_NMS,
        }

    def valid_anchors(self, features: List[Tensor], image_sizes: Sequence) -> List[Tensor]:
        """
        Per image, (R,) bool: the anchor's location lies on the image's own extent rounded up to
        the backbone's size divisibility (mmdet's ``valid_flags`` on ``pad_shape``), not on the
        batch padding added for larger images.

        Args:
            features: L maps (N, C, H_l, W_l) the anchors were made for.
            image_sizes: N (h, w) before padding (``ImageList.image_sizes``).
        """
        shapes = [tuple(f.shape[-2:]) for f in features]
        strides = self.anchor_generator.strides
        div = self.backbone.size_divisibility
        device = features[0].device
        return [
            valid_prior_mask(shapes, strides, 1, tuple(size), div, device=device)
            for size in image_sizes
        ]

    def label_anchors(
        self,
        anchors: List[Boxes],
        gt_instances: List[Instances],
        valid: Optional[Sequence[Tensor]] = None,
    ) -> Tuple[List[Tensor], List[Tensor]]:
        """See :func:`atss_label_anchors` (background label = ``num_classes``)."""
        return atss_label_anchors(anchors, gt_instances, self.num_classes, self.topk, valid)

    def inference_single_image(
        self, anchors: List[Boxes], scores: List[Tensor], box_reg: List[Tensor], image_size
    ) -> Instances:
        """
        Detectron2's threshold + top-k per level + decode (with ``self.box2box_transform``),
        class-wise NMS, then the best ``max_detections_per_image``. (mmdet takes the top-k anchors
        by max score before thresholding each class; Detectron2's helper takes the top-k
        (anchor, class) pairs above the threshold.)

        Args:
            anchors: L Boxes (R_l, 4); scores: L (R_l, K) probabilities; box_reg: L (R_l, D)
                regression outputs of this image.
        """
        pred = self._decode_multi_level_predictions(
            anchors, scores, box_reg, self.test_score_thresh, self.test_topk_candidates, image_size
        )
        if self.clip_before_nms:
            pred.pred_boxes.clip(image_size)
        keep = batched_nms(
            pred.pred_boxes.tensor, pred.scores, pred.pred_classes, self.test_nms_thresh
        )
        return pred[keep[: self.max_detections_per_image]]
