"""
GFL (Li et al., "Generalized Focal Loss: Learning Qualified and Distributed Bounding Boxes for
Dense Object Detection", NeurIPS 2020) for yacs configs (``MODEL.META_ARCHITECTURE: "GFL"``).

Shape shorthand: N images, K classes, L levels, R anchors over all levels (one per location,
level by level), P positives in the batch, n = reg_max, D = 4 (n + 1).

As mmdet's ``GFLHead`` (the head of the official GFL, LD and BCKD code):

* the classification branch predicts a joint class-quality score, trained with Quality Focal
  Loss against the IoU of the (detached) decoded box with its GT on positives, 0 elsewhere;
* the box branch predicts, per side, logits over n + 1 bins of distances in strides from the
  anchor centre; boxes are the expectation (integral) of the softmax, trained with GIoU and
  Distribution Focal Loss, both weighted by the positive's max predicted score (detached);
* the regression logits are multiplied by a learnable per-level scale inside the head, so the
  head's outputs (what distillation losses see) are the post-scale logits;
* positives come from ATSS on square ``8 x stride`` anchors with offset 0, over each image's valid
  anchors (its own extent rounded up to the size divisibility); anchors on the batch padding of a
  smaller image are never candidates and get no loss (mmdet's ``valid_flags``, label weight 0);
* normalisation: QFL by the number of positives (per image at least 1) averaged over workers;
  GIoU and DFL by the worker-averaged sum of the weights (at least 1).
"""

from typing import Dict, List, Tuple

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.modeling.meta_arch.retinanet import RetinaNetHead
from detectron2.structures import Boxes, ImageList, Instances
from detectron2.utils.events import get_event_storage
from fvcore.nn import giou_loss
from torch import Tensor, nn

from d2kd.layers.box_ops import aligned_iou, box_centers
from d2kd.layers.distribution_boxes import (
    DistributionBoxCoder,
    boxes_to_distances,
    distances_to_boxes,
    distribution_integral,
)
from d2kd.layers.gfl_losses import distribution_focal_loss, quality_focal_loss
from d2kd.layers.scale import Scale
from d2kd.utils.comm import reduce_mean

from .square_anchor import SquareAnchorDetector, num_positives

__all__ = ["GFL", "GFLHead"]


class GFLHead(RetinaNetHead):
    """
    Detectron2's :class:`RetinaNetHead` towers (``cls_subnet`` / ``bbox_subnet``, so taps such as
    ``head.cls_subnet.2`` work as for RetinaNet and ATSS), one anchor per location, a box branch
    of ``4 (reg_max + 1)`` distribution logits and a learnable scale per level on them.
    """

    def __init__(
        self, *, input_shape: List[ShapeSpec], conv_dims: List[int], reg_max: int = 16, **kwargs
    ):
        """
        Args:
            input_shape: one ShapeSpec per level.
            conv_dims: channels of each tower convolution.
            reg_max: n; the box branch predicts n + 1 bins per side.
            kwargs: ``num_classes``, ``norm``, ``prior_prob`` of :class:`RetinaNetHead`.
        """
        super().__init__(input_shape=input_shape, conv_dims=conv_dims, num_anchors=1, **kwargs)
        self.bbox_pred = nn.Conv2d(conv_dims[-1], 4 * (reg_max + 1), kernel_size=3, padding=1)
        nn.init.normal_(self.bbox_pred.weight, std=0.01)
        nn.init.constant_(self.bbox_pred.bias, 0.0)
        self.scales = nn.ModuleList([Scale(1.0) for _ in input_shape])

    def forward(self, features: List[Tensor]) -> Tuple[List[Tensor], List[Tensor]]:
        """
        Args:
            features: L maps (N, C, H_l, W_l).
        Returns:
            logits (N, K, H_l, W_l) and bbox_reg (N, D, H_l, W_l) (already scaled): two lists of L.
        """
        assert len(features) == self._num_features
        logits, bbox_reg = [], []
        for feature, scale in zip(features, self.scales):
            logits.append(self.cls_score(self.cls_subnet(feature)))
            bbox_reg.append(scale(self.bbox_pred(self.bbox_subnet(feature))))
        return logits, bbox_reg


@META_ARCH_REGISTRY.register()
class GFL(SquareAnchorDetector):
    """
    GFL detector (see the module docstring). ``box2box_transform`` is a
    :class:`DistributionBoxCoder`, whose ``apply_deltas`` decodes distribution logits against
    the anchors (centre -/+ integral * stride), so Detectron2's decoding helpers apply.
    Inference scores are the sigmoid of the joint class-quality logits.
    """

    @configurable
    def __init__(
        self,
        *,
        reg_max: int = 16,
        qfl_beta: float = 2.0,
        qfl_loss_weight: float = 1.0,
        giou_loss_weight: float = 2.0,
        dfl_loss_weight: float = 0.25,
        **kwargs,
    ):
        """
        Args:
            reg_max: n (the head must predict 4 (n + 1) logits per anchor).
            qfl_beta / *_loss_weight: QFL exponent and the three loss weights.
            kwargs: those of :class:`SquareAnchorDetector` (backbone, head, head_in_features,
                num_classes, pixel_mean and pixel_std required; anchor and test parameters).
        """
        super().__init__(**kwargs)
        self.reg_max = int(reg_max)
        self.box2box_transform = DistributionBoxCoder(self.reg_max, self.anchor_scale)
        self.qfl_beta = qfl_beta
        self.qfl_loss_weight = qfl_loss_weight
        self.giou_loss_weight = giou_loss_weight
        self.dfl_loss_weight = dfl_loss_weight

    @classmethod
    def from_config(cls, cfg) -> Dict:
        c = cfg.MODEL.GFL
        return {
            **cls.shared_config(cfg, "GFL", GFLHead, reg_max=c.REG_MAX),
            "reg_max": c.REG_MAX,
            "qfl_beta": c.QFL_BETA,
            "qfl_loss_weight": c.QFL_LOSS_WEIGHT,
            "giou_loss_weight": c.GIOU_LOSS_WEIGHT,
            "dfl_loss_weight": c.DFL_LOSS_WEIGHT,
        }

    @property
    def kd_head_output_dims(self) -> List[int]:
        """Per-anchor widths of the head's outputs: joint class-quality logits,
        distribution logits."""
        return [self.num_classes, 4 * (self.reg_max + 1)]

    def kd_decode_boxes(self, box_reg: Tensor, anchors: Tensor) -> Tensor:
        """
        Args:
            box_reg: (N, R, D) distribution logits (post-scale, as the head returns them).
            anchors: (R, 4) anchors of all levels.
        Returns:
            (N, R, 4) boxes in input pixels: anchor centre -/+ Integral(softmax) * stride.
        """
        return self.box2box_transform.apply_deltas(box_reg, anchors[None])

    def forward_training(self, images, features, predictions, gt_instances) -> Dict[str, Tensor]:
        pred_logits, pred_dists = self._transpose_dense_predictions(
            predictions, self.kd_head_output_dims
        )
        anchors = self.anchor_generator(features)
        valid = self.valid_anchors(features, images.image_sizes)
        gt_labels, gt_boxes = self.label_anchors(anchors, gt_instances, valid)
        return self.losses(anchors, pred_logits, gt_labels, pred_dists, gt_boxes)

    def losses(self, anchors, pred_logits, gt_labels, pred_dists, gt_boxes) -> Dict[str, Tensor]:
        """
        Args:
            anchors: L Boxes; pred_logits / pred_dists: L tensors (N, R_l, K / D);
            gt_labels: N (R,); gt_boxes: N (R, 4), from :meth:`label_anchors` (labels -1 on
                invalid anchors, which no loss sees).
        Returns:
            ``loss_gfl_cls`` (QFL), ``loss_gfl_bbox`` (GIoU), ``loss_gfl_dfl`` (DFL).
        """
        gt_labels, gt_boxes = torch.stack(gt_labels), torch.stack(gt_boxes)  # (N, R), (N, R, 4)
        pos_mask = (gt_labels >= 0) & (gt_labels != self.num_classes)
        normalizer = num_positives(pos_mask)
        get_event_storage().put_scalar("num_pos_anchors", pos_mask.sum().item() / len(gt_labels))
        logits = torch.cat(pred_logits, dim=1).float()  # (N, R, K)
        dists = torch.cat(pred_dists, dim=1).float()  # (N, R, D)

        pos_anchors = Boxes.cat(anchors).tensor[None].expand_as(gt_boxes)[pos_mask]  # (P, 4)
        strides = self.box2box_transform.strides(pos_anchors)[:, None]  # (P, 1)
        # Everything below is in stride units, as mmdet (GIoU and IoU are scale-invariant).
        centers = box_centers(pos_anchors) / strides  # (P, 2)
        target_boxes = gt_boxes[pos_mask] / strides  # (P, 4)
        pos_dists = dists[pos_mask]  # (P, D)
        pred_boxes = distances_to_boxes(centers, distribution_integral(pos_dists, self.reg_max))
        # Weight of each positive: its max predicted score (detached).
        weights = logits.detach().sigmoid().max(dim=-1).values[pos_mask]  # (P,)

        # QFL target: IoU of the detached prediction with its GT on positives, 0 elsewhere.
        quality = torch.zeros_like(gt_labels, dtype=logits.dtype)
        quality[pos_mask] = aligned_iou(pred_boxes.detach(), target_boxes)
        valid = gt_labels >= 0  # -1: anchor on batch padding (mmdet: label weight 0)
        loss_cls = quality_focal_loss(
            logits[valid], gt_labels[valid], quality[valid], beta=self.qfl_beta
        ).sum()

        weight_sum = reduce_mean(weights.sum()).clamp(min=1.0)
        loss_bbox = (giou_loss(pred_boxes, target_boxes) * weights).sum()
        target_dists = boxes_to_distances(centers, target_boxes, self.reg_max)  # (P, 4)
        loss_dfl = distribution_focal_loss(
            pos_dists.reshape(-1, self.reg_max + 1), target_dists.flatten()
        )
        # mmdet averages the DFL over the four sides (avg_factor 4) before the weight sum.
        loss_dfl = (loss_dfl * weights.repeat_interleave(4)).sum() / 4.0
        return {
            "loss_gfl_cls": self.qfl_loss_weight * loss_cls / normalizer,
            "loss_gfl_bbox": self.giou_loss_weight * loss_bbox / weight_sum,
            "loss_gfl_dfl": self.dfl_loss_weight * loss_dfl / weight_sum,
        }

    def forward_inference(
        self, images: ImageList, features: List[Tensor], predictions: List[List[Tensor]]
    ) -> List[Instances]:
        pred_logits, pred_dists = self._transpose_dense_predictions(
            predictions, self.kd_head_output_dims
        )
        anchors = self.anchor_generator(features)
        results: List[Instances] = []
        for i, image_size in enumerate(images.image_sizes):
            scores = [x[i].sigmoid() for x in pred_logits]
            dists = [x[i] for x in pred_dists]
            results.append(self.inference_single_image(anchors, scores, dists, image_size))
        return results
