"""Detectron2's FCOS, registered for yacs configs (``MODEL.META_ARCHITECTURE: "FCOS"``)."""

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.modeling.meta_arch.fcos import FCOS as _D2FCOS
from detectron2.modeling.meta_arch.fcos import FCOSHead

from .dense_config import dense_detector_config

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
        return {
            **dense_detector_config(cfg, "FCOS", FCOSHead),
            "center_sampling_radius": c.CENTER_SAMPLING_RADIUS,
            "focal_loss_alpha": c.FOCAL_LOSS_ALPHA,
            "focal_loss_gamma": c.FOCAL_LOSS_GAMMA,
        }

    @property
    def kd_head_output_dims(self):
        """Per-anchor widths of the head's outputs: class logits, box deltas, centerness."""
        return [self.num_classes, 4, 1]
