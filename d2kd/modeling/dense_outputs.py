"""
A uniform view of a dense detector's head outputs, for logit and prediction-guided losses.

Shape shorthand: N images; L levels; A anchors per location; R = sum_l H_l * W_l * A priors over
all levels, ordered level by level, then (h, w, a) as Detectron2's ``permute_to_N_HWA_K``;
K classes; D box-regression width (4, or 4 * (reg_max + 1) for distribution heads).

A detector may define ``kd_head_output_dims`` (per-anchor widths of each head output, e.g.
``[K, 4, 1]`` for FCOS) and ``kd_decode_boxes(box_reg (N, R, D), anchors (R, 4)) -> (N, R, 4)``.
Without them, RetinaNet-style ``[K, 4]`` and ``box2box_transform.apply_deltas`` are used.
"""
from dataclasses import dataclass
from typing import List, Sequence

import torch
from detectron2.modeling.meta_arch.dense_detector import permute_to_N_HWA_K
from detectron2.structures import Boxes
from torch import Tensor, nn

from d2kd.layers.box_ops import box_centers

from .record import DistillRecord

__all__ = [
    "DenseOutputs", "dense_outputs", "recorded_dense_outputs", "decode_boxes", "head_output_dims"]


@dataclass
class DenseOutputs:
    """
    Attributes:
        logits: (N, R, K) raw class logits.
        box_reg: (N, R, D) raw box regression.
        extras: other head outputs, each (N, R, d) (e.g. centerness, d = 1).
        anchors: (R, 4) prior boxes, xyxy in input pixels.
        level_sizes: R_l per level (sum = R).
        level_shapes: (H_l, W_l) per level.
        strides: stride per level.
        num_anchors: A.
    """

    logits: Tensor
    box_reg: Tensor
    extras: List[Tensor]
    anchors: Tensor
    level_sizes: List[int]
    level_shapes: List[Sequence[int]]
    strides: List[int]
    num_anchors: int

    def level_ids(self) -> Tensor:
        """(R,) index of the level of every prior."""
        sizes = torch.as_tensor(self.level_sizes, device=self.anchors.device)
        return torch.repeat_interleave(torch.arange(len(sizes), device=sizes.device), sizes)

    def prior_centres(self) -> Tensor:
        """
        (R, 2) centre (x, y) of every prior. The A anchors of a location share one centre, but
        ``(x1 + x2) / 2`` can round differently for anchors of different sizes, which flips strict
        inside-box tests on box edges for some anchors only; all A get the first anchor's centre.
        """
        centres = box_centers(self.anchors)
        a = self.num_anchors
        return centres.view(-1, a, 2)[:, :1].expand(-1, a, 2).reshape(-1, 2)

    def prior_strides(self) -> Tensor:
        """(R,) stride of the level of every prior."""
        strides = torch.as_tensor(self.strides, dtype=torch.float32, device=self.anchors.device)
        return strides[self.level_ids()]


def head_output_dims(model: nn.Module) -> List[int]:
    """Per-anchor widths of ``model.head``'s outputs (see module docstring)."""
    dims = getattr(model, "kd_head_output_dims", None)
    return list(dims) if dims is not None else [model.num_classes, 4]


def dense_outputs(model: nn.Module, predictions, anchors: List[Boxes]) -> DenseOutputs:
    """
    Flatten one batch of head outputs.

    Args:
        model: the dense detector that produced them (for widths, strides).
        predictions: the head's return value: a tuple of per-level lists of (N, A*d, H_l, W_l).
        anchors: per-level Boxes from ``model.anchor_generator``.
    """
    dims = head_output_dims(model)
    if len(predictions) != len(dims):
        raise ValueError(
            f"{type(model).__name__}.head returned {len(predictions)} outputs, "
            f"expected {len(dims)}"
        )
    flat = [
        torch.cat([permute_to_N_HWA_K(x, d) for x in outs], dim=1)
        for outs, d in zip(predictions, dims)
    ]
    level_shapes = [tuple(x.shape[-2:]) for x in predictions[0]]
    level_sizes = [len(a) for a in anchors]
    num_anchors = level_sizes[0] // (level_shapes[0][0] * level_shapes[0][1])
    shapes = model.backbone.output_shape()
    return DenseOutputs(
        logits=flat[0],
        box_reg=flat[1],
        extras=flat[2:],
        anchors=Boxes.cat(anchors).tensor,
        level_sizes=level_sizes,
        level_shapes=level_shapes,
        strides=[shapes[f].stride for f in model.head_in_features],
        num_anchors=num_anchors,
    )


def decode_boxes(model: nn.Module, box_reg: Tensor, anchors: Tensor) -> Tensor:
    """
    Decode box regressions with the detector's own coder.

    Args:
        box_reg: (N, R, D); anchors: (R, 4).
    Returns:
        (N, R, 4) boxes, xyxy in input pixels (not clipped).
    """
    decode = getattr(model, "kd_decode_boxes", None)
    if decode is not None:
        return decode(box_reg, anchors)
    n, r, d = box_reg.shape
    flat_anchors = anchors[None].expand(n, r, 4).reshape(-1, 4)
    boxes = model.box2box_transform.apply_deltas(box_reg.reshape(-1, d), flat_anchors)
    return boxes.reshape(n, r, 4)


def recorded_dense_outputs(record: DistillRecord, side: str, model: nn.Module) -> DenseOutputs:
    """
    :func:`dense_outputs` of the ``"head"`` and ``"anchor_generator"`` taps of ``side``
    ("student" or "teacher") recorded in this step, computed once per step and shared through
    ``record.extras[("dense_outputs", side)]`` (PGD's mask generator and BCKD/LD's pairing read
    the same teacher head). Callers must not modify the returned object.
    """
    key = ("dense_outputs", side)
    if key not in record.extras:
        one = record.student_one if side == "student" else record.teacher_one
        record.extras[key] = dense_outputs(model, one("head"), one("anchor_generator"))
    return record.extras[key]
