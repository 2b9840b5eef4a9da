"""
The registered :class:`CrossKDLoss` (spec crosskd_pkd.md section 2).

Shape shorthand: N images, L levels, C channels, R priors (all levels, Detectron2's order), K
classes, D box-regression width.

One step: the student's tower activations after block k (both branches, every level; recorded
before the block's ReLU by default, after it with ``EMULATE_POST_RELU_HOLD``) pass through an
optional 1x1 adapter, are aligned to the teacher's per-channel batch statistics of the same tap,
and run through the rest of the *teacher's* head (:func:`d2kd.modeling.head_tail.head_from_block`)
inside :func:`d2kd.modeling.frozen.run_frozen` (autograd on, teacher frozen). The KD terms compare
these cross-head predictions with the teacher's own predictions; the student's own predictions get
no KD loss, so the student's blocks k+1.., predictors and scales learn from the detection losses
only, while blocks 1..k, FPN and backbone also get the KD gradient through the teacher's layers.

Terms (each already multiplied by its ``MODEL.KD.CROSSKD.*_WEIGHT``):
``loss_kd_crosskd_cls`` (quality-focal BCE, summed over classes and priors, prior weights omega),
``loss_kd_crosskd_reg`` (``w * (1 - GIoU)`` | ``w * -ln IoU`` | ``w * KL`` with
``w = sigmoid(max_c t) [omega > 0]``), ``loss_kd_crosskd_ctr`` (ATSS: BCE of the cross centerness
against the teacher's on the student's positives). Normalisers as the official code per detector.
"""

from typing import Dict, List, Tuple

import torch
from detectron2.config import configurable
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.meta_arch.fcos import FCOS as D2FCOS
from detectron2.modeling.meta_arch.retinanet import RetinaNet
from torch import Tensor, nn
from torch.nn import functional as F

from d2kd.layers.box_ops import box_area
from d2kd.modeling.adapters import build_adapter
from d2kd.modeling.dense_outputs import DenseOutputs, decode_boxes, dense_outputs
from d2kd.modeling.frozen import run_frozen
from d2kd.modeling.head_tail import (
    check_tail_head,
    head_from_block,
    hold_channels,
    hold_index,
    level_outputs,
    num_blocks,
)
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
from d2kd.modeling.meta_arch.atss import ATSS, centerness_targets
from d2kd.modeling.meta_arch.gfl import GFL
from d2kd.modeling.record import DistillRecord
from d2kd.utils.comm import reduce_mean

from .terms import (
    align_to_teacher,
    clamp_size_deltas,
    giou_distance,
    iou_log_distance,
    kd_quality_focal,
    kl_regression_loss,
    normalized_sum,
    regression_weight,
)

__all__ = ["CrossKDLoss", "REG_LOSSES", "NORMALIZERS", "detector_defaults"]

REG_LOSSES = ("giou", "iou_log", "kl")
NORMALIZERS = ("pos_per_gpu", "pos", "centerness")


def detector_defaults(student: nn.Module) -> Tuple[str, str]:
    """(REG_LOSS, NORMALIZER) of the official code for the student's detector type."""
    if isinstance(student, GFL):
        return "kl", "pos"
    if isinstance(student, ATSS):
        return "giou", "pos"
    if isinstance(student, D2FCOS):
        return "iou_log", "centerness"
    if isinstance(student, RetinaNet):
        return "giou", "pos_per_gpu"
    raise ValueError(
        f"MODEL.KD.CROSSKD: no official setting for a {type(student).__name__} student; set "
        f"REG_LOSS (one of {REG_LOSSES}) and NORMALIZER (one of {NORMALIZERS}) instead of 'auto'"
    )


def _hold_tap(head: nn.Module, k: int, post_relu: bool) -> Tuple[str, str]:
    """The (cls, box) taps of block k's output; ("head:input",) * 2 for k = 0."""
    idx = hold_index(head, k, post_relu)
    if idx is None:
        return "head:input", "head:input"
    return f"head.cls_subnet.{idx}", f"head.bbox_subnet.{idx}"


@DISTILL_LOSS_REGISTRY.register()
class CrossKDLoss(DistillLoss):
    """CrossKD for dense detectors (see the module docstring)."""

    @configurable
    def __init__(
        self,
        *,
        student: nn.Module,
        teacher: nn.Module,
        cross_block: int = 3,
        cls_weight: float = 1.0,
        cls_beta: float = 1.0,
        reg_loss: str = "giou",
        reg_weight: float = 1.0,
        kl_temperature: float = 1.0,
        ctr_weight: float = 0.0,
        normalizer: str = "pos",
        adapter: str = "auto",
        align: bool = True,
        ignore_padding: bool = True,
        include_ignored: bool = False,
        post_relu_hold: bool = False,
    ):
        """
        Args:
            student, teacher: the two dense detectors (kept in a tuple, outside this module's
                tree; the teacher's head layers are run, never trained).
            cross_block: k.
            cls_weight, cls_beta: weight and exponent of the classification term.
            reg_loss: one of :data:`REG_LOSSES`; reg_weight its weight.
            kl_temperature: T of the "kl" regression term.
            ctr_weight: weight of the centerness term (0: not computed).
            normalizer: one of :data:`NORMALIZERS`.
            adapter: student-side adapter of each branch ("auto": 1x1 conv when widths differ).
            align: align the student's activations to the teacher's statistics.
            ignore_padding: weight 0 on priors over batch padding.
            include_ignored: distil the anchors the student's assignment ignores (label -1).
            post_relu_hold: hold block k's ReLU output (official code) instead of its norm output.
        """
        super().__init__()
        if reg_loss not in REG_LOSSES:
            raise ValueError(f'MODEL.KD.CROSSKD.REG_LOSS "{reg_loss}" is not one of {REG_LOSSES}')
        if normalizer not in NORMALIZERS:
            raise ValueError(
                f'MODEL.KD.CROSSKD.NORMALIZER "{normalizer}" is not one of {NORMALIZERS}'
            )
        for which, model in (("student", student), ("teacher", teacher)):
            check_tail_head(model.head, which, "MODEL.KD.CROSSKD")
            if not 0 <= cross_block <= num_blocks(model.head):
                raise ValueError(
                    f"MODEL.KD.CROSSKD.CROSS_BLOCK {cross_block}: the {which}'s head towers have "
                    f"{num_blocks(model.head)} blocks"
                )
        self._models = (student, teacher)  # a tuple: not registered as sub-modules
        self.k = int(cross_block)
        self.cls_weight, self.cls_beta = cls_weight, cls_beta
        self.reg_loss, self.reg_weight, self.kl_temperature = reg_loss, reg_weight, kl_temperature
        self.ctr_weight, self.normalizer = ctr_weight, normalizer
        self.align, self.ignore_padding, self.include_ignored = (
            align,
            ignore_padding,
            include_ignored,
        )
        s_ch, t_ch = hold_channels(student.head, self.k), hold_channels(teacher.head, self.k)
        self.adapters = nn.ModuleDict(
            {b: build_adapter(adapter, s_ch, t_ch) for b in ("cls", "box")}
        )
        self.s_holds = _hold_tap(student.head, self.k, post_relu_hold)
        self.t_holds = _hold_tap(teacher.head, self.k, post_relu_hold)
        self.student_taps = list(STUDENT_TAPS) + list(dict.fromkeys(self.s_holds))
        self.teacher_taps = list(TEACHER_TAPS) + list(dict.fromkeys(self.t_holds))

    @classmethod
    def from_config(cls, cfg, student: nn.Module, teacher: nn.Module):
        check_dense_pair(student, teacher, "CrossKDLoss", cfg.MODEL.KD.TEACHER.RUN)
        c = cfg.MODEL.KD.CROSSKD
        reg_loss, normalizer = c.REG_LOSS, c.NORMALIZER
        if "auto" in (reg_loss, normalizer):
            auto_reg, auto_norm = detector_defaults(student)
            reg_loss = auto_reg if reg_loss == "auto" else reg_loss
            normalizer = auto_norm if normalizer == "auto" else normalizer
        return {
            "student": student,
            "teacher": teacher,
            "cross_block": c.CROSS_BLOCK,
            "cls_weight": c.CLS_WEIGHT,
            "cls_beta": c.CLS_BETA,
            "reg_loss": reg_loss,
            "reg_weight": c.REG_WEIGHT,
            "kl_temperature": c.KL_TEMPERATURE,
            "ctr_weight": c.CTR_WEIGHT,
            "normalizer": normalizer,
            "adapter": c.ADAPTER,
            "align": c.ALIGN,
            "ignore_padding": c.IGNORE_PADDING,
            "include_ignored": c.INCLUDE_IGNORED,
            "post_relu_hold": c.EMULATE_POST_RELU_HOLD,
        }

    # ------------------------------------------------------------------------- cross head
    def _holds(self, record: DistillRecord, side: str) -> List[List[Tensor]]:
        """[cls holds, box holds], each L maps (N, C, H_l, W_l), of one side."""
        taps = self.s_holds if side == "student" else self.t_holds
        out = []
        for tap in taps:
            record.check_unmodified(side, tap)
            if tap == "head:input":
                maps = list(
                    record.student_one(tap) if side == "student" else record.teacher_one(tap)
                )
            else:
                maps = record.student_all(tap) if side == "student" else record.teacher_all(tap)
            out.append(maps)
        return out

    def cross_head(self, record: DistillRecord) -> Tuple[List[Tensor], ...]:
        """The teacher head's outputs from block k on the student's aligned activations."""
        teacher = self._models[1]
        s_holds, t_holds = self._holds(record, "student"), self._holds(record, "teacher")
        if len(s_holds[0]) != len(t_holds[0]):
            raise RuntimeError(
                f"CrossKD: the student's head ran on {len(s_holds[0])} levels, the teacher's on "
                f"{len(t_holds[0])}"
            )
        levels = []  # per level [cls, box], adapted and aligned
        for level in range(len(s_holds[0])):
            pair = []
            for b, s_maps, t_maps in zip(("cls", "box"), s_holds, t_holds):
                u = self.adapters[b](s_maps[level].float())
                pair.append(align_to_teacher(u, t_maps[level].float()) if self.align else u)
            levels.append(pair)

        def tail(levels):
            return [
                head_from_block(teacher.head, self.k, i, c, r) for i, (c, r) in enumerate(levels)
            ]

        outputs = run_frozen(teacher, tail, levels)
        return level_outputs(outputs)

    # ------------------------------------------------------------------------- terms
    def _normalizer(self, pair: DensePair, record: DistillRecord) -> Tensor:
        # Only positives with a nonzero prior weight count: the official code assigns valid
        # anchors only, while Detectron2's RetinaNet also matches anchors on the batch padding
        # of a smaller image (an object at its right edge gets one there).
        pos = pair.positives() & (pair.prior_weights > 0)
        if self.normalizer == "pos_per_gpu":
            return pos.sum(dim=1).clamp(min=1).sum().float()
        if self.normalizer == "pos":
            return torch.as_tensor(num_positives_normalizer(pos), device=pos.device)
        _, gt_boxes = record.student_one("label_anchors()")
        gt_boxes = torch.stack(list(gt_boxes)).to(pos.device)  # (N, R, 4)
        anchors = pair.student.anchors[None].expand_as(gt_boxes)
        ctr = centerness_targets(anchors[pos], gt_boxes[pos])
        return reduce_mean(ctr.sum().detach().float()).clamp(min=1e-6)

    def _prior_weights(self, pair: DensePair) -> Tensor:
        """(N, R) omega: padding (unless not ignored) and ignored anchors (unless included)
        get 0."""
        omega = pair.prior_weights
        if not self.include_ignored:
            omega = omega * (pair.gt_labels != -1).float()
        return omega

    def _clamp(self, box_reg: Tensor) -> Tensor:
        """(N, R, 4) deltas with the official two-sided width/height clamp (spec 2.6(c)) where the
        student decodes with Detectron2's ``Box2BoxTransform``, which clamps from above only
        (RetinaNet, ATSS); unchanged for other coders."""
        student = self._models[0]
        coder = getattr(student, "box2box_transform", None)
        if not isinstance(coder, Box2BoxTransform) or hasattr(student, "kd_decode_boxes"):
            return box_reg
        return clamp_size_deltas(box_reg, coder.weights, coder.scale_clamp)

    def _reg(self, cross: DenseOutputs, t: DenseOutputs, w: Tensor, z: Tensor) -> Tensor:
        student = self._models[0]
        if self.reg_loss == "kl":
            bins = cross.box_reg.shape[-1] // 4
            return kl_regression_loss(cross.box_reg, t.box_reg, w, bins, self.kl_temperature)
        boxes = decode_boxes(student, self._clamp(cross.box_reg), cross.anchors)
        with torch.no_grad():
            t_boxes = decode_boxes(student, self._clamp(t.box_reg), t.anchors).float()
            # Detectron2's FCOS decodes ReLU(deltas), so a teacher box can have zero width or
            # height (mmdet's exp never does); there is no box to distil there, and the IoU of
            # two such boxes is 0 (-ln 1e-6 = 13.8 even when cross == teacher): weight 0.
            w = w * (box_area(t_boxes) > 0).float()
        dist = giou_distance if self.reg_loss == "giou" else iou_log_distance
        return normalized_sum(dist(boxes.float(), t_boxes), w, z)

    def _ctr(self, cross: DenseOutputs, t: DenseOutputs, pair: DensePair, z: Tensor) -> Tensor:
        if not cross.extras:
            raise ValueError(
                "MODEL.KD.CROSSKD.CTR_WEIGHT > 0 but the head has no centerness output (ATSS only)"
            )
        pos = pair.positives()
        c_hat, c_t = cross.extras[0].squeeze(-1)[pos], t.extras[0].squeeze(-1)[pos].detach().float()
        bce = F.binary_cross_entropy_with_logits(c_hat, c_t.sigmoid(), reduction="none")
        return normalized_sum(bce, 1.0, z)

    def forward(self, record: DistillRecord) -> Dict[str, Tensor]:
        student, teacher = self._models
        pair = gather_dense_pair(record, student, teacher, self.ignore_padding)
        t = pair.teacher
        cross = dense_outputs(
            teacher, self.cross_head(record), record.teacher_one("anchor_generator")
        )
        omega = self._prior_weights(pair)  # (N, R)
        z = self._normalizer(pair, record)
        cls = kd_quality_focal(cross.logits, t.logits, self.cls_beta).sum(dim=-1)  # (N, R)
        w = regression_weight(t.logits) * (omega > 0).float()  # (N, R)
        losses = {
            "loss_kd_crosskd_cls": self.cls_weight * normalized_sum(cls, omega, z),
            "loss_kd_crosskd_reg": self.reg_weight * self._reg(cross, t, w, z),
        }
        if self.ctr_weight > 0:
            losses["loss_kd_crosskd_ctr"] = self.ctr_weight * self._ctr(cross, t, pair, z)
        return losses
