"""
PGD's key-region maps from the teacher's dense predictions ("prediction-guided weighting").

Shape shorthand: N images; R priors over all levels (anchors, or FCOS points); K classes;
G ground-truth boxes per image, padded to the batch maximum; A anchors per location.
The math lives in :mod:`d2kd.methods.pgd.pgw`; this module gathers its inputs from the teacher.
"""

from typing import Dict, List, Sequence

import torch
from detectron2.config import configurable
from detectron2.modeling.meta_arch.fcos import FCOS
from detectron2.structures import Boxes, Instances
from torch import Tensor, nn

from d2kd.layers.box_ops import aligned_iou, box_centers
from d2kd.layers.distribution_boxes import distances_to_boxes, distribution_integral
from d2kd.layers.prior_mask import valid_prior_mask
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
from d2kd.modeling.meta_arch.gfl import GFL
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

    Batch padding is not image (spec 2.3, 2.7): only the priors on an image's own extent, rounded
    up to the backbone's size divisibility (mmdet's valid flags on ``pad_shape``), are scored or
    counted as background; the background map is 0 on the rest of the batch padding. The
    reference anchor heads do this; its FCOS code scores the whole padded batch and counts the
    padding as background, which ``EMULATE_FCOS_PADDING`` reproduces. d2kd's FCOS default is
    the anchor heads' rule: the background term is normalised per image by its number of
    background locations, so with the padding counted an image's share of it depends on the
    size of the other images in its batch (a 160 x 160 image without objects in a 256 x 352
    batch: 1,008 of its 1,408 P3 background locations are padding), and FCOS would follow
    another convention than the anchor heads it is compared with.
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
        fcos_padding: bool = False,
        gfl_stride_bug: bool = False,
    ):
        """
        Args:
            teacher: the dense teacher (read for its widths, strides and box coder only).
            topk, xi_cls, xi_reg, cov_eps: see ``MODEL.KD.PGD``.
            topk_before_inside, axis_swap, cov_noise, fcos_padding, gfl_stride_bug: the
                reference behaviours ``EMULATE_TOPK_BEFORE_INSIDE``, ``EMULATE_AXIS_SWAP``,
                ``EMULATE_COV_NOISE``, ``EMULATE_FCOS_PADDING``, ``EMULATE_GFL_STRIDE_BUG``.
        """
        super().__init__()
        if topk < 1:
            raise ValueError(f"MODEL.KD.PGD.TOPK must be >= 1, got {topk}")
        hold_unregistered(self, "teacher", teacher)  # no parameters, no checkpoint entry
        self.topk, self.xi_cls, self.xi_reg = topk, xi_cls, xi_reg
        self.cov_eps = 0.0 if cov_noise else cov_eps
        self.jitter = REFERENCE_JITTER if cov_noise else 0.0
        self.topk_before_inside, self.axis_swap = topk_before_inside, axis_swap
        self.fcos_padding, self.gfl_stride_bug = fcos_padding, gfl_stride_bug

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
        for key, cls in (("EMULATE_FCOS_PADDING", FCOS), ("EMULATE_GFL_STRIDE_BUG", GFL)):
            if c[key] and not isinstance(teacher, cls):
                raise ValueError(
                    f"MODEL.KD.PGD.{key} reproduces the reference {cls.__name__} code only; the "
                    f"teacher is a {type(teacher).__name__}: set it to False"
                )
        return {
            "teacher": teacher,
            "topk": c.TOPK,
            "xi_cls": c.XI_CLS,
            "xi_reg": c.XI_REG,
            "cov_eps": c.COV_EPS,
            "topk_before_inside": c.EMULATE_TOPK_BEFORE_INSIDE,
            "axis_swap": c.EMULATE_AXIS_SWAP,
            "cov_noise": c.EMULATE_COV_NOISE,
            "fcos_padding": c.EMULATE_FCOS_PADDING,
            "gfl_stride_bug": c.EMULATE_GFL_STRIDE_BUG,
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
        boxes = self._teacher_boxes(out, anchors)  # (N, R, 4)
        valid = self.valid_priors(out, image_sizes)  # (N, R)
        gt, classes, gt_valid = pad_gt_instances(gt_instances, anchors.device)
        inside = points_inside_boxes(centres[None, :, None], gt[:, None], self.axis_swap)
        inside = inside & gt_valid[:, None, :]  # (N, R, G)
        scored = gt_valid[:, None, :] & valid[:, :, None]
        if not self.topk_before_inside:
            scored = scored & inside  # Eq. 1: only (prior, box) pairs inside the box have quality
        # Quality on the scored pairs only (far fewer than N*R*G by default): (M,) each.
        n_i, r_i, g_i = scored.nonzero(as_tuple=True)
        iou = aligned_iou(boxes[n_i, r_i], gt[n_i, g_i], IOU_EPS)
        prob = out.logits[n_i, r_i, classes[n_i, g_i]].float().sigmoid()
        maps = {"bg": background_mask(inside) * valid}  # 0 on batch padding (spec 2.3, 2.7)
        for name, xi in (("cls", self.xi_cls), ("reg", self.xi_reg)):
            q = boxes.new_zeros(scored.shape)
            q[n_i, r_i, g_i] = quality_score(prob, iou, xi)
            maps[name] = prediction_guided_weights(
                q, inside, centres, self.topk, self.cov_eps, self.topk_before_inside, self.jitter
            )
        return maps

    def valid_priors(self, out, image_sizes) -> Tensor:
        """
        (N, R) bool: the prior lies on the image's own extent rounded up to the backbone's size
        divisibility (mmdet's valid flags); everything with ``EMULATE_FCOS_PADDING``.
        """
        n, r = out.logits.shape[:2]
        if self.fcos_padding:
            return torch.ones(n, r, dtype=torch.bool, device=out.logits.device)
        div = int(getattr(self.teacher.backbone, "size_divisibility", 0) or 0)
        masks = [
            valid_prior_mask(
                out.level_shapes, out.strides, out.num_anchors, tuple(size), div, out.logits.device
            )
            for size in image_sizes
        ]
        return torch.stack(masks)

    def _teacher_boxes(self, out, anchors: Tensor) -> Tensor:
        """
        (N, R, 4) teacher boxes in input pixels, by the teacher's own coder; with
        ``EMULATE_GFL_STRIDE_BUG`` as the reference GFL code (spec 2.14-D): image k's distances
        are all multiplied by the stride of level k, whatever the anchor's level.
        """
        if not self.gfl_stride_bug:
            return decode_boxes(self.teacher, out.box_reg.float(), anchors)
        n = out.box_reg.shape[0]
        if n > len(out.strides):
            raise ValueError(
                f"MODEL.KD.PGD.EMULATE_GFL_STRIDE_BUG: the reference code gives image k the stride "
                f"of level k and crashes with more images per GPU ({n}) than levels "
                f"({len(out.strides)}); lower SOLVER.IMS_PER_BATCH or set the flag to False"
            )
        strides = anchors.new_tensor(out.strides[:n])[:, None, None]  # (N, 1, 1)
        distances = distribution_integral(out.box_reg.float(), self.teacher.reg_max) * strides
        return distances_to_boxes(box_centers(anchors)[None], distances)
