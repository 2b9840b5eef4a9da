"""
ATSS (Zhang et al., "Bridging the Gap Between Anchor-based and Anchor-free Detection via Adaptive
Training Sample Selection", CVPR 2020) for yacs configs (``MODEL.META_ARCHITECTURE: "ATSS"``).

Shape shorthand: N images, K classes, L levels, R anchors over all levels (one per location,
level by level, row-major as Detectron2's ``permute_to_N_HWA_K``), P positives in the batch.

Training follows mmdet's ``ATSSHead`` (the configuration of the paper's released models): one
square anchor of side ``8 x stride`` per location (offset 0), ATSS assignment
(:func:`d2kd.layers.atss_assign.atss_assign`) over each image's valid anchors (anchors on the
batch padding of a smaller image are never candidates and get no loss, mmdet's ``valid_flags``
and label weight 0), sigmoid focal loss normalised by the number of
positives averaged over workers, GIoU on decoded boxes weighted by the centerness targets and
normalised by their sum, BCE on centerness.
"""

import logging
from typing import Dict, List, Optional, Tuple

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.meta_arch.retinanet import RetinaNetHead
from detectron2.structures import Boxes, ImageList, Instances
from detectron2.utils.events import get_event_storage
from fvcore.nn import giou_loss, sigmoid_focal_loss_jit
from torch import Tensor, nn
from torch.nn import functional as F

from d2kd.layers.box_ops import box_centers
from d2kd.layers.scale import Scale
from d2kd.utils.comm import reduce_mean

from .mmdet_inference import score_factor_inference_batch
from .square_anchor import SquareAnchorDetector, num_positives

__all__ = ["ATSS", "ATSSHead", "centerness_targets"]

logger = logging.getLogger(__name__)


class ATSSHead(RetinaNetHead):
    """
    Detectron2's :class:`RetinaNetHead` towers (``cls_subnet`` / ``bbox_subnet``: blocks of
    Conv3x3, norm, ReLU, so ``cls_subnet.2`` is the first block's output), one anchor per
    location, plus a centerness branch on the box tower and a learnable scale per level on the
    box regression (mmdet's ``ATSSHead``).
    """

    def __init__(self, *, input_shape: List[ShapeSpec], conv_dims: List[int], **kwargs):
        """
        Args:
            input_shape: one ShapeSpec per level.
            conv_dims: channels of each tower convolution.
            kwargs: ``num_classes``, ``norm``, ``prior_prob`` of :class:`RetinaNetHead`.
        """
        super().__init__(input_shape=input_shape, conv_dims=conv_dims, num_anchors=1, **kwargs)
        self.centerness = nn.Conv2d(conv_dims[-1], 1, kernel_size=3, stride=1, padding=1)
        nn.init.normal_(self.centerness.weight, std=0.01)
        nn.init.constant_(self.centerness.bias, 0.0)
        self.scales = nn.ModuleList([Scale(1.0) for _ in input_shape])

    def forward(self, features: List[Tensor]) -> Tuple[List[Tensor], List[Tensor], List[Tensor]]:
        """
        Args:
            features: L maps (N, C, H_l, W_l).
        Returns:
            logits (N, K, H_l, W_l), bbox_reg (N, 4, H_l, W_l) (deltas, already scaled),
            centerness (N, 1, H_l, W_l): three lists of L tensors.
        """
        assert len(features) == self._num_features
        logits, bbox_reg, centerness = [], [], []
        for feature, scale in zip(features, self.scales):
            logits.append(self.cls_score(self.cls_subnet(feature)))
            box_feature = self.bbox_subnet(feature)
            bbox_reg.append(scale(self.bbox_pred(box_feature)))
            centerness.append(self.centerness(box_feature))
        return logits, bbox_reg, centerness


def centerness_targets(anchors: Tensor, gt_boxes: Tensor) -> Tensor:
    """
    FCOS centerness of the anchor centres in their GT boxes (anchors (P, 4), gt_boxes (P, 4) ->
    (P,)): ``sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b))``. Positive anchors' centres lie
    inside their box, so it is well defined.
    """
    cx, cy = box_centers(anchors).unbind(dim=1)
    lr = torch.stack([cx - gt_boxes[:, 0], gt_boxes[:, 2] - cx], dim=1)
    tb = torch.stack([cy - gt_boxes[:, 1], gt_boxes[:, 3] - cy], dim=1)
    ratio = (lr.min(dim=1).values / lr.max(dim=1).values) * (
        tb.min(dim=1).values / tb.max(dim=1).values
    )
    return ratio.clamp(min=0).sqrt()


@META_ARCH_REGISTRY.register()
class ATSS(SquareAnchorDetector):
    """
    ATSS detector: :class:`ATSSHead` on FPN levels, one ``anchor_scale x stride`` square anchor
    per location, deltas coded by ``Box2BoxTransform(weights=(10, 10, 5, 5))`` (mmdet's stds
    0.1, 0.1, 0.2, 0.2). Inference scores are ``sqrt(sigmoid(cls) * sigmoid(ctr))`` as
    Detectron2's FCOS and the official ATSS code (mmdet ranks by the product ``cls * ctr``
    without the root; the ranking is the same, only the score threshold acts differently).
    """

    @configurable
    def __init__(
        self,
        *,
        box2box_transform: Optional[Box2BoxTransform] = None,
        focal_loss_alpha: float = 0.25,
        focal_loss_gamma: float = 2.0,
        giou_loss_weight: float = 2.0,
        test_score_mode: str = "sqrt",
        **kwargs,
    ):
        """
        Args:
            box2box_transform: delta coder (default weights (10, 10, 5, 5)).
            focal_loss_alpha / focal_loss_gamma: sigmoid focal loss parameters.
            giou_loss_weight: weight of the GIoU box loss.
            test_score_mode: "sqrt" (the official ATSS code) or "mmdet" (mmdetection's
                ATSSHead), see ``MODEL.ATSS.TEST_SCORE_MODE``.
            kwargs: those of :class:`SquareAnchorDetector` (backbone, head, head_in_features,
                num_classes, pixel_mean and pixel_std required; anchor and test parameters).
        """
        super().__init__(**kwargs)
        self.box2box_transform = box2box_transform or Box2BoxTransform(
            weights=(10.0, 10.0, 5.0, 5.0)
        )
        self.focal_loss_alpha = focal_loss_alpha
        self.focal_loss_gamma = focal_loss_gamma
        self.giou_loss_weight = giou_loss_weight
        if test_score_mode not in ("sqrt", "mmdet"):
            raise ValueError(
                f'MODEL.ATSS.TEST_SCORE_MODE must be "sqrt" or "mmdet", got {test_score_mode!r}'
            )
        self.test_score_mode = test_score_mode

    @classmethod
    def from_config(cls, cfg) -> Dict:
        c = cfg.MODEL.ATSS
        return {
            **cls.shared_config(cfg, "ATSS", ATSSHead),
            "box2box_transform": Box2BoxTransform(weights=tuple(c.BBOX_REG_WEIGHTS)),
            "focal_loss_alpha": c.FOCAL_LOSS_ALPHA,
            "focal_loss_gamma": c.FOCAL_LOSS_GAMMA,
            "giou_loss_weight": c.GIOU_LOSS_WEIGHT,
            "test_score_mode": c.TEST_SCORE_MODE,
        }

    @property
    def kd_head_output_dims(self) -> List[int]:
        """Per-anchor widths of the head's outputs: class logits, box deltas, centerness."""
        return [self.num_classes, 4, 1]

    def forward_training(self, images, features, predictions, gt_instances) -> Dict[str, Tensor]:
        pred_logits, pred_deltas, pred_ctr = self._transpose_dense_predictions(
            predictions, self.kd_head_output_dims
        )
        anchors = self.anchor_generator(features)
        valid = self.valid_anchors(features, images.image_sizes)
        gt_labels, gt_boxes = self.label_anchors(anchors, gt_instances, valid)
        return self.losses(anchors, pred_logits, gt_labels, pred_deltas, gt_boxes, pred_ctr)

    def losses(
        self, anchors, pred_logits, gt_labels, pred_deltas, gt_boxes, pred_ctr
    ) -> Dict[str, Tensor]:
        """
        Args:
            anchors: L Boxes; pred_logits / pred_deltas / pred_ctr: L tensors (N, R_l, K / 4 / 1);
            gt_labels: N (R,); gt_boxes: N (R, 4), from :meth:`label_anchors` (labels -1 on
                invalid anchors, which no loss sees).
        Returns:
            ``loss_atss_cls``, ``loss_atss_box``, ``loss_atss_ctr``.
        """
        gt_labels = torch.stack(gt_labels)  # (N, R)
        pos_mask = (gt_labels >= 0) & (gt_labels != self.num_classes)
        normalizer = num_positives(pos_mask)
        get_event_storage().put_scalar("num_pos_anchors", pos_mask.sum().item() / len(gt_labels))

        valid = gt_labels >= 0  # -1: anchor on batch padding (mmdet: label weight 0)
        logits = torch.cat(pred_logits, dim=1).float()[valid]  # (V, K)
        targets = F.one_hot(gt_labels[valid], self.num_classes + 1)[..., :-1].to(logits.dtype)
        loss_cls = sigmoid_focal_loss_jit(
            logits,
            targets,
            alpha=self.focal_loss_alpha,
            gamma=self.focal_loss_gamma,
            reduction="sum",
        )

        gt_boxes = torch.stack(gt_boxes)  # (N, R, 4)
        pos_anchors = Boxes.cat(anchors).tensor[None].expand_as(gt_boxes)[pos_mask]  # (P, 4)
        pos_gt = gt_boxes[pos_mask]  # (P, 4)
        ctr_targets = centerness_targets(pos_anchors, pos_gt)  # (P,)
        pos_boxes = self.box2box_transform.apply_deltas(
            torch.cat(pred_deltas, dim=1)[pos_mask].float(), pos_anchors
        )
        # mmdet: GIoU weighted by the centerness targets, divided by their (worker-averaged) sum.
        ctr_sum = reduce_mean(ctr_targets.sum().detach()).clamp(min=1.0)
        loss_box = (giou_loss(pos_boxes, pos_gt) * ctr_targets).sum() / ctr_sum
        pos_ctr = torch.cat(pred_ctr, dim=1).squeeze(-1)[pos_mask].float()  # (P,)
        loss_ctr = F.binary_cross_entropy_with_logits(pos_ctr, ctr_targets, reduction="sum")
        return {
            "loss_atss_cls": loss_cls / normalizer,
            "loss_atss_box": self.giou_loss_weight * loss_box,
            "loss_atss_ctr": loss_ctr / normalizer,
        }

    def forward_inference(
        self, images: ImageList, features: List[Tensor], predictions: List[List[Tensor]]
    ) -> List[Instances]:
        pred_logits, pred_deltas, pred_ctr = self._transpose_dense_predictions(
            predictions, self.kd_head_output_dims
        )
        anchors = self.anchor_generator(features)
        if self.test_score_mode == "mmdet":
            return score_factor_inference_batch(
                self, anchors, pred_logits, pred_deltas, pred_ctr, images.image_sizes
            )
        results: List[Instances] = []
        for i, image_size in enumerate(images.image_sizes):
            scores = [
                torch.sqrt(x[i].sigmoid() * y[i].sigmoid()) for x, y in zip(pred_logits, pred_ctr)
            ]
            deltas = [x[i] for x in pred_deltas]
            results.append(self.inference_single_image(anchors, scores, deltas, image_size))
        return results
