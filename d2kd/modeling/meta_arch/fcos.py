"""Detectron2's FCOS, registered for yacs configs (``MODEL.META_ARCHITECTURE: "FCOS"``)."""

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone
from detectron2.modeling.meta_arch.fcos import FCOS as _D2FCOS
from detectron2.modeling.meta_arch.fcos import FCOSHead

__all__ = ["FCOS"]


@META_ARCH_REGISTRY.register()
class FCOS(_D2FCOS):
    """
    :class:`detectron2.modeling.meta_arch.fcos.FCOS` with a ``from_config`` reading ``MODEL.FCOS``.
    Behaviour is Detectron2's own (points at stride multiples, regression normalised by stride,
    GIoU loss, centerness on the box tower).
    """

    @configurable
    def __init__(self, **kwargs):
        super().__init__(**kwargs)

    @classmethod
    def from_config(cls, cfg):
        c = cfg.MODEL.FCOS
        backbone = build_backbone(cfg)
        shapes = backbone.output_shape()
        in_shapes = [shapes[f] for f in c.IN_FEATURES]
        head = FCOSHead(
            input_shape=in_shapes,
            conv_dims=[in_shapes[0].channels] * c.NUM_CONVS,
            num_classes=c.NUM_CLASSES,
            norm=c.HEAD_NORM,
            prior_prob=c.PRIOR_PROB,
        )
        return {
            "backbone": backbone,
            "head": head,
            "head_in_features": list(c.IN_FEATURES),
            "num_classes": c.NUM_CLASSES,
            "center_sampling_radius": c.CENTER_SAMPLING_RADIUS,
            "focal_loss_alpha": c.FOCAL_LOSS_ALPHA,
            "focal_loss_gamma": c.FOCAL_LOSS_GAMMA,
            "test_score_thresh": c.SCORE_THRESH_TEST,
            "test_topk_candidates": c.TOPK_CANDIDATES_TEST,
            "test_nms_thresh": c.NMS_THRESH_TEST,
            "max_detections_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
        }

    @property
    def kd_head_output_dims(self):
        """Per-anchor widths of the head's outputs: class logits, box deltas, centerness."""
        return [self.num_classes, 4, 1]
