"""Detectron2's FCOS, registered for yacs configs (``MODEL.META_ARCHITECTURE: "FCOS"``)."""

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
from detectron2.modeling.meta_arch.fcos import FCOS as _D2FCOS
from detectron2.modeling.meta_arch.fcos import FCOSHead

from .clip_nms import ClipBeforeNMSMixin
from .dense_config import dense_detector_config

__all__ = ["FCOS"]


@META_ARCH_REGISTRY.register()
class FCOS(ClipBeforeNMSMixin, _D2FCOS):
    """
    :class:`detectron2.modeling.meta_arch.fcos.FCOS` with a ``from_config`` reading ``MODEL.FCOS``.
    Behaviour is Detectron2's own (points at cell centres unless ``MODEL.FCOS.POINT_OFFSET``,
    regression normalised by stride, GIoU loss, centerness on the box tower);
    ``MODEL.DENSE_TEST.CLIP_BEFORE_NMS`` clips boxes to the image before NMS (default off:
    Detectron2's order).
    """

    @configurable
    def __init__(self, *, clip_before_nms: bool = False, point_offset: float = 0.5, **kwargs):
        super().__init__(**kwargs)
        self.clip_before_nms = clip_before_nms
        if point_offset != 0.5:  # Detectron2's FCOS builds its points at cell centres
            strides = [self.backbone.output_shape()[k].stride for k in self.head_in_features]
            self.anchor_generator = DefaultAnchorGenerator(
                sizes=[[s] for s in strides],
                aspect_ratios=[1.0],
                strides=strides,
                offset=point_offset,
            )

    @classmethod
    def from_config(cls, cfg):
        c = cfg.MODEL.FCOS
        return {
            **dense_detector_config(cfg, "FCOS", FCOSHead),
            "center_sampling_radius": c.CENTER_SAMPLING_RADIUS,
            "focal_loss_alpha": c.FOCAL_LOSS_ALPHA,
            "focal_loss_gamma": c.FOCAL_LOSS_GAMMA,
            "clip_before_nms": cfg.MODEL.DENSE_TEST.CLIP_BEFORE_NMS,
            "point_offset": c.POINT_OFFSET,
        }

    @property
    def kd_head_output_dims(self):
        """Per-anchor widths of the head's outputs: class logits, box deltas, centerness."""
        return [self.num_classes, 4, 1]
