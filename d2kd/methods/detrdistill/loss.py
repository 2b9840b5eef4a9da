"""
DETRDistill (Chang et al., "DETRDistill: A Universal Knowledge Distillation Framework for
DETR-families", ICCV 2023) for DETR-type detectors such as :class:`DeformableDETR`.

Components, each switched in ``MODEL.KD.DETRDISTILL`` (terms ``loss_kd_detrdistill_<term>``):

* ``LOGITS``: Hungarian-matching logits distillation at every decoder stage; all teacher
  queries are soft targets; soft-BCE / L1 / GIoU (1 / 5 / 2) in cost and loss
  (terms ``logits_cls``, ``logits_l1``, ``logits_giou``, summed over stages);
* ``FEAT``: target-aware feature distillation, one mask per teacher stage (term ``feat``);
* ``QUERY_PRIOR``: the teacher's queries through the student's decoder, trained with the
  teacher's own assignment (terms ``query_cls``, ``query_l1``, ``query_giou``); the decoder
  reruns on the memory of the student's own forward unless ``RERUN_ENCODER``;
* ``CONTRAST``: the official code's undocumented InfoNCE on matched query states (off by default).

Student stage j is distilled from teacher stage ``STAGE_MAP``(j) (see
:func:`d2kd.methods.detrdistill.stage_map.stage_mapping`). Shape shorthand: K_S / K_T stages, B images.
"""

import dataclasses
from typing import Any, Dict, List, Optional

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
from d2kd.methods.detrdistill.stage_map import STAGE_MAPS, stage_mapping
from d2kd.modeling.adapters import build_adapter
from d2kd.modeling.checks import check_same_num_classes
from d2kd.modeling.losses.base import DistillLoss
from d2kd.modeling.losses.registry import DISTILL_LOSS_REGISTRY
from d2kd.modeling.record import DistillRecord

__all__ = ["DETRDistillLoss", "check_detr_like"]

_DETR_METHODS = ("detr_outputs", "decode_with_queries", "forward_distill", "prepare_targets")
_PREFIX = "loss_kd_detrdistill_"


def check_detr_like(model: nn.Module, which: str, key: str) -> None:
    """Raise a TypeError naming ``key`` unless ``model`` exposes DETR outputs (as DeformableDETR)."""
    missing = [m for m in _DETR_METHODS if not callable(getattr(model, m, None))]
    if missing:
        raise TypeError(
            f"DETRDistillLoss needs a DETR-type {which} (e.g. DeformableDETR), but {key} builds a "
            f"{type(model).__name__}, which lacks {missing}"
        )


@DISTILL_LOSS_REGISTRY.register()
class DETRDistillLoss(DistillLoss):
    """DETRDistill's losses (see the module docstring). Reads the student tap "detr_outputs()"
    and the teacher run "distill" (``teacher.forward_distill``)."""

    @configurable
    def __init__(
        self,
        *,
        student: nn.Module,
        teacher: nn.Module,
        stage_map: List[int],
        logits: Optional[Dict[str, float]] = None,
        feat: Optional[Dict[str, Any]] = None,
        query_prior: Optional[Dict[str, Any]] = None,
        contrast: Optional[Dict[str, Any]] = None,
    ):
        """
        Args:
            student / teacher: DETR-type detectors, kept as plain references (never sub-modules:
                the student runs its decoder again for the query-prior group).
            stage_map: 0-based teacher stage of each student stage.
            logits: None (off) or {"weight", "cls", "l1", "giou"}.
            feat: None (off) or {"weight", "topk", "source", "floor", "use_iou", "mask_padding",
                "adapters": [(student_channels, teacher_channels, name)] per level}.
            query_prior: None (off) or {"weight", "rerun_encoder"}.
            contrast: None (off) or {"weight", "temp", "proj_dim", "student_dim", "teacher_dim"}.
        """
        super().__init__()
        # Plain references outside the module tree: registering them would put the student's
        # parameters twice in the optimizer and the checkpoint, and the teacher in both.
        self.__dict__["student"] = student
        self.__dict__["teacher"] = teacher
        self.stage_map = list(stage_map)
        self.logits_cfg, self.feat_cfg = logits, feat
        self.query_cfg, self.contrast_cfg = query_prior, contrast
        self.student_taps = ["detr_outputs()"]
        if feat is not None:
            self.adapters = nn.ModuleList(build_adapter(n, s, t) for s, t, n in feat["adapters"])
        if contrast is not None:
            self.contrast_head = QueryContrastHead(
                contrast["student_dim"],
                contrast["teacher_dim"],
                contrast["proj_dim"],
                contrast["temp"],
            )

    @classmethod
    def from_config(cls, cfg, student: nn.Module, teacher: nn.Module) -> Dict[str, Any]:
        c = cfg.MODEL.KD.DETRDISTILL
        check_detr_like(student, "student", "MODEL.KD.STUDENT_META_ARCHITECTURE")
        check_detr_like(teacher, "teacher", "MODEL.KD.TEACHER.CONFIG_FILE")
        if cfg.MODEL.KD.TEACHER.RUN not in ("auto", "distill"):
            raise ValueError(
                f'DETRDistillLoss reads teacher.forward_distill: MODEL.KD.TEACHER.RUN must be "auto" or '
                f'"distill", not "{cfg.MODEL.KD.TEACHER.RUN}"'
            )
        check_same_num_classes(student, teacher, "DETRDistillLoss")
        if not (c.LOGITS.ENABLED or c.FEAT.ENABLED or c.QUERY_PRIOR.ENABLED or c.CONTRAST.ENABLED):
            raise ValueError(
                "MODEL.KD.DETRDISTILL: LOGITS, FEAT, QUERY_PRIOR and CONTRAST are all disabled; "
                "enable one or remove DETRDistillLoss from MODEL.KD.LOSSES"
            )
        if c.LOGITS.STAGE_MAP not in STAGE_MAPS:
            raise ValueError(
                f'MODEL.KD.DETRDISTILL.LOGITS.STAGE_MAP "{c.LOGITS.STAGE_MAP}" is not one of {STAGE_MAPS}'
            )
        return {
            "student": student,
            "teacher": teacher,
            "stage_map": stage_mapping(student.num_stages, teacher.num_stages, c.LOGITS.STAGE_MAP),
            "logits": _logits_args(c.LOGITS),
            "feat": _feat_args(c.FEAT, student, teacher),
            "query_prior": _query_prior_args(c.QUERY_PRIOR, student, teacher),
            "contrast": _contrast_args(c.CONTRAST, student, teacher),
        }

    # ----------------------------------------------------------------------------- forward
    def forward(self, record: DistillRecord) -> Dict[str, Tensor]:
        s: DETROutputs = record.student_one("detr_outputs()")
        t = record.teacher_output
        if not isinstance(t, DETROutputs):
            raise RuntimeError(
                f"DETRDistillLoss expects the teacher run 'distill' (DETROutputs), got {type(t).__name__}: "
                'set MODEL.KD.TEACHER.RUN to "auto" or "distill"'
            )
        sizes = [tuple(hw) for hw in record.image_sizes]
        out: Dict[str, Tensor] = {}
        matches = None
        if self.logits_cfg is not None or self.contrast_cfg is not None:
            matches = self._match(s, t, sizes)
        if self.logits_cfg is not None:
            out.update(self._logits_terms(s, t, sizes, matches))
        if self.feat_cfg is not None:
            out[_PREFIX + "feat"] = self._feature_term(s, t, sizes, record.gt_instances)
        if self.query_cfg is not None:
            out.update(self._query_prior_terms(s, t, record.gt_instances))
        if self.contrast_cfg is not None:
            out[_PREFIX + "contrast"] = self._contrast_term(s, t, matches)
        return out

    def _match(self, s: DETROutputs, t: DETROutputs, sizes) -> List[list]:
        """Per student stage j: B (student_idx, teacher_idx) pairs against teacher stage map[j]."""
        w = self.logits_cfg or {"cls": 1.0, "l1": 5.0, "giou": 2.0}
        weights = (w["cls"], w["l1"], w["giou"])
        return [
            match_to_teacher(
                s.pred_logits[j], s.pred_boxes[j], t.pred_logits[k], t.pred_boxes[k], sizes, weights
            )
            for j, k in enumerate(self.stage_map)
        ]

    def _logits_terms(self, s: DETROutputs, t: DETROutputs, sizes, matches) -> Dict[str, Tensor]:
        c = self.logits_cfg
        cls = l1 = giou = 0.0
        for j, k in enumerate(self.stage_map):
            terms = logits_distill_losses(
                s.pred_logits[j].float(), s.pred_boxes[j].float(),
                t.pred_logits[k].float(), t.pred_boxes[k].float(), sizes, matches[j],
            )  # fmt: skip
            cls, l1, giou = cls + terms[0], l1 + terms[1], giou + terms[2]
        w = c["weight"]
        return {
            _PREFIX + "logits_cls": cls * c["cls"] * w,
            _PREFIX + "logits_l1": l1 * c["l1"] * w,
            _PREFIX + "logits_giou": giou * c["giou"] * w,
        }

    def _feature_term(self, s: DETROutputs, t: DETROutputs, sizes, gt_instances) -> Tensor:
        c = self.feat_cfg
        if c["source"] == "memory":
            s_feats = s.encoder.level_maps(s.encoder.memory)
            t_feats = t.encoder.level_maps(t.encoder.memory)
        else:
            s_feats, t_feats = s.features, t.features
        s_feats = [adapter(f.float()) for adapter, f in zip(self.adapters, s_feats)]
        t_feats = [f.float() for f in t_feats]
        valid = [~m for m in t.masks] if c["mask_padding"] else [None] * len(t_feats)
        gt_boxes = None if gt_instances is None else [x.gt_boxes.tensor for x in gt_instances]
        total = s_feats[0].new_zeros(())
        for k in range(t.num_stages):
            queries, quality = batch_quality_queries(
                t.pred_logits[k].float(), t.pred_boxes[k].float(), t.hs[k].float(),
                gt_boxes, sizes, c["topk"], c["use_iou"],
            )  # fmt: skip
            for s_f, t_f, v in zip(s_feats, t_feats, valid):
                mask = target_aware_mask(queries, quality, t_f, c["floor"], v)
                total = total + masked_feature_mse(s_f, t_f, mask)
        return total * c["weight"]

    def _query_prior_terms(self, s: DETROutputs, t: DETROutputs, gt_instances) -> Dict[str, Tensor]:
        if gt_instances is None:
            raise RuntimeError(
                "DETRDistill QUERY_PRIOR needs ground truth ('instances') in the batch"
            )
        student, teacher = self.student, self.teacher
        state = s.encoder.float()  # distillation runs in fp32 (autocast is off here)
        if self.query_cfg["rerun_encoder"]:
            state = student.transformer.encode(dataclasses.replace(state, memory=None))
        logits, boxes, _ = student.decode_with_queries(state, t.query_embed.detach().float())
        targets = student.prepare_targets(gt_instances)
        num_boxes = average_num_boxes(sum(len(x["labels"]) for x in targets), logits.device)
        assignments = {}
        totals: Dict[str, Tensor] = {}
        for j, k in enumerate(self.stage_map):
            if k not in assignments:  # the teacher's own matching of its stage-k predictions
                assignments[k] = teacher.criterion.matcher(
                    t.pred_logits[k], t.pred_boxes[k], targets
                )
            terms = student.criterion.stage_losses(
                logits[j].float(), boxes[j].float(), targets, assignments[k], num_boxes
            )
            for name, value in terms.items():
                totals[name] = totals.get(name, 0.0) + value
        w = self.query_cfg["weight"]
        names = {"loss_ce": "query_cls", "loss_bbox": "query_l1", "loss_giou": "query_giou"}
        return {_PREFIX + names[n]: v * w for n, v in totals.items()}

    def _contrast_term(self, s: DETROutputs, t: DETROutputs, matches) -> Tensor:
        total = 0.0
        for j, k in enumerate(self.stage_map):
            s_states = torch.cat([s.hs[j][b][si] for b, (si, _) in enumerate(matches[j])])
            t_states = torch.cat([t.hs[k][b][ti] for b, (_, ti) in enumerate(matches[j])])
            total = total + self.contrast_head(s_states.float(), t_states.float())
        return total * self.contrast_cfg["weight"]


# --------------------------------------------------------------------------------- config
def _logits_args(c) -> Optional[Dict[str, float]]:
    if not c.ENABLED:
        return None
    return {"weight": c.WEIGHT, "cls": c.CLS_WEIGHT, "l1": c.L1_WEIGHT, "giou": c.GIOU_WEIGHT}


def _feat_args(c, student: nn.Module, teacher: nn.Module) -> Optional[Dict[str, Any]]:
    if not c.ENABLED:
        return None
    if c.SOURCE not in ("neck", "memory"):
        raise ValueError(
            f'MODEL.KD.DETRDISTILL.FEAT.SOURCE "{c.SOURCE}" is not one of ("neck", "memory")'
        )
    s_levels, t_levels = student.num_feature_levels, teacher.num_feature_levels
    if s_levels != t_levels:
        raise ValueError(
            f"MODEL.KD.DETRDISTILL.FEAT needs the same feature levels in teacher ({t_levels}) and student "
            f"({s_levels}): check MODEL.DEFORMABLE_DETR.NUM_FEATURE_LEVELS"
        )
    adapters = [(student.hidden_dim, teacher.hidden_dim, c.ADAPTER)] * s_levels
    return {
        "weight": c.WEIGHT,
        "topk": c.TOPK,
        "source": c.SOURCE,
        "floor": c.MASK_FLOOR,
        "use_iou": c.USE_IOU_QUALITY,
        "mask_padding": c.MASK_PADDING,
        "adapters": adapters,
    }


def _query_prior_args(c, student: nn.Module, teacher: nn.Module) -> Optional[Dict[str, Any]]:
    if not c.ENABLED:
        return None
    if student.hidden_dim != teacher.hidden_dim:
        raise ValueError(
            "MODEL.KD.DETRDISTILL.QUERY_PRIOR runs the teacher's queries through the student's decoder, "
            f"so both need the same MODEL.DEFORMABLE_DETR.HIDDEN_DIM (teacher {teacher.hidden_dim}, "
            f"student {student.hidden_dim}); disable QUERY_PRIOR otherwise"
        )
    return {"weight": c.WEIGHT, "rerun_encoder": c.RERUN_ENCODER}


def _contrast_args(c, student: nn.Module, teacher: nn.Module) -> Optional[Dict[str, Any]]:
    if not c.ENABLED:
        return None
    return {
        "weight": c.WEIGHT,
        "temp": c.TEMP,
        "proj_dim": c.PROJ_DIM,
        "student_dim": student.hidden_dim,
        "teacher_dim": teacher.hidden_dim,
    }
