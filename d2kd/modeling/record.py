"""
:class:`DistillRecord`: everything one training step produced that a distillation loss may read.

This is the one structure shared by all methods. Feature methods (FGD, PGD, MSE) read tensors
recorded at named taps; logit methods (BCKD, LD) read head outputs, anchors and the student's
assignment (also taps: ``"head"``, ``"anchor_generator"``, ``"label_anchors()"``); DETRDistill reads
what the DETR meta-architecture's ``forward_distill`` returns. No loss reaches into a detector.
"""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch

__all__ = ["DistillRecord"]


@dataclass
class DistillRecord:
    """
    Attributes:
        batched_inputs: the list of dicts given to the model (DatasetMapper format).
        gt_instances: per-image ground truth on the model's device, boxes in the resized input
            (the coordinates of the padded image tensor both models saw), or None.
        image_sizes: per-image (h, w) before padding.
        padded_size: (H, W) of the padded batch tensor shared by teacher and student.
        student: tap name -> list of outputs recorded in the student's forward (call order).
        teacher: tap name -> list of outputs recorded in the teacher's forward.
        teacher_output: what the teacher run returned (see ``MODEL.KD.TEACHER.RUN``).
        student_losses: the student's own detection losses.
        extras: free room for values one loss computes and another reuses in the same step
            (e.g. a mask generator's output), keyed by a name the producer documents.
    """

    batched_inputs: List[Dict[str, Any]]
    gt_instances: Optional[List[Any]]
    image_sizes: List[Any]
    padded_size: Any
    student: Dict[str, List[Any]]
    teacher: Dict[str, List[Any]]
    teacher_output: Any = None
    student_losses: Dict[str, torch.Tensor] = field(default_factory=dict)
    extras: Dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def _all(side: Dict[str, List[Any]], which: str, tap: str) -> List[Any]:
        if tap not in side:
            raise KeyError(f'{which} tap "{tap}" was not recorded; recorded: {sorted(side)}')
        return side[tap]

    @classmethod
    def _one(cls, side: Dict[str, List[Any]], which: str, tap: str) -> Any:
        outs = cls._all(side, which, tap)
        if len(outs) != 1:
            raise RuntimeError(f'{which} tap "{tap}" recorded {len(outs)} times, expected once')
        return outs[0]

    def student_one(self, tap: str) -> Any:
        """The single output of the student's ``tap`` in this step."""
        return self._one(self.student, "student", tap)

    def teacher_one(self, tap: str) -> Any:
        """The single output of the teacher's ``tap`` in this step."""
        return self._one(self.teacher, "teacher", tap)

    def student_all(self, tap: str) -> List[Any]:
        """Every output of the student's ``tap`` (one per call, e.g. per FPN level)."""
        return self._all(self.student, "student", tap)

    def teacher_all(self, tap: str) -> List[Any]:
        """Every output of the teacher's ``tap`` (one per call, e.g. per FPN level)."""
        return self._all(self.teacher, "teacher", tap)

    @property
    def device(self) -> torch.device:
        for outs in self.student.values():
            for out in outs:
                if isinstance(out, torch.Tensor):
                    return out.device
        return torch.device("cpu")
