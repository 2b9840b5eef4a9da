"""The registered :class:`PKDLoss`: PKD on named feature maps (by default the FPN levels P3-P7)."""

import torch
from detectron2.config import configurable
from torch import nn

from d2kd.modeling.losses.feature_pair import FeatureMapLoss
from d2kd.modeling.losses.registry import DISTILL_LOSS_REGISTRY

from .terms import pkd_loss

__all__ = ["PKDLoss"]


@DISTILL_LOSS_REGISTRY.register()
class PKDLoss(FeatureMapLoss):
    """
    ``mean((norm(adapter(F_s)) - norm(F_t))^2) / 2`` per feature key, norm the per-channel batch
    standardisation of :func:`d2kd.methods.pkd.terms.pkd_loss`; one term per key (levels are
    summed by the total loss, each a mean, as the official code).

    Shape shorthand: N images, C_s / C_t student / teacher channels, H x W one level's size.
    Terms: ``loss_kd_pkd_<key>``. The weight (official 6 / 2 / 2 / 1 for GFL / RetinaNet / FCOS /
    ATSS next to CrossKD, 10 or 6 alone in mmrazor) is this loss's ``MODEL.KD.LOSS_WEIGHTS`` entry.
    """

    NODE, TERM = "PKD", "pkd"

    @configurable
    def __init__(self, *, eps: float = 1e-6, **kwargs):
        """
        Args:
            eps: added to each channel's std.
            kwargs: those of :class:`FeatureMapLoss` (the adapter is d2kd's addition: 1x1 conv
                when channels differ; the official code has none).
        """
        super().__init__(**kwargs)
        self.eps = float(eps)

    @classmethod
    def from_config(cls, cfg, student: nn.Module, teacher: nn.Module):
        return {**cls.feature_map_config(cfg, student, teacher), "eps": cfg.MODEL.KD.PKD.EPS}

    def term(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return pkd_loss(student, teacher, self.eps)
