"""
DETRDistill (Chang et al., "DETRDistill: A Universal Knowledge Distillation Framework for
DETR-families", ICCV 2023) for DETR-type detectors such as :class:`DeformableDETR`, as four
registered losses composed through ``MODEL.KD.LOSSES`` and weighted by ``MODEL.KD.LOSS_WEIGHTS``
(settings in ``MODEL.KD.DETRDISTILL``; terms ``loss_kd_detrdistill_<term>``):

* :class:`DETRLogitsDistillLoss`: Hungarian-matching logits distillation at every decoder stage;
  all teacher queries are soft targets; soft-BCE / L1 / GIoU (1 / 5 / 2) in cost and loss
  (terms ``logits_cls``, ``logits_l1``, ``logits_giou``, summed over stages);
* :class:`DETRFeatureDistillLoss`: target-aware feature distillation, one mask per teacher stage
  (term ``feat``);
* :class:`DETRQueryPriorLoss`: the teacher's queries through the student's decoder (the
  student's entry point ``forward_query_group``), trained against the GT re-matched to the
  group's own predictions (the released code; ``QUERY_PRIOR.ASSIGNMENT: "teacher"``: the
  teacher's own assignment, the paper's description) (terms ``query_cls``, ``query_l1``,
  ``query_giou``);
* :class:`DETRQueryContrastLoss`: the official code's undocumented InfoNCE on matched query states
  (term ``contrast``; not in the paper setting).

The paper setting composes the first three (``configs/detrdistill/``). Student stage j is
distilled from teacher stage ``STAGE_MAP``(j) (see
:func:`d2kd.methods.detrdistill.stage_map.stage_mapping`). The losses read the student tap
``"detr_outputs()"`` and the teacher run ``"distill"`` (``teacher.forward_distill``); none of them
reaches into a detector's modules. Shape shorthand: K_S / K_T stages, B images.
"""

from typing import Any, Dict, List, Sequence, Tuple

import torch
from detectron2.config import configurable
from torch import Tensor, nn

from d2kd.layers.detr.criterion import average_num_boxes
from d2kd.layers.detr.outputs import DETROutputs
from d2kd.methods.detrdistill.feature_distill import (
    batch_quality_queries,
    masked_feature_mse,
    target_aware_mask,
)
from d2kd.methods.detrdistill.logits_distill import logits_distill_losses, match_to_teacher
from d2kd.methods.detrdistill.query_contrast import QueryContrastHead
from d2kd.methods.detrdistill.query_prior import ASSIGNMENTS, query_group_assignments
from d2kd.methods.detrdistill.stage_map import STAGE_MAPS, stage_mapping
from d2kd.modeling.adapters import build_adapter
from d2kd.modeling.checks import check_same_num_classes
from d2kd.modeling.losses.base import DistillLoss
from d2kd.modeling.losses.registry import DISTILL_LOSS_REGISTRY
from d2kd.modeling.record import DistillRecord
from d2kd.utils.modules import hold_unregistered

__all__ = [
    "DETRLogitsDistillLoss",
    "DETRFeatureDistillLoss",
    "DETRQueryPriorLoss",
    "DETRQueryContrastLoss",
    "check_detr_like",
]

# What every DETRDistill loss needs of a DETR-type model; the query prior needs more of the student.
_DETR_METHODS = ("detr_outputs", "forward_distill")
_QUERY_GROUP_METHODS = ("forward_query_group", "prepare_targets", "match", "set_losses")
_PREFIX = "loss_kd_detrdistill_"
_KEY = "MODEL.KD.DETRDISTILL."


def check_detr_like(
    model: nn.Module, which: str, key: str, loss: str, methods: Sequence[str] = _DETR_METHODS
) -> None:
    """Raise a TypeError naming ``key`` unless ``model`` has ``methods`` (as DeformableDETR)."""
    missing = [m for m in methods if not callable(getattr(model, m, None))]
    if missing:
        raise TypeError(
            f"{loss} needs a DETR-type {which} (e.g. DeformableDETR), but {key} builds a "
            f"{type(model).__name__}, which lacks {missing}"
        )


def _check_pair(cfg, student: nn.Module, teacher: nn.Module, loss: str) -> None:
    """The checks every DETRDistill loss makes at build time."""
    check_detr_like(student, "student", "MODEL.KD.STUDENT_META_ARCHITECTURE", loss)
    check_detr_like(teacher, "teacher", "MODEL.KD.TEACHER.CONFIG_FILE", loss)
    if cfg.MODEL.KD.TEACHER.RUN not in ("auto", "distill"):
        raise ValueError(
            f'{loss} reads teacher.forward_distill: MODEL.KD.TEACHER.RUN must be "auto" or '
            f'"distill", not "{cfg.MODEL.KD.TEACHER.RUN}"'
        )
    check_same_num_classes(student, teacher, loss)


def _stage_map(cfg, student: nn.Module, teacher: nn.Module) -> List[int]:
    name = cfg.MODEL.KD.DETRDISTILL.STAGE_MAP
    if name not in STAGE_MAPS:
        raise ValueError(f'{_KEY}STAGE_MAP "{name}" is not one of {STAGE_MAPS}')
    return stage_mapping(student.num_stages, teacher.num_stages, name)


def _cost_weights(cfg) -> Tuple[float, float, float]:
    c = cfg.MODEL.KD.DETRDISTILL.LOGITS
    return (c.CLS_WEIGHT, c.L1_WEIGHT, c.GIOU_WEIGHT)


class _DETRDistillTerm(DistillLoss):
    """What the four losses share: the student tap, reading both models' :class:`DETROutputs`,
    and the student-to-teacher query matching of every stage (computed once per step)."""

    def __init__(self, stage_map: Sequence[int]):
        super().__init__()
        self.stage_map = list(stage_map)
        self.student_taps = ["detr_outputs()"]

    def _outputs(self, record: DistillRecord) -> Tuple[DETROutputs, DETROutputs, List[tuple]]:
        """(student outputs, teacher outputs, per-image (h, w))."""
        s: DETROutputs = record.student_one("detr_outputs()")
        t = record.teacher_output
        if not isinstance(t, DETROutputs):
            raise RuntimeError(
                f"{type(self).__name__} expects the teacher run 'distill' (DETROutputs), got "
                f'{type(t).__name__}: set MODEL.KD.TEACHER.RUN to "auto" or "distill"'
            )
        return s, t, [tuple(hw) for hw in record.image_sizes]

    def _matches(self, record: DistillRecord, weights: Tuple[float, float, float]) -> List[list]:
        """
        Per student stage j: B (student_idx, teacher_idx) pairs against teacher stage map[j],
        with the soft-BCE / L1 / GIoU cost ``weights``. Shared through ``record.extras`` under
        ``("detrdistill_matches", stage_map, weights)``, so the logits and contrastive losses
        match once per step.
        """
        key = ("detrdistill_matches", tuple(self.stage_map), tuple(weights))
        if key not in record.extras:
            s, t, sizes = self._outputs(record)
            record.extras[key] = [
                match_to_teacher(
                    s.pred_logits[j], s.pred_boxes[j], t.pred_logits[k], t.pred_boxes[k], sizes,
                    weights,
                )
                for j, k in enumerate(self.stage_map)
            ]  # fmt: skip
        return record.extras[key]


@DISTILL_LOSS_REGISTRY.register()
class DETRLogitsDistillLoss(_DETRDistillTerm):
    """Hungarian-matching logits distillation (spec A4); terms ``logits_{cls,l1,giou}``."""

    @configurable
    def __init__(self, *, stage_map: Sequence[int], weights: Tuple[float, float, float]):
        """
        Args:
            stage_map: 0-based teacher stage of each student stage.
            weights: soft-BCE, L1 and GIoU weights, in the matching cost and in the loss.
        """
        super().__init__(stage_map)
        self.weights = tuple(weights)

    @classmethod
    def from_config(cls, cfg, student: nn.Module, teacher: nn.Module) -> Dict[str, Any]:
        _check_pair(cfg, student, teacher, cls.__name__)
        return {"stage_map": _stage_map(cfg, student, teacher), "weights": _cost_weights(cfg)}

    def forward(self, record: DistillRecord) -> Dict[str, Tensor]:
        s, t, sizes = self._outputs(record)
        matches = self._matches(record, self.weights)
        cls = l1 = giou = 0.0
        for j, k in enumerate(self.stage_map):
            terms = logits_distill_losses(
                s.pred_logits[j].float(), s.pred_boxes[j].float(),
                t.pred_logits[k].float(), t.pred_boxes[k].float(), sizes, matches[j],
            )  # fmt: skip
            cls, l1, giou = cls + terms[0], l1 + terms[1], giou + terms[2]
        w_cls, w_l1, w_giou = self.weights
        return {
            _PREFIX + "logits_cls": cls * w_cls,
            _PREFIX + "logits_l1": l1 * w_l1,
            _PREFIX + "logits_giou": giou * w_giou,
        }


@DISTILL_LOSS_REGISTRY.register()
class DETRFeatureDistillLoss(_DETRDistillTerm):
    """Target-aware feature distillation (spec A5), summed over teacher stages; term ``feat``."""

    @configurable
    def __init__(
        self,
        *,
        adapters: Sequence[Tuple[int, int, str]],
        topk: int = 100,
        source: str = "neck",
        floor: float = 0.01,
        use_iou: bool = True,
        mask_padding: bool = False,
    ):
        """
        Args:
            adapters: (student_channels, teacher_channels, ADAPTER_REGISTRY name or "auto") per
                feature level.
            topk: (query, class) entries of the teacher's probabilities per stage.
            source: "neck" (encoder inputs) or "memory" (encoder output).
            floor: lower bound of the unnormalised mask.
            use_iou: weight queries by probability x best IoU with the GT (else probability).
            mask_padding: zero the mask on padded pixels.
        """
        super().__init__(stage_map=())
        self.adapters = nn.ModuleList(build_adapter(n, s, t) for s, t, n in adapters)
        self.topk, self.source, self.floor = topk, source, floor
        self.use_iou, self.mask_padding = use_iou, mask_padding

    @classmethod
    def from_config(cls, cfg, student: nn.Module, teacher: nn.Module) -> Dict[str, Any]:
        _check_pair(cfg, student, teacher, cls.__name__)
        c = cfg.MODEL.KD.DETRDISTILL.FEAT
        if c.SOURCE not in ("neck", "memory"):
            raise ValueError(f'{_KEY}FEAT.SOURCE "{c.SOURCE}" is not one of ("neck", "memory")')
        s_levels, t_levels = student.num_feature_levels, teacher.num_feature_levels
        if s_levels != t_levels:
            raise ValueError(
                f"{cls.__name__} needs the same feature levels in teacher ({t_levels}) and student "
                f"({s_levels}): check MODEL.DEFORMABLE_DETR.NUM_FEATURE_LEVELS"
            )
        return {
            "adapters": [(student.hidden_dim, teacher.hidden_dim, c.ADAPTER)] * s_levels,
            "topk": c.TOPK,
            "source": c.SOURCE,
            "floor": c.MASK_FLOOR,
            "use_iou": c.USE_IOU_QUALITY,
            "mask_padding": c.MASK_PADDING,
        }

    def forward(self, record: DistillRecord) -> Dict[str, Tensor]:
        s, t, sizes = self._outputs(record)
        if self.source == "memory":
            s_feats = s.encoder.level_maps(s.encoder.memory)
            t_feats = t.encoder.level_maps(t.encoder.memory)
        else:
            s_feats, t_feats = s.features, t.features
        s_feats = [adapter(f.float()) for adapter, f in zip(self.adapters, s_feats)]
        t_feats = [f.float() for f in t_feats]
        valid = [~m for m in t.masks] if self.mask_padding else [None] * len(t_feats)
        gt = record.gt_instances
        gt_boxes = None if gt is None else [x.gt_boxes.tensor for x in gt]
        total = s_feats[0].new_zeros(())
        for k in range(t.num_stages):
            queries, quality = batch_quality_queries(
                t.pred_logits[k].float(), t.pred_boxes[k].float(), t.hs[k].float(),
                gt_boxes, sizes, self.topk, self.use_iou,
            )  # fmt: skip
            for s_f, t_f, v in zip(s_feats, t_feats, valid):
                mask = target_aware_mask(queries, quality, t_f, self.floor, v)
                total = total + masked_feature_mse(s_f, t_f, mask)
        return {_PREFIX + "feat": total}


@DISTILL_LOSS_REGISTRY.register()
class DETRQueryPriorLoss(_DETRDistillTerm):
    """
    Query-prior assignment distillation (spec A6): the teacher's learnable queries decoded by the
    student (:meth:`DeformableDETR.forward_query_group`, an extra training-only group over the
    student's encoder state) and trained with the student's set losses against the assignment
    ``assignment`` selects (:func:`~d2kd.methods.detrdistill.query_prior.query_group_assignments`:
    "rematch", the released code, or "teacher", the paper's description); terms
    ``query_{cls,l1,giou}``, summed over student stages.

    The student and the teacher are held as plain references (never sub-modules: registering
    them would put the student's parameters twice in the optimizer and the checkpoint, and the
    teacher in both).
    """

    @configurable
    def __init__(
        self,
        *,
        student: nn.Module,
        teacher: nn.Module,
        stage_map: Sequence[int],
        rerun_encoder: bool = False,
        assignment: str = "rematch",
    ):
        """
        Args:
            student / teacher: DETR-type detectors (see :data:`_QUERY_GROUP_METHODS`).
            stage_map: 0-based teacher stage of each student stage (used by "teacher").
            rerun_encoder: rerun the student's encoder for the group (official code).
            assignment: "rematch" (the group's own Hungarian matching to the GT, as the
                released code) or "teacher" (the teacher's assignment, the paper's text).
        """
        super().__init__(stage_map)
        if assignment not in ASSIGNMENTS:
            raise ValueError(
                f'{_KEY}QUERY_PRIOR.ASSIGNMENT "{assignment}" is not one of {ASSIGNMENTS}'
            )
        hold_unregistered(self, "student", student)
        hold_unregistered(self, "teacher", teacher)
        self.rerun_encoder = rerun_encoder
        self.assignment = assignment

    @classmethod
    def from_config(cls, cfg, student: nn.Module, teacher: nn.Module) -> Dict[str, Any]:
        _check_pair(cfg, student, teacher, cls.__name__)
        key = "MODEL.KD.STUDENT_META_ARCHITECTURE"
        check_detr_like(student, "student", key, cls.__name__, _QUERY_GROUP_METHODS)
        c = cfg.MODEL.KD.DETRDISTILL.QUERY_PRIOR
        if c.ASSIGNMENT == "teacher":
            check_detr_like(
                teacher, "teacher", "MODEL.KD.TEACHER.CONFIG_FILE", cls.__name__, ("match",)
            )
        if student.hidden_dim != teacher.hidden_dim:
            raise ValueError(
                f"{cls.__name__} runs the teacher's queries through the student's decoder, so both "
                f"need the same MODEL.DEFORMABLE_DETR.HIDDEN_DIM (teacher {teacher.hidden_dim}, "
                f"student {student.hidden_dim}); remove it from MODEL.KD.LOSSES otherwise"
            )
        return {
            "student": student,
            "teacher": teacher,
            "stage_map": _stage_map(cfg, student, teacher),
            "rerun_encoder": c.RERUN_ENCODER,
            "assignment": c.ASSIGNMENT,
        }

    def forward(self, record: DistillRecord) -> Dict[str, Tensor]:
        s, t, _ = self._outputs(record)
        if record.gt_instances is None:
            raise RuntimeError(
                f"{type(self).__name__} needs ground truth ('instances') in the batch"
            )
        state = s.encoder.float()  # distillation runs in fp32 (autocast is off here)
        logits, boxes, _ = self.student.forward_query_group(
            state, t.query_embed.detach().float(), rerun_encoder=self.rerun_encoder
        )
        targets = self.student.prepare_targets(record.gt_instances)
        num_boxes = average_num_boxes(sum(len(x["labels"]) for x in targets), logits.device)
        assignments = query_group_assignments(
            self.assignment, logits, boxes, t.pred_logits, t.pred_boxes, targets,
            self.stage_map, self.student.match, getattr(self.teacher, "match", None),
        )  # fmt: skip
        totals: Dict[str, Tensor] = {}
        for j in range(len(self.stage_map)):
            terms = self.student.set_losses(
                logits[j].float(), boxes[j].float(), targets, assignments[j], num_boxes
            )
            for name, value in terms.items():
                totals[name] = totals.get(name, 0.0) + value
        names = {"loss_ce": "query_cls", "loss_bbox": "query_l1", "loss_giou": "query_giou"}
        return {_PREFIX + names[n]: v for n, v in totals.items()}


@DISTILL_LOSS_REGISTRY.register()
class DETRQueryContrastLoss(_DETRDistillTerm):
    """
    The official code's undocumented contrastive query term (spec A7): InfoNCE between projected
    student decoder states and the teacher states they are matched to (the logits loss's
    matching, with the ``LOGITS`` cost weights), summed over stages; term ``contrast``.
    """

    @configurable
    def __init__(
        self,
        *,
        stage_map: Sequence[int],
        weights: Tuple[float, float, float],
        student_dim: int,
        teacher_dim: int,
        proj_dim: int = 512,
        temp: float = 0.07,
    ):
        """
        Args:
            stage_map: 0-based teacher stage of each student stage.
            weights: soft-BCE, L1 and GIoU weights of the matching cost.
            student_dim / teacher_dim: decoder widths; proj_dim: projection width;
            temp: InfoNCE temperature.
        """
        super().__init__(stage_map)
        self.weights = tuple(weights)
        self.contrast_head = QueryContrastHead(student_dim, teacher_dim, proj_dim, temp)

    @classmethod
    def from_config(cls, cfg, student: nn.Module, teacher: nn.Module) -> Dict[str, Any]:
        _check_pair(cfg, student, teacher, cls.__name__)
        c = cfg.MODEL.KD.DETRDISTILL.CONTRAST
        return {
            "stage_map": _stage_map(cfg, student, teacher),
            "weights": _cost_weights(cfg),
            "student_dim": student.hidden_dim,
            "teacher_dim": teacher.hidden_dim,
            "proj_dim": c.PROJ_DIM,
            "temp": c.TEMP,
        }

    def forward(self, record: DistillRecord) -> Dict[str, Tensor]:
        s, t, _ = self._outputs(record)
        matches = self._matches(record, self.weights)
        total = 0.0
        for j, k in enumerate(self.stage_map):
            s_states = torch.cat([s.hs[j][b][si] for b, (si, _) in enumerate(matches[j])])
            t_states = torch.cat([t.hs[k][b][ti] for b, (_, ti) in enumerate(matches[j])])
            total = total + self.contrast_head(s_states.float(), t_states.float())
        return {_PREFIX + "contrast": total}
