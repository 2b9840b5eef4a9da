"""The registered :class:`PKDLoss`: PKD on named feature maps (by default the FPN levels P3-P7)."""

from typing import Dict, List

import torch
from detectron2.config import configurable
from torch import nn

from d2kd.modeling.adapters import build_adapter
from d2kd.modeling.checks import paired_feature_shapes
from d2kd.modeling.losses.base import DistillLoss
from d2kd.modeling.losses.registry import DISTILL_LOSS_REGISTRY
from d2kd.modeling.record import DistillRecord

from .terms import pkd_loss

__all__ = ["PKDLoss"]


@DISTILL_LOSS_REGISTRY.register()
class PKDLoss(DistillLoss):
    """
    ``mean((norm(adapter(F_s)) - norm(F_t))^2) / 2`` per feature key, norm the per-channel batch
    standardisation of :func:`d2kd.methods.pkd.terms.pkd_loss`; one term per key (levels are
    summed by the total loss, each a mean, as the official code).

    Shape shorthand: N images, C_s / C_t student / teacher channels, H x W one level's size.
    Terms: ``loss_kd_pkd_<key>``. The weight (official 6 / 2 / 2 / 1 for GFL / RetinaNet / FCOS /
    ATSS next to CrossKD, 10 or 6 alone in mmrazor) is this loss's ``MODEL.KD.LOSS_WEIGHTS`` entry.
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
        eps: float = 1e-6,
    ):
        """
        Args:
            student_module / teacher_module: taps whose outputs are dicts of feature maps.
            keys: the dict keys to distil (strides must match; nothing is resized).
            student_channels / teacher_channels: channels per key (to build adapters).
            adapter: adapter name, or "auto" (1x1 conv when channels differ, as d2kd adds; the
                official code has none).
            eps: added to each channel's std.
        """
        super().__init__()
        self.keys, self.eps = list(keys), float(eps)
        self.student_module, self.teacher_module = student_module, teacher_module
        self.student_taps, self.teacher_taps = [student_module], [teacher_module]
        self.adapters = nn.ModuleDict(
            {k: build_adapter(adapter, student_channels[k], teacher_channels[k]) for k in keys}
        )

    @classmethod
    def from_config(cls, cfg, student: nn.Module, teacher: nn.Module):
        c = cfg.MODEL.KD.PKD
        keys = list(c.KEYS)
        if not keys:
            raise ValueError("MODEL.KD.PKD.KEYS is empty: name the feature maps to distil")
        s_shapes, t_shapes = paired_feature_shapes(student, teacher, c, "MODEL.KD.PKD.KEYS")
        return {
            "student_module": c.STUDENT_MODULE,
            "teacher_module": c.TEACHER_MODULE,
            "keys": keys,
            "student_channels": {k: s_shapes[k].channels for k in keys},
            "teacher_channels": {k: t_shapes[k].channels for k in keys},
            "adapter": c.ADAPTER,
            "eps": c.EPS,
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
                    f"MODEL.KD.PKD.KEYS '{k}': student {tuple(s.shape)} vs teacher {tuple(t.shape)}"
                )
            losses[f"loss_kd_pkd_{k}"] = pkd_loss(s, t, self.eps)
        return losses
