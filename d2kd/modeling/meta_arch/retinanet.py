"""Detectron2's RetinaNet with d2kd's generic test-time options (``MODEL.DENSE_TEST``)."""

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.modeling.meta_arch.retinanet import RetinaNet

from .clip_nms import ClipBeforeNMSMixin

__all__ = ["D2KDRetinaNet"]


@META_ARCH_REGISTRY.register()
class D2KDRetinaNet(ClipBeforeNMSMixin, RetinaNet):
    """
    :class:`detectron2.modeling.RetinaNet` (same ``MODEL.RETINANET`` keys, same parameters) that
    also reads ``MODEL.DENSE_TEST.CLIP_BEFORE_NMS``; with its default it is Detectron2's RetinaNet.
    """

    @configurable
    def __init__(self, *, clip_before_nms: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.clip_before_nms = clip_before_nms

    @classmethod
    def from_config(cls, cfg):
        ret = RetinaNet.from_config(cfg)
        ret["clip_before_nms"] = cfg.MODEL.DENSE_TEST.CLIP_BEFORE_NMS
        return ret
