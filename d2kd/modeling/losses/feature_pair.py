"""
The base of losses that compare named feature maps one to one (FeatureMSE, PKD): student and
teacher taps whose outputs are dicts of maps (e.g. the FPN's ``{"p3": ...}``), a channel adapter
per key on the student side, and one term per key.
"""

from typing import Dict, List

import torch
from torch import nn

from ..adapters import build_adapter
from ..checks import paired_feature_shapes
from ..record import DistillRecord
from .base import DistillLoss

__all__ = ["FeatureMapLoss"]


class FeatureMapLoss(DistillLoss):
    """
    ``term(adapter(F_s[key]), F_t[key])`` for every key, logged as ``loss_kd_<TERM>_<key>``.

    Subclasses set ``NODE`` (their ``MODEL.KD.<NODE>`` config node, which has STUDENT_MODULE,
    TEACHER_MODULE, KEYS and ADAPTER) and ``TERM``, and implement :meth:`term`.
    Shape shorthand: N images, C_s / C_t student / teacher channels, H x W one level's size.
    """

    NODE = ""
    TERM = ""
    TWO_STAGE = True  # FPN features only

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
            keys: the dict keys to distil (strides must match; nothing is resized).
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
    def feature_map_config(cls, cfg, student: nn.Module, teacher: nn.Module) -> Dict:
        """The constructor arguments read from ``MODEL.KD.<NODE>`` (shapes checked)."""
        c = cfg.MODEL.KD[cls.NODE]
        keys = list(c.KEYS)
        if not keys:
            raise ValueError(f"MODEL.KD.{cls.NODE}.KEYS is empty: name the feature maps to distil")
        s_shapes, t_shapes = paired_feature_shapes(student, teacher, c, f"MODEL.KD.{cls.NODE}.KEYS")
        return {
            "student_module": c.STUDENT_MODULE,
            "teacher_module": c.TEACHER_MODULE,
            "keys": keys,
            "student_channels": {k: s_shapes[k].channels for k in keys},
            "teacher_channels": {k: t_shapes[k].channels for k in keys},
            "adapter": c.ADAPTER,
        }

    def term(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """(N, C_t, H, W) adapted student and teacher maps (fp32) -> scalar term."""
        raise NotImplementedError

    def forward(self, record: DistillRecord) -> Dict[str, torch.Tensor]:
        s_feats = record.student_one(self.student_module)
        t_feats = record.teacher_one(self.teacher_module)
        losses = {}
        for k in self.keys:
            s = self.adapters[k](s_feats[k].float())  # (N, C_t, H, W)
            t = t_feats[k].float()
            if s.shape != t.shape:
                raise RuntimeError(
                    f"MODEL.KD.{self.NODE}.KEYS '{k}': student {tuple(s.shape)} vs teacher "
                    f"{tuple(t.shape)}"
                )
            losses[f"loss_kd_{self.TERM}_{k}"] = self.term(s, t)
        return losses
