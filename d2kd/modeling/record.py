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

from .recorder import tensor_versions

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
        student_versions / teacher_versions: tap -> per entry, the version counters of its tensors
            when recorded (see :meth:`check_unmodified`); empty when the record was built by hand.
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
    student_versions: Dict[str, List[List[int]]] = field(default_factory=dict)
    teacher_versions: Dict[str, List[List[int]]] = field(default_factory=dict)

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

    def check_unmodified(self, side: str, tap: str) -> None:
        """
        Check that no tensor recorded at ``side``'s (``"student"`` / ``"teacher"``) ``tap`` was
        modified in place after it was recorded, for a loss that relies on the recorded values
        (an in-place op on the tap's output, such as a following ``nn.ReLU(inplace=True)``,
        silently changes what the loss reads; CrossKD's official code holds post-ReLU features
        through exactly that aliasing).

        Raises:
            KeyError: when no versions were recorded for ``tap``.
            RuntimeError: naming the tap and the call whose tensor changed.
        """
        outs = self._all(self.student if side == "student" else self.teacher, side, tap)
        recorded = self.student_versions if side == "student" else self.teacher_versions
        if tap not in recorded or len(recorded[tap]) != len(outs):
            raise KeyError(f'{side} tap "{tap}": no version counters recorded with its outputs')
        for i, (out, before) in enumerate(zip(outs, recorded[tap])):
            now = tensor_versions(out)
            if now != before:
                raise RuntimeError(
                    f'{side} tap "{tap}" (call {i}) was modified in place after it was recorded '
                    f"(tensor versions {before} -> {now}): the module after it probably works in "
                    "place (e.g. nn.ReLU(inplace=True)); record another module or make it out of "
                    "place"
                )

    @property
    def device(self) -> torch.device:
        for outs in self.student.values():
            for out in outs:
                if isinstance(out, torch.Tensor):
                    return out.device
        return torch.device("cpu")
