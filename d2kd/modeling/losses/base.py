"""The base class of every distillation loss."""

from typing import Dict, List

import torch
from torch import nn

from ..record import DistillRecord

__all__ = ["DistillLoss"]


class DistillLoss(nn.Module):
    """
    A distillation loss reads a :class:`DistillRecord` and returns named loss terms.

    Subclasses set :attr:`student_taps` / :attr:`teacher_taps` (what the meta-architecture must
    record, see :mod:`d2kd.modeling.recorder`) in ``__init__``, and implement :meth:`forward`.
    They own their parameters (GcBlocks, adapters) but never hold the student or the teacher as
    sub-modules (that would put them in the optimizer or the checkpoint twice).

    Loss terms are computed in fp32 (the meta-architecture turns autocast off around them).

    :attr:`TWO_STAGE` is True for the losses that read only features and ground truth, so that
    two-stage models (Detectron2's GeneralizedRCNN) work with them as teacher and student; the
    refusal of a two-stage model by a dense-head loss lists them from this flag.
    """

    TWO_STAGE: bool = False

    def __init__(self) -> None:
        super().__init__()
        self.student_taps: List[str] = []
        self.teacher_taps: List[str] = []

    def forward(self, record: DistillRecord) -> Dict[str, torch.Tensor]:
        """
        Returns:
            dict[str, Tensor]: scalar loss terms named ``loss_kd_<loss>_<term>``.
        """
        raise NotImplementedError
