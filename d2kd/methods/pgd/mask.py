"""
PGD's key-region maps from the teacher's dense predictions ("prediction-guided weighting").

Shape shorthand: N images; R priors over all levels (anchors, or FCOS points); K classes;
G ground-truth boxes per image, padded to the batch maximum; A anchors per location.
The math lives in :mod:`d2kd.methods.pgd.pgw`; this module gathers its inputs from the teacher.
"""

from typing import Dict, List, Sequence

import torch
from detectron2.config import configurable
from detectron2.structures import Boxes, Instances
from torch import Tensor, nn

from d2kd.layers.box_ops import aligned_iou
from d2kd.methods.pgd.pgw import (
    IOU_EPS,
    REFERENCE_JITTER,
    background_mask,
    points_inside_boxes,
    prediction_guided_weights,
    quality_score,
    split_levels,
)
from d2kd.modeling.dense_outputs import decode_boxes, dense_outputs, recorded_dense_outputs
from d2kd.modeling.masks.ground_truth import pad_gt_instances
from d2kd.modeling.masks.registry import MASK_GENERATOR_REGISTRY
from d2kd.modeling.record import DistillRecord
from d2kd.utils.modules import hold_unregistered

__all__ = ["PGWMaskGenerator"]


@MASK_GENERATOR_REGISTRY.register()
class PGWMaskGenerator(nn.Module):
    """
    Per level, three (N, 1, H_l, W_l) maps from the teacher's predictions (spec 2.4-2.7):
    ``"cls"`` / ``"reg"`` importance (xi = 0.8 / 0.6, unnormalised, in [0, 1]) and ``"bg"`` (1 where
    the location is inside no box). With A > 1 anchors per location the quality, top-K and
    weights are per anchor and the maps take the max over a location's anchors.

    Reads the teacher taps ``"head"`` and ``"anchor_generator"`` (teacher run "dense"), and works
    for any dense detector that :func:`d2kd.modeling.dense_outputs.dense_outputs` understands
    (RetinaNet, FCOS, ATSS, ...): teacher boxes are decoded by the detector's own coder, in input
    pixels, and positions are the centres of its anchors (FCOS: its points).
    """

    teacher_taps = ("head", "anchor_generator")

    @configurable
    def __init__(
        self,
        *,
        teacher: nn.Module,
        topk: int = 30,
        xi_cls: float = 0.8,
        xi_reg: float = 0.6,
        cov_eps: float = 1.0,
        topk_before_inside: bool = False,
        axis_swap: bool = False,
        cov_noise: bool = False,
    ):
        """
        Args:
            teacher: the dense teacher (read for its widths, strides and box coder only).
            topk, xi_cls, xi_reg, cov_eps: see ``MODEL.KD.PGD``.
            topk_before_inside, axis_swap, cov_noise: the reference behaviours
                ``EMULATE_TOPK_BEFORE_INSIDE``, ``EMULATE_AXIS_SWAP``, ``EMULATE_COV_NOISE``.
        """
        super().__init__()
        if topk < 1:
            raise ValueError(f"MODEL.KD.PGD.TOPK must be >= 1, got {topk}")
        hold_unregistered(self, "teacher", teacher)  # no parameters, no checkpoint entry
        self.topk, self.xi_cls, self.xi_reg = topk, xi_cls, xi_reg
        self.cov_eps = 0.0 if cov_noise else cov_eps
        self.jitter = REFERENCE_JITTER if cov_noise else 0.0
        self.topk_before_inside, self.axis_swap = topk_before_inside, axis_swap

    @classmethod
    def from_config(cls, cfg, student: nn.Module, teacher: nn.Module):
        for attr in ("head", "anchor_generator", "head_in_features"):
            if not hasattr(teacher, attr):
                raise TypeError(
                    "MODEL.KD.PGD.MASK_GENERATOR PGWMaskGenerator needs a dense teacher "
                    "(RetinaNet, "
                    f"FCOS, ATSS, ...); {type(teacher).__name__} has no {attr}"
                )
        c = cfg.MODEL.KD.PGD
        return {
            "teacher": teacher,
            "topk": c.TOPK,
            "xi_cls": c.XI_CLS,
            "xi_reg": c.XI_REG,
            "cov_eps": c.COV_EPS,
            "topk_before_inside": c.EMULATE_TOPK_BEFORE_INSIDE,
            "axis_swap": c.EMULATE_AXIS_SWAP,
            "cov_noise": c.EMULATE_COV_NOISE,
        }

    def forward(
        self, record: DistillRecord, level_shapes=None, strides=None
    ) -> Dict[str, List[Tensor]]:
        """Maps for the batch of ``record`` (``level_shapes`` / ``strides`` come from the
        teacher)."""
        if record.gt_instances is None:
            raise ValueError("PGWMaskGenerator needs ground truth: the batch has no 'instances'")
        out = recorded_dense_outputs(record, "teacher", self.teacher)  # shared with BCKD/LD
        return self._maps(out, record.gt_instances, record.image_sizes)

    @torch.no_grad()
    def compute(
        self, predictions, anchors: List[Boxes], gt_instances: Sequence[Instances], image_sizes
    ) -> Dict[str, List[Tensor]]:
        """
        Args:
            predictions: the teacher head's outputs; anchors: its per-level anchors.
            gt_instances: per image, ``gt_boxes`` in input pixels and ``gt_classes``.
            image_sizes: per image (h, w) before padding.
        Returns:
            {"cls", "reg", "bg"}: per level, (N, 1, H_l, W_l) float32.
        """
        return self._maps(
            dense_outputs(self.teacher, predictions, anchors), gt_instances, image_sizes
        )

    @torch.no_grad()
    def _maps(self, out, gt_instances, image_sizes) -> Dict[str, List[Tensor]]:
        """:meth:`compute` from the flattened teacher outputs ``out`` (:class:`DenseOutputs`)."""
        flat = self.flat_maps(out, gt_instances, image_sizes)
        return {k: split_levels(v, out.level_shapes, out.num_anchors) for k, v in flat.items()}

    def flat_maps(self, out, gt_instances, image_sizes) -> Dict[str, Tensor]:
        """The three maps over all priors, (N, R) each."""
        anchors = out.anchors.float()
        centres = out.prior_centres().float()  # (R, 2)
        boxes = decode_boxes(self.teacher, out.box_reg.float(), anchors)  # (N, R, 4)
        gt, classes, gt_valid = pad_gt_instances(gt_instances, anchors.device)
        inside = points_inside_boxes(centres[None, :, None], gt[:, None], self.axis_swap)
        inside = inside & gt_valid[:, None, :]  # (N, R, G)
        scored = gt_valid[:, None, :] & self._in_image(centres, image_sizes)[:, :, None]
        if not self.topk_before_inside:
            scored = scored & inside  # Eq. 1: only (prior, box) pairs inside the box have quality
        # Quality on the scored pairs only (far fewer than N*R*G by default): (M,) each.
        n_i, r_i, g_i = scored.nonzero(as_tuple=True)
        iou = aligned_iou(boxes[n_i, r_i], gt[n_i, g_i], IOU_EPS)
        prob = out.logits[n_i, r_i, classes[n_i, g_i]].float().sigmoid()
        maps = {"bg": background_mask(inside)}
        for name, xi in (("cls", self.xi_cls), ("reg", self.xi_reg)):
            q = boxes.new_zeros(scored.shape)
            q[n_i, r_i, g_i] = quality_score(prob, iou, xi)
            maps[name] = prediction_guided_weights(
                q, inside, centres, self.topk, self.cov_eps, self.topk_before_inside, self.jitter
            )
        return maps

    def _in_image(self, centres: Tensor, image_sizes) -> Tensor:
        """
        (N, R) bool: the prior's centre lies in the image's own extent, rounded up to the
        backbone's size divisibility (mmdet's valid flags). Only matters with
        EMULATE_TOPK_BEFORE_INSIDE; the reference FCOS scores batch padding too (not emulated).
        """
        div = max(int(getattr(self.teacher.backbone, "size_divisibility", 0) or 0), 1)
        sizes = torch.as_tensor([list(s) for s in image_sizes], device=centres.device).float()
        limits = torch.ceil(sizes / div) * div  # (N, 2) as (h, w)
        return (centres[None, :, 0] < limits[:, None, 1]) & (
            centres[None, :, 1] < limits[:, None, 0]
        )
