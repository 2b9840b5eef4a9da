"""Feature mimicking: mean squared error between student and teacher feature maps."""

import torch
from detectron2.config import configurable
from torch import nn
from torch.nn import functional as F

from d2kd.modeling.losses.feature_pair import FeatureMapLoss
from d2kd.modeling.losses.registry import DISTILL_LOSS_REGISTRY

__all__ = ["FeatureMSELoss"]


@DISTILL_LOSS_REGISTRY.register()
class FeatureMSELoss(FeatureMapLoss):
    """
    ``mean((adapter(F_s) - F_t)^2)`` per feature key (e.g. per FPN level), keys and taps from
    ``MODEL.KD.FEATURE_MSE``.

    Shape shorthand: N images, C_s / C_t student / teacher channels, H x W one level's size.
    Terms: ``loss_kd_mse_<key>``.
    """

    NODE, TERM = "FEATURE_MSE", "mse"

    @configurable
    def __init__(self, **kwargs):
        """Arguments: those of :class:`FeatureMapLoss`."""
        super().__init__(**kwargs)

    @classmethod
    def from_config(cls, cfg, student: nn.Module, teacher: nn.Module):
        return cls.feature_map_config(cfg, student, teacher)

    def term(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(student, teacher)
