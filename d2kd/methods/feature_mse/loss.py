"""Feature mimicking: mean squared error between student and teacher feature maps."""

from typing import Dict, List

import torch
from detectron2.config import configurable
from torch import nn
from torch.nn import functional as F

from d2kd.modeling.adapters import build_adapter
from d2kd.modeling.checks import paired_feature_shapes
from d2kd.modeling.losses.base import DistillLoss
from d2kd.modeling.losses.registry import DISTILL_LOSS_REGISTRY
from d2kd.modeling.record import DistillRecord

__all__ = ["FeatureMSELoss"]


@DISTILL_LOSS_REGISTRY.register()
class FeatureMSELoss(DistillLoss):
    """
    ``mean((adapter(F_s) - F_t)^2)`` per feature key (e.g. per FPN level).

    Shape shorthand: N images, C_s / C_t student / teacher channels, H x W one level's size.
    Terms: ``loss_kd_mse_<key>``.
    """

    @configurable
    def __init__(
        self,
        *,
        student_module: str,
        teacher_module: str,
        keys: List[str],
        student_channels: Dict[str, int],
        teacher_channels: Dict[str, int],
        adapter: str = "auto",
    ):
        """
        Args:
            student_module / teacher_module: taps whose outputs are dicts of feature maps.
            keys: the dict keys to distil.
            student_channels / teacher_channels: channels per key (to build adapters).
            adapter: adapter name, or "auto" (1x1 conv when channels differ).
        """
        super().__init__()
        self.keys = list(keys)
        self.student_module, self.teacher_module = student_module, teacher_module
        self.student_taps, self.teacher_taps = [student_module], [teacher_module]
        self.adapters = nn.ModuleDict(
            {k: build_adapter(adapter, student_channels[k], teacher_channels[k]) for k in keys}
        )

    @classmethod
    def from_config(cls, cfg, student: nn.Module, teacher: nn.Module):
        c = cfg.MODEL.KD.FEATURE_MSE
        keys = list(c.KEYS)
        s_shapes, t_shapes = paired_feature_shapes(student, teacher, c, "MODEL.KD.FEATURE_MSE.KEYS")
        return {
            "student_module": c.STUDENT_MODULE,
            "teacher_module": c.TEACHER_MODULE,
            "keys": keys,
            "student_channels": {k: s_shapes[k].channels for k in keys},
            "teacher_channels": {k: t_shapes[k].channels for k in keys},
            "adapter": c.ADAPTER,
        }

    def forward(self, record: DistillRecord) -> Dict[str, torch.Tensor]:
        s_feats = record.student_one(self.student_module)
        t_feats = record.teacher_one(self.teacher_module)
        losses = {}
        for k in self.keys:
            s = self.adapters[k](s_feats[k].float())  # (N, C_t, H, W)
            t = t_feats[k].float()
            if s.shape != t.shape:
                raise RuntimeError(
                    f"feature '{k}': student {tuple(s.shape)} vs teacher {tuple(t.shape)}"
                )
            losses[f"loss_kd_mse_{k}"] = F.mse_loss(s, t)
        return losses
