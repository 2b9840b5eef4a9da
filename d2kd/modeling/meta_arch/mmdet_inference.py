"""
mmdetection's test-time post-processing of heads with a score factor (ATSS, FCOS:
``BaseDenseHead._get_bboxes_single`` with centerness), for teachers converted from mmdetection.
"""

from typing import List, Tuple

import torch
from detectron2.layers import batched_nms
from detectron2.structures import Boxes, Instances
from torch import Tensor, nn

__all__ = ["score_factor_inference", "score_factor_inference_batch"]


def score_factor_inference(
    model: nn.Module,
    anchors: List[Boxes],
    cls: List[Tensor],
    factor: List[Tensor],
    deltas: List[Tensor],
    image_size: Tuple[int, int],
    clip_before_nms: bool,
) -> Instances:
    """
    Per level, the (anchor, class) pairs whose class score exceeds ``model.test_score_thresh``,
    the ``model.test_topk_candidates`` best of them by class score; boxes decoded by
    ``model.box2box_transform`` (clipped to the image if ``clip_before_nms``); class-wise NMS
    (``model.test_nms_thresh``) on cls x factor, which is also the output score; the best
    ``model.max_detections_per_image``.

    Args:
        anchors: L Boxes (R_l, 4); cls: L (R_l, K) class probabilities; factor: L (R_l,)
            score factors (centerness probabilities); deltas: L (R_l, 4), of one image.
        image_size: (h, w).
    """
    boxes, scores, classes = [], [], []
    for anchors_l, cls_l, factor_l, deltas_l in zip(anchors, cls, factor, deltas):
        keep = cls_l > model.test_score_thresh
        idxs = torch.nonzero(keep)  # (M, 2): anchor, class
        top, order = cls_l[keep].topk(min(model.test_topk_candidates, len(idxs)))
        anchor_idxs, class_idxs = idxs[order].unbind(dim=1)
        boxes.append(
            model.box2box_transform.apply_deltas(
                deltas_l[anchor_idxs], anchors_l.tensor[anchor_idxs]
            )
        )
        scores.append(top * factor_l[anchor_idxs])
        classes.append(class_idxs)
    pred = Instances(
        image_size,
        pred_boxes=Boxes(torch.cat(boxes)),
        scores=torch.cat(scores),
        pred_classes=torch.cat(classes),
    )
    if clip_before_nms:
        pred.pred_boxes.clip(image_size)
    keep = batched_nms(
        pred.pred_boxes.tensor, pred.scores, pred.pred_classes, model.test_nms_thresh
    )
    return pred[keep[: model.max_detections_per_image]]


def score_factor_inference_batch(
    model: nn.Module,
    anchors: List[Boxes],
    pred_logits: List[Tensor],
    pred_deltas: List[Tensor],
    pred_ctr: List[Tensor],
    image_sizes: List[Tuple[int, int]],
) -> List[Instances]:
    """
    :func:`score_factor_inference` of every image of a batch, boxes clipped before NMS where
    ``model.clip_before_nms``.

    Args:
        pred_logits / pred_deltas / pred_ctr: L tensors (N, R_l, K) / (N, R_l, 4) / (N, R_l, 1),
            as ``DenseDetector._transpose_dense_predictions`` gives them.
        image_sizes: N (h, w).
    """
    results = []
    for i, image_size in enumerate(image_sizes):
        cls = [x[i].sigmoid() for x in pred_logits]
        ctr = [x[i].squeeze(-1).sigmoid() for x in pred_ctr]
        deltas = [x[i] for x in pred_deltas]
        results.append(
            score_factor_inference(
                model, anchors, cls, ctr, deltas, image_size, model.clip_before_nms
            )
        )
    return results
