"""
Teacher and student head outputs at the same priors: the shared input of the logit losses (BCKD,
LD).

Shape shorthand: N images, R priors (all levels, Detectron2's (level, y, x, anchor) order), K
classes, D box-regression width. Both models must read the same levels with the same anchors (or
points) per location, so tensors match prior by prior; this is checked at build time
(:func:`check_dense_pair`) and again on the recorded anchors every step.
"""

import dataclasses
from dataclasses import dataclass
from typing import List, Sequence

import torch
from torch import Tensor, nn

from d2kd.layers.prior_mask import valid_prior_mask
from d2kd.utils.comm import reduce_mean

from ..checks import check_dense_detector, check_same_num_classes, check_same_strides
from ..dense_outputs import DenseOutputs, recorded_dense_outputs
from ..record import DistillRecord
from ..teacher import teacher_run_mode

__all__ = [
    "DensePair",
    "STUDENT_TAPS",
    "TEACHER_TAPS",
    "check_dense_pair",
    "gather_dense_pair",
    "num_positives_normalizer",
]

# What a logit loss records: head outputs and anchors of both, the student's own assignment.
STUDENT_TAPS = ["head", "anchor_generator", "label_anchors()"]
TEACHER_TAPS = ["head", "anchor_generator"]


@dataclass
class DensePair:
    """
    Attributes:
        student, teacher: flattened head outputs (logits/box_reg as fp32).
        gt_labels: (N, R) the student's assignment: [0, K) positive, K background, -1 ignored.
        prior_weights: (N, R) 1 on priors over an image's own extent rounded up to the size
            divisibility (mmdet's ``pad_shape``), 0 on the rest of the batch padding (all 1 when
            padding is not ignored).
        num_classes: K.
    """

    student: DenseOutputs
    teacher: DenseOutputs
    gt_labels: Tensor
    prior_weights: Tensor
    num_classes: int

    def positives(self) -> Tensor:
        """(N, R) bool: the student's positive priors."""
        return (self.gt_labels >= 0) & (self.gt_labels < self.num_classes)


def _anchors_per_location(model: nn.Module, which: str, loss: str) -> List[int]:
    gen = getattr(model, "anchor_generator", None)
    if gen is None or not hasattr(gen, "num_anchors"):
        raise TypeError(
            f"{loss} needs dense detectors with an anchor_generator; the {which} "
            f"({type(model).__name__}) has none"
        )
    return list(gen.num_anchors)


def check_dense_pair(student: nn.Module, teacher: nn.Module, loss: str, teacher_run: str) -> int:
    """
    Build-time checks shared by the logit losses.

    Returns:
        the number of classes.
    Raises:
        ValueError / TypeError naming the config key to fix.
    """
    # A two-stage model on either side: say what it lacks (one message for every dense loss).
    check_dense_detector(teacher, "teacher", loss)
    check_dense_detector(student, "student", loss)
    if teacher_run_mode(teacher, teacher_run) != "dense":
        raise ValueError(
            f'{loss} reads the teacher\'s head outputs: MODEL.KD.TEACHER.RUN must be "dense" (or '
            f'"auto" with a dense teacher), got "{teacher_run}" for a {type(teacher).__name__} '
            "teacher"
        )
    if not callable(getattr(student, "label_anchors", None)):
        raise TypeError(
            f"{loss} reads the student's assignment from label_anchors(); "
            f"{type(student).__name__} has no such method"
        )
    num_classes = check_same_num_classes(student, teacher, loss)
    check_same_strides(student, teacher, loss)
    s, t = _anchors_per_location(student, "student", loss), _anchors_per_location(
        teacher, "teacher", loss
    )
    if s != t:
        raise ValueError(
            f"{loss} compares teacher and student prior by prior, but the teacher has {t} anchors "
            "per "
            f"location and the student {s}: use the same MODEL.ANCHOR_GENERATOR (sizes, aspect "
            "ratios) in both configs"
        )
    return num_classes


def _prior_weights(
    s: DenseOutputs, image_sizes: Sequence, ignore_padding: bool, n: int, size_divisibility: int
) -> Tensor:
    """
    (N, R) 1 on the priors of each image's own extent rounded up to ``size_divisibility`` (the
    official code's valid flags on the image's ``pad_shape``), 0 on the rest of the batch padding.
    """
    device = s.logits.device
    if not ignore_padding:
        return torch.ones(n, s.logits.shape[1], device=device)
    masks = [
        valid_prior_mask(
            s.level_shapes, s.strides, s.num_anchors, tuple(size), size_divisibility, device=device
        )
        for size in image_sizes
    ]
    return torch.stack(masks).float()


def _flatten(model: nn.Module, record: DistillRecord, side: str) -> DenseOutputs:
    out = recorded_dense_outputs(record, side, model)  # shared: copy, never modify
    return dataclasses.replace(out, logits=out.logits.float(), box_reg=out.box_reg.float())


def gather_dense_pair(
    record: DistillRecord, student: nn.Module, teacher: nn.Module, ignore_padding: bool = True
) -> DensePair:
    """Flatten both models' recorded head outputs and the student's assignment for one step."""
    s, t = _flatten(student, record, "student"), _flatten(teacher, record, "teacher")
    if s.logits.shape != t.logits.shape or s.anchors.shape != t.anchors.shape:
        raise RuntimeError(
            f"teacher and student priors differ: student logits {tuple(s.logits.shape)}, anchors "
            f"{tuple(s.anchors.shape)}; teacher {tuple(t.logits.shape)}, {tuple(t.anchors.shape)}"
        )
    if not torch.allclose(s.anchors, t.anchors):
        raise RuntimeError(
            "teacher and student anchors differ (same count, other boxes): use the same "
            "MODEL.ANCHOR_GENERATOR sizes, aspect ratios and offset in both configs"
        )
    labels, _ = record.student_one("label_anchors()")
    gt_labels = torch.stack(list(labels)).to(s.logits.device)  # (N, R)
    n = gt_labels.shape[0]
    div = getattr(getattr(student, "backbone", None), "size_divisibility", 1) or 1
    weights = _prior_weights(s, record.image_sizes, ignore_padding, n, int(div))
    return DensePair(s, t, gt_labels, weights, int(s.logits.shape[-1]))


def num_positives_normalizer(positives: Tensor) -> float:
    """
    GFL/BCKD's ``N_pos``: ``sum_images max(#pos, 1)``, averaged over GPUs, at least 1.

    Args:
        positives: (N, R) bool.
    """
    per_image = positives.sum(dim=1).clamp(min=1).sum().float()
    return max(float(reduce_mean(per_image)), 1.0)
