"""
BCKD: binary classification distillation + IoU-based localization distillation (Yang et al.,
ICCV 2023), for any dense detector (RetinaNet, FCOS, ATSS, GFL).

Shape shorthand: N images, R priors, K classes; see :mod:`d2kd.methods.bckd.terms` for the per-prior
math.

Both terms are summed over **all** priors of the batch (foreground, background and RetinaNet's
ignored band alike: distillation needs no ground truth, so ignored anchors are included; priors on
batch padding get weight 0 unless ``IGNORE_PADDING`` is off) and divided by ``N_pos``, the
student's number of positives (``sum_images max(#pos, 1)`` averaged over GPUs), as the official
GFL code does. Boxes are decoded at every prior with each detector's own box coder; the official
code only covers GFL, the other heads follow the paper's statement that the method does not depend
on the head. Terms: ``loss_kd_bckd_cls`` (times alpha1) and ``loss_kd_bckd_loc`` (times alpha2).
"""

from typing import Dict

import torch
from detectron2.config import configurable
from torch import Tensor, nn

from d2kd.methods.bckd.terms import (
    LOC_MODES,
    bckd_cls_per_prior,
    bckd_loc_per_prior,
    bckd_loc_weight,
)
from d2kd.modeling.dense_outputs import decode_boxes
from d2kd.modeling.losses.base import DistillLoss
from d2kd.modeling.losses.dense_pair import (
    STUDENT_TAPS,
    TEACHER_TAPS,
    DensePair,
    check_dense_pair,
    gather_dense_pair,
    num_positives_normalizer,
)
from d2kd.modeling.losses.registry import DISTILL_LOSS_REGISTRY
from d2kd.modeling.record import DistillRecord
from d2kd.utils.modules import hold_unregistered

__all__ = ["BCKDLoss"]


def _level_gate(pair: DensePair) -> Tensor:
    """(R,) 1 on levels with at least one positive in the batch, else 0 (official quirk)."""
    level_ids = pair.student.level_ids()
    num_levels = len(pair.student.level_sizes)
    pos_levels = level_ids[None].expand_as(pair.gt_labels)[pair.positives()]
    has_pos = torch.bincount(pos_levels, minlength=num_levels) > 0
    return has_pos[level_ids].float()


@DISTILL_LOSS_REGISTRY.register()
class BCKDLoss(DistillLoss):
    """BCKD on the student's and teacher's head outputs (see the module docstring)."""

    @configurable
    def __init__(
        self,
        *,
        student: nn.Module,
        teacher: nn.Module,
        cls_weight: float = 1.0,
        loc_weight: float = 4.0,
        loc_loss: str = "giou",
        level_gate: bool = False,
        ignore_padding: bool = True,
    ):
        """
        Args:
            student, teacher: the two detectors (kept outside this module's tree: only their
                head layout and box coders are used, never their parameters).
            cls_weight: alpha1.
            loc_weight: alpha2.
            loc_loss: "giou" (official) or "iou" (paper).
            level_gate: emulate the official per-level zero-positive gate.
            ignore_padding: weight 0 on priors over batch padding.
        """
        super().__init__()
        if loc_loss not in LOC_MODES:
            raise ValueError(f'MODEL.KD.BCKD.LOC_LOSS "{loc_loss}" is not one of {LOC_MODES}')
        hold_unregistered(self, "student", student)
        hold_unregistered(self, "teacher", teacher)
        self.cls_weight, self.loc_weight, self.loc_loss = cls_weight, loc_weight, loc_loss
        self.level_gate, self.ignore_padding = level_gate, ignore_padding
        self.student_taps, self.teacher_taps = list(STUDENT_TAPS), list(TEACHER_TAPS)

    @classmethod
    def from_config(cls, cfg, student: nn.Module, teacher: nn.Module):
        check_dense_pair(student, teacher, "BCKDLoss", cfg.MODEL.KD.TEACHER.RUN)
        c = cfg.MODEL.KD.BCKD
        return {
            "student": student,
            "teacher": teacher,
            "cls_weight": c.CLS_WEIGHT,
            "loc_weight": c.LOC_WEIGHT,
            "loc_loss": c.LOC_LOSS,
            "level_gate": c.LEVEL_GATE,
            "ignore_padding": c.IGNORE_PADDING,
        }

    def forward(self, record: DistillRecord) -> Dict[str, Tensor]:
        student, teacher = self.student, self.teacher
        pair = gather_dense_pair(record, student, teacher, self.ignore_padding)
        s, t = pair.student, pair.teacher
        weights = pair.prior_weights  # (N, R)
        if self.level_gate:
            weights = weights * _level_gate(pair)[None]
        n_pos = num_positives_normalizer(pair.positives())
        cls = (bckd_cls_per_prior(s.logits, t.logits) * weights).sum() / n_pos
        s_boxes = decode_boxes(student, s.box_reg, s.anchors)  # (N, R, 4)
        with torch.no_grad():
            t_boxes = decode_boxes(teacher, t.box_reg, t.anchors)
        loc_w = bckd_loc_weight(s.logits, t.logits) * weights
        loc = (loc_w * bckd_loc_per_prior(s_boxes.float(), t_boxes.float(), self.loc_loss)).sum()
        return {
            "loss_kd_bckd_cls": self.cls_weight * cls,
            "loss_kd_bckd_loc": self.loc_weight * loc / n_pos,
        }
