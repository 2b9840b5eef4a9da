"""
PGD: Prediction-Guided Distillation (Yang et al., ECCV 2022), spec ``pgd_fgd.md`` section 2.

Distils the first block of the classification and regression towers of a dense head, per FPN
level, weighted by key regions found from the teacher's predictions (:class:`PGWMaskGenerator`).
Terms, per level ``<l>`` (e.g. ``p3``):
  ``loss_kd_pgd_cls_fg_<l>``  = lambda_l alpha L_fg     (key regions, count-normalised per image)
  ``loss_kd_pgd_cls_bg_<l>``  = lambda_l beta  L_bg     (background, count-normalised per image)
  ``loss_kd_pgd_cls_att_<l>`` = delta L_att             (spatial + per-pixel channel attention)
  ``loss_kd_pgd_reg_<l>``     = gamma L_reg_feat        (regression-importance pixels)
  ``loss_kd_pgd_reg_att_<l>`` = delta L_reg_att
"""

from typing import Dict, List, Sequence, Tuple

import torch
from detectron2.config import configurable
from torch import nn

from d2kd.methods.pgd.terms import normalize_per_image, pgd_cls_terms, pgd_reg_terms
from d2kd.modeling.adapters import build_adapter
from d2kd.modeling.checks import check_same_strides
from d2kd.modeling.losses.base import DistillLoss
from d2kd.modeling.losses.registry import DISTILL_LOSS_REGISTRY
from d2kd.modeling.masks import build_mask_generator
from d2kd.modeling.record import DistillRecord
from d2kd.modeling.recorder import resolve_module

__all__ = ["PGDLoss", "first_block_tap", "tower_channels"]


def first_block_tap(model: nn.Module, tower: str) -> str:
    """
    The tap of the first (conv, norm, act) block of a head tower: ``<tower>.<i>`` with ``i``
    the index of the tower's first activation (2 with a norm, 1 without).

    Raises:
        ValueError: the tower has no activation module.
    """
    seq = resolve_module(model, tower)
    for i, module in enumerate(seq.children()):
        if type(module).__module__ == "torch.nn.modules.activation":
            return f"{tower}.{i}"
    raise ValueError(
        f"{type(model).__name__}.{tower} has no activation module; set MODEL.KD.PGD.CLS_TAP / "
        "REG_TAP to the module whose output is the first tower block"
    )


def tower_channels(model: nn.Module, tap: str) -> int:
    """Output channels of the last convolution at or before ``tap`` in its tower."""
    tower, _, index = tap.rpartition(".")
    channels = None
    for i, module in enumerate(resolve_module(model, tower).children()):
        if i > int(index):
            break
        if isinstance(module, nn.Conv2d):
            channels = module.out_channels
    if channels is None:
        raise ValueError(f'no convolution at or before "{tap}" in {type(model).__name__}')
    return channels


@DISTILL_LOSS_REGISTRY.register()
class PGDLoss(DistillLoss):
    """PGD's decoupled classification- and regression-tower feature losses (see module doc)."""

    @configurable
    def __init__(
        self,
        *,
        mask_generator: nn.Module,
        cls_taps: Tuple[str, str],
        reg_taps: Tuple[str, str],
        levels: Sequence[str],
        cls_adapter: nn.Module,
        reg_adapter: nn.Module,
        alpha: float,
        beta: float,
        gamma: float,
        delta: float,
        tau: float = 0.8,
        level_weights: Sequence[float] = (1.0, 1.25, 1.5, 1.75, 2.0),
        batch_mask_mixing: bool = False,
    ):
        """
        Args:
            mask_generator: gives per-level "cls", "reg" and "bg" maps (N, 1, H, W) from a record.
            cls_taps / reg_taps: (student tap, teacher tap) of the first block of each tower.
            levels: level names (the heads' input features), for the term names.
            cls_adapter / reg_adapter: student -> teacher channels, shared by all levels.
            alpha, beta, gamma, delta, tau, level_weights: see ``MODEL.KD.PGD``.
            batch_mask_mixing: ``EMULATE_BATCH_MASK_MIXING`` (reference bug 2.14-C).
        """
        super().__init__()
        if len(level_weights) != len(levels):
            raise ValueError(
                f"MODEL.KD.PGD.LEVEL_WEIGHTS has {len(level_weights)} entries but the heads read "
                f"{len(levels)} levels {list(levels)}: give one weight per level"
            )
        self.mask_generator = mask_generator
        self.cls_taps, self.reg_taps, self.levels = tuple(cls_taps), tuple(reg_taps), list(levels)
        self.cls_adapter, self.reg_adapter = cls_adapter, reg_adapter
        self.alpha, self.beta, self.gamma, self.delta, self.tau = alpha, beta, gamma, delta, tau
        self.level_weights = list(level_weights)
        self.batch_mask_mixing = batch_mask_mixing
        self.student_taps = [cls_taps[0], reg_taps[0]]
        self.teacher_taps = [cls_taps[1], reg_taps[1], *mask_generator.teacher_taps]

    @classmethod
    def from_config(cls, cfg, student: nn.Module, teacher: nn.Module):
        c = cfg.MODEL.KD.PGD
        check_same_strides(student, teacher, "PGDLoss")
        taps = {}
        for key, tower in (("cls", "head.cls_subnet"), ("reg", "head.bbox_subnet")):
            given = c.CLS_TAP if key == "cls" else c.REG_TAP
            taps[key] = (
                given or first_block_tap(student, tower),
                given or first_block_tap(teacher, tower),
            )
        adapters = {
            key: build_adapter(c.ADAPTER, tower_channels(student, s), tower_channels(teacher, t))
            for key, (s, t) in taps.items()
        }
        return {
            "mask_generator": build_mask_generator(c.MASK_GENERATOR, cfg, student, teacher),
            "cls_taps": taps["cls"],
            "reg_taps": taps["reg"],
            "levels": list(teacher.head_in_features),
            "cls_adapter": adapters["cls"],
            "reg_adapter": adapters["reg"],
            "alpha": c.ALPHA,
            "beta": c.BETA,
            "gamma": c.GAMMA,
            "delta": c.DELTA,
            "tau": c.TAU,
            "level_weights": list(c.LEVEL_WEIGHTS),
            "batch_mask_mixing": c.EMULATE_BATCH_MASK_MIXING,
        }

    def _features(self, record: DistillRecord, taps: Tuple[str, str]) -> Tuple[List, List]:
        s, t = record.student_all(taps[0]), record.teacher_all(taps[1])
        if len(s) != len(self.levels) or len(t) != len(self.levels):
            raise RuntimeError(
                f"PGDLoss expects one output per level ({len(self.levels)}) at the tower taps, got "
                f"student {len(s)} at {taps[0]} and teacher {len(t)} at {taps[1]}"
            )
        return s, t

    def forward(self, record: DistillRecord) -> Dict[str, torch.Tensor]:
        masks = self.mask_generator(record)
        s_cls, t_cls = self._features(record, self.cls_taps)
        s_reg, t_reg = self._features(record, self.reg_taps)
        out = {}
        for i, name in enumerate(self.levels):
            fg, bg = normalize_per_image(masks["cls"][i]), normalize_per_image(masks["bg"][i])
            if self.batch_mask_mixing:  # reference: every image weighted by all images' masks
                fg, bg = fg.sum(0, keepdim=True), bg.sum(0, keepdim=True)
            l_fg, l_bg, l_att = pgd_cls_terms(
                self.cls_adapter(s_cls[i].float()), t_cls[i].float(), fg, bg, self.tau
            )
            lam = self.level_weights[i]
            out[f"loss_kd_pgd_cls_fg_{name}"] = lam * self.alpha * l_fg
            out[f"loss_kd_pgd_cls_bg_{name}"] = lam * self.beta * l_bg
            out[f"loss_kd_pgd_cls_att_{name}"] = self.delta * l_att
            l_reg, l_reg_att = pgd_reg_terms(
                self.reg_adapter(s_reg[i].float()), t_reg[i].float(), masks["reg"][i], self.tau
            )
            out[f"loss_kd_pgd_reg_{name}"] = self.gamma * l_reg
            out[f"loss_kd_pgd_reg_att_{name}"] = self.delta * l_reg_att
        return out
