"""The ``from_config`` entries that d2kd's FCOS, ATSS and GFL read alike from
``cfg.MODEL.<node>``."""

from typing import Dict, List

from detectron2.layers import ShapeSpec
from detectron2.modeling import Backbone, build_backbone

__all__ = ["dense_detector_config", "head_input_shapes"]


def head_input_shapes(backbone: Backbone, in_features: List[str], key: str) -> List[ShapeSpec]:
    """The backbone's ShapeSpecs of ``in_features``; a KeyError names ``key`` if one is missing."""
    shapes = backbone.output_shape()
    missing = [f for f in in_features if f not in shapes]
    if missing:
        raise KeyError(f"{key}: the backbone has no features {missing}; it has {sorted(shapes)}")
    return [shapes[f] for f in in_features]


def dense_detector_config(cfg, node: str, head_cls, **head_kwargs) -> Dict:
    """
    The backbone, a ``head_cls`` head on the backbone's ``MODEL.<node>.IN_FEATURES`` (NUM_CONVS
    tower convolutions as wide as the first level, HEAD_NORM, PRIOR_PROB, NUM_CLASSES and
    ``head_kwargs``), and the keyword arguments every dense detector takes: classes, test-time
    thresholds, detections per image, pixel mean and std.
    """
    c = cfg.MODEL[node]
    backbone = build_backbone(cfg)
    in_shapes = head_input_shapes(backbone, list(c.IN_FEATURES), f"MODEL.{node}.IN_FEATURES")
    head = head_cls(
        input_shape=in_shapes,
        conv_dims=[in_shapes[0].channels] * c.NUM_CONVS,
        num_classes=c.NUM_CLASSES,
        norm=c.HEAD_NORM,
        prior_prob=c.PRIOR_PROB,
        **head_kwargs,
    )
    return {
        "backbone": backbone,
        "head": head,
        "head_in_features": list(c.IN_FEATURES),
        "num_classes": c.NUM_CLASSES,
        "test_score_thresh": c.SCORE_THRESH_TEST,
        "test_topk_candidates": c.TOPK_CANDIDATES_TEST,
        "test_nms_thresh": c.NMS_THRESH_TEST,
        "max_detections_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
        "pixel_mean": cfg.MODEL.PIXEL_MEAN,
        "pixel_std": cfg.MODEL.PIXEL_STD,
    }
