"""
LD: localization distillation (Zheng et al., CVPR 2022 / TPAMI 2023) for detectors with
general-distribution (GFL-style) box heads, as the official GFL code (HikariTJU/LD) computes it.

Shape shorthand: N images, R priors, K classes, B = reg_max + 1 bins per box side (17); the box
regression of a prior is ``4 * B`` logits, side-major (l, t, r, b), as in GFL. Math in
:mod:`d2kd.methods.ld.terms`.

Terms (each off when its weight is 0):
* ``loss_kd_ld_main``: KL at T = 10 of each side's distribution on the student's positives, weight
  = the student's max class score (detached), divided by the constant 4;
* ``loss_kd_ld_vlr``: the same on the valuable localization region (``alpha * gamma <= DIoU <
  gamma``, gamma the ATSS threshold of each object; LD's IoF-based DIoU by default), weight = the
  anchor's IoU, divided by 16;
* ``loss_kd_ld_cls``: softmax KL at T = 2 of the class logits on the positives, mean per level.

Dose: the official main and VLR terms are per-GPU sums never divided by the batch, so their
magnitude grows with images per GPU (HikariTJU/LD issue #78). d2kd multiplies them by
``DOSE_REFERENCE_IMAGES / images in this GPU's batch`` (default 2 / N): the official magnitude at
the reference 2 images per GPU, whatever batch a user picks. The class term is a per-level mean
already and is not rescaled. The KL is averaged over the bins (official; 1/17 of the textbook KL).
"""

from typing import Dict, List

import torch
from detectron2.config import configurable
from torch import Tensor, nn

from d2kd.methods.ld.terms import per_level_mean_kl, weighted_distribution_kl
from d2kd.methods.ld.vlr import DIOU_MODES, vlr_region
from d2kd.modeling.dense_outputs import head_output_dims
from d2kd.modeling.losses.base import DistillLoss
from d2kd.modeling.losses.dense_pair import (
    STUDENT_TAPS,
    TEACHER_TAPS,
    DensePair,
    check_dense_pair,
    gather_dense_pair,
)
from d2kd.modeling.losses.registry import DISTILL_LOSS_REGISTRY
from d2kd.modeling.record import DistillRecord
from d2kd.utils.modules import hold_unregistered

__all__ = ["LDLoss", "check_distribution_heads"]


def check_distribution_heads(student: nn.Module, teacher: nn.Module) -> int:
    """
    LD needs general-distribution box heads (``reg_max``, ``4 * (reg_max + 1)`` logits per prior)
    on both sides. Returns reg_max.
    """
    reg_max = {}
    for which, model in (("student", student), ("teacher", teacher)):
        r = getattr(model, "reg_max", None)
        if r is None:
            raise ValueError(
                f"LDLoss needs general-distribution (GFL-style) box heads on both teacher and "
                f"student, but the {which} ({type(model).__name__}) has no reg_max: use a GFL "
                "detector (MODEL.META_ARCHITECTURE) for both, or BCKDLoss for other heads"
            )
        width = head_output_dims(model)[1]
        if width != 4 * (r + 1):
            raise ValueError(
                f"LDLoss: the {which}'s box head predicts {width} values per prior, not "
                f"4 * (reg_max + 1) = {4 * (r + 1)}"
            )
        reg_max[which] = int(r)
    if reg_max["student"] != reg_max["teacher"]:
        raise ValueError(
            f"LDLoss: teacher reg_max {reg_max['teacher']} vs student {reg_max['student']}; "
            "the distributions must have the same bins"
        )
    return reg_max["student"]


def _vlr_weights(pair: DensePair, gt_boxes: List[Tensor], alpha, topk, diou_mode) -> Tensor:
    """(N, R) VLR weight of every prior of every image (0 outside the region)."""
    s = pair.student
    weights = []
    for i, boxes in enumerate(gt_boxes):
        valid = pair.prior_weights[i] > 0
        w, _ = vlr_region(s.anchors, s.level_sizes, boxes, alpha, topk, diou_mode, valid)
        weights.append(w)
    return torch.stack(weights)


@DISTILL_LOSS_REGISTRY.register()
class LDLoss(DistillLoss):
    """LD on the student's and teacher's GFL head outputs (see the module docstring)."""

    @configurable
    def __init__(
        self,
        *,
        student: nn.Module,
        teacher: nn.Module,
        reg_max: int,
        main_weight: float = 0.25,
        main_avg_factor: float = 4.0,
        vlr_weight: float = 0.25,
        vlr_avg_factor: float = 16.0,
        cls_weight: float = 10.0,
        temperature: float = 10.0,
        cls_temperature: float = 2.0,
        vlr_alpha: float = 0.25,
        vlr_topk: int = 9,
        vlr_diou: str = "official",
        dose_reference_images: int = 2,
        ignore_padding: bool = True,
    ):
        """
        Args:
            student, teacher: the two detectors (only their layout is used; not sub-modules).
            reg_max: bins per side minus one.
            Others: see ``MODEL.KD.LD`` in :mod:`d2kd.config.ld`.
        """
        super().__init__()
        if vlr_diou not in DIOU_MODES:
            raise ValueError(f'MODEL.KD.LD.VLR_DIOU "{vlr_diou}" is not one of {DIOU_MODES}')
        hold_unregistered(self, "student", student)
        hold_unregistered(self, "teacher", teacher)
        self.bins = reg_max + 1
        self.main_weight, self.main_avg_factor = main_weight, main_avg_factor
        self.vlr_weight, self.vlr_avg_factor = vlr_weight, vlr_avg_factor
        self.cls_weight = cls_weight
        self.temperature, self.cls_temperature = temperature, cls_temperature
        self.vlr_alpha, self.vlr_topk, self.vlr_diou = vlr_alpha, vlr_topk, vlr_diou
        self.dose_reference_images, self.ignore_padding = dose_reference_images, ignore_padding
        self.student_taps, self.teacher_taps = list(STUDENT_TAPS), list(TEACHER_TAPS)

    @classmethod
    def from_config(cls, cfg, student: nn.Module, teacher: nn.Module):
        reg_max = check_distribution_heads(student, teacher)
        check_dense_pair(student, teacher, "LDLoss", cfg.MODEL.KD.TEACHER.RUN)
        c = cfg.MODEL.KD.LD
        return {
            "student": student,
            "teacher": teacher,
            "reg_max": reg_max,
            "main_weight": c.MAIN_WEIGHT,
            "main_avg_factor": c.MAIN_AVG_FACTOR,
            "vlr_weight": c.VLR_WEIGHT,
            "vlr_avg_factor": c.VLR_AVG_FACTOR,
            "cls_weight": c.CLS_WEIGHT,
            "temperature": c.TEMPERATURE,
            "cls_temperature": c.CLS_TEMPERATURE,
            "vlr_alpha": c.VLR_ALPHA,
            "vlr_topk": c.VLR_TOPK,
            "vlr_diou": c.VLR_DIOU,
            "dose_reference_images": c.DOSE_REFERENCE_IMAGES,
            "ignore_padding": c.IGNORE_PADDING,
        }

    def dose(self, num_images: int) -> float:
        """Factor on the per-GPU sums: reference images / images in this batch (1 if off)."""
        return self.dose_reference_images / num_images if self.dose_reference_images > 0 else 1.0

    def forward(self, record: DistillRecord) -> Dict[str, Tensor]:
        student, teacher = self.student, self.teacher
        pair = gather_dense_pair(record, student, teacher, self.ignore_padding)
        s, t = pair.student, pair.teacher
        n, r = pair.gt_labels.shape
        z_s = s.box_reg.reshape(n, r, 4, self.bins)
        z_t = t.box_reg.reshape(n, r, 4, self.bins)
        pos = pair.positives()  # (N, R)
        dose = self.dose(n)
        out = {}
        if self.main_weight:
            w = s.logits.detach().sigmoid().max(dim=-1).values[pos]
            main = weighted_distribution_kl(
                z_s[pos], z_t[pos], w, self.temperature, self.main_avg_factor
            )
            out["loss_kd_ld_main"] = self.main_weight * dose * main
        if self.vlr_weight:
            u = self._vlr(record, pair)
            sel = u > 0
            vlr = weighted_distribution_kl(
                z_s[sel], z_t[sel], u[sel], self.temperature, self.vlr_avg_factor
            )
            out["loss_kd_ld_vlr"] = self.vlr_weight * dose * vlr
        if self.cls_weight:
            levels = s.level_ids()[None].expand(n, r)[pos]
            num_levels = len(s.level_sizes)
            kd = per_level_mean_kl(
                s.logits[pos], t.logits[pos], levels, num_levels, self.cls_temperature
            )
            out["loss_kd_ld_cls"] = self.cls_weight * kd
        return out

    def _vlr(self, record: DistillRecord, pair: DensePair) -> Tensor:
        if record.gt_instances is None:
            raise ValueError("LDLoss with MODEL.KD.LD.VLR_WEIGHT > 0 needs ground-truth instances")
        gt_boxes = [x.gt_boxes.tensor.float() for x in record.gt_instances]
        return _vlr_weights(pair, gt_boxes, self.vlr_alpha, self.vlr_topk, self.vlr_diou)
