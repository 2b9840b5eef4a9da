"""
FGD: Focal and Global Distillation (Yang et al., CVPR 2022), spec ``pgd_fgd.md`` section 3.

On every FPN level (the student side channel-aligned by a 1x1 adapter when widths differ), with
the teacher's spatial and channel attention and GT-box focal masks (:class:`GTBoxMaskGenerator`).
Terms, per level ``<l>``:
  ``loss_kd_fgd_fg_<l>``     = alpha L_fg      (inside boxes, area-normalised)
  ``loss_kd_fgd_bg_<l>``     = beta L_bg       (background, normalised per image)
  ``loss_kd_fgd_att_<l>``    = gamma L_at      (attention imitation)
  ``loss_kd_fgd_global_<l>`` = lambda L_global (GcBlock relation; one GcBlock per side and level)
"""

from typing import Dict, List

import torch
from detectron2.config import configurable
from torch import nn

from d2kd.methods.fgd.gc_block import GcBlock
from d2kd.methods.fgd.terms import fgd_feature_terms, fgd_global_term
from d2kd.modeling.adapters import build_adapter
from d2kd.modeling.checks import paired_feature_shapes
from d2kd.modeling.losses.base import DistillLoss
from d2kd.modeling.losses.registry import DISTILL_LOSS_REGISTRY
from d2kd.modeling.masks import build_mask_generator
from d2kd.modeling.record import DistillRecord

__all__ = ["FGDLoss"]


@DISTILL_LOSS_REGISTRY.register()
class FGDLoss(DistillLoss):
    """
    FGD's focal + global feature losses (see the module docstring).

    Both GcBlocks of a level train (the teacher-side one although its input is constant), as in
    the reference, where the optimizer holds the distillation modules' parameters.
    """

    TWO_STAGE = True  # FPN features and ground-truth boxes only

    @configurable
    def __init__(
        self,
        *,
        mask_generator: nn.Module,
        student_module: str,
        teacher_module: str,
        keys: List[str],
        strides: Dict[str, int],
        student_channels: Dict[str, int],
        teacher_channels: Dict[str, int],
        adapter: str = "auto",
        temperature: float = 0.5,
        alpha: float = 0.001,
        beta: float = 0.0005,
        gamma: float = 0.0005,
        lambda_: float = 0.000005,
    ):
        """
        Args:
            mask_generator: gives per-level "fg" and "bg" masks (N, 1, H, W).
            student_module / teacher_module: taps whose outputs are dicts of feature maps.
            keys: feature keys distilled; strides / channels: per key.
            adapter, temperature, alpha, beta, gamma, lambda_: see ``MODEL.KD.FGD``.
        """
        super().__init__()
        self.mask_generator = mask_generator
        self.student_module, self.teacher_module = student_module, teacher_module
        self.keys, self.strides = list(keys), dict(strides)
        self.student_taps = [student_module]
        self.teacher_taps = [teacher_module, *mask_generator.teacher_taps]
        self.adapters = nn.ModuleDict(
            {k: build_adapter(adapter, student_channels[k], teacher_channels[k]) for k in keys}
        )
        self.gc_student = nn.ModuleDict({k: GcBlock(teacher_channels[k]) for k in keys})
        self.gc_teacher = nn.ModuleDict({k: GcBlock(teacher_channels[k]) for k in keys})
        self.temperature = temperature
        self.alpha, self.beta, self.gamma, self.lambda_ = alpha, beta, gamma, lambda_

    @classmethod
    def from_config(cls, cfg, student: nn.Module, teacher: nn.Module):
        c = cfg.MODEL.KD.FGD
        keys = list(c.KEYS)
        s_shapes, t_shapes = paired_feature_shapes(student, teacher, c, "MODEL.KD.FGD.KEYS")
        return {
            "mask_generator": build_mask_generator(c.MASK_GENERATOR, cfg, student, teacher),
            "student_module": c.STUDENT_MODULE,
            "teacher_module": c.TEACHER_MODULE,
            "keys": keys,
            "strides": {k: t_shapes[k].stride for k in keys},
            "student_channels": {k: s_shapes[k].channels for k in keys},
            "teacher_channels": {k: t_shapes[k].channels for k in keys},
            "adapter": c.ADAPTER,
            "temperature": c.TEMPERATURE,
            "alpha": c.ALPHA,
            "beta": c.BETA,
            "gamma": c.GAMMA,
            "lambda_": c.LAMBDA,
        }

    def forward(self, record: DistillRecord) -> Dict[str, torch.Tensor]:
        s_feats = record.student_one(self.student_module)
        t_feats = record.teacher_one(self.teacher_module)
        shapes = [tuple(t_feats[k].shape[-2:]) for k in self.keys]
        masks = self.mask_generator(record, shapes, [self.strides[k] for k in self.keys])
        out = {}
        for i, k in enumerate(self.keys):
            s = self.adapters[k](s_feats[k].float())  # (N, C_t, H, W)
            t = t_feats[k].float()
            if s.shape != t.shape:
                raise RuntimeError(
                    f"FGD feature '{k}': student {tuple(s.shape)} vs teacher {tuple(t.shape)}"
                )
            fg, bg = masks["fg"][i][:, 0], masks["bg"][i][:, 0]
            l_fg, l_bg, l_at = fgd_feature_terms(s, t, fg, bg, self.temperature)
            l_global = fgd_global_term(s, t, self.gc_student[k], self.gc_teacher[k])
            out[f"loss_kd_fgd_fg_{k}"] = self.alpha * l_fg
            out[f"loss_kd_fgd_bg_{k}"] = self.beta * l_bg
            out[f"loss_kd_fgd_att_{k}"] = self.gamma * l_at
            out[f"loss_kd_fgd_global_{k}"] = self.lambda_ * l_global
        return out
