"""The "inheriting strategy" of PGD/FGD: start the student's neck and head from the teacher's."""

import logging
from typing import List, Sequence, Tuple

import torch
from torch import nn

__all__ = ["inherit_teacher_weights"]

logger = logging.getLogger(__name__)


@torch.no_grad()
def inherit_teacher_weights(
    student: nn.Module, teacher: nn.Module, exclude: Sequence[str] = ("backbone.bottom_up.",)
) -> Tuple[List[str], List[str]]:
    """
    Copy every teacher tensor (parameters and buffers) into the student tensor of the same name
    and shape, except names starting with one of ``exclude``. Call it after every other
    initialisation, or it is silently overwritten (FGD README, mmdet >= 2.12).

    Returns:
        (copied, skipped): names copied, and names present in both with different shapes.
    """
    s_state = student.state_dict()
    copied, skipped = [], []
    for name, t_value in teacher.state_dict().items():
        if any(name.startswith(p) for p in exclude) or name not in s_state:
            continue
        if s_state[name].shape != t_value.shape:
            skipped.append(name)
            continue
        s_state[name].copy_(t_value)
        copied.append(name)
    logger.info(
        f"Inherited {len(copied)} teacher tensors into the student (excluded prefixes "
        f"{list(exclude)}); "
        f"skipped for shape mismatch: {skipped}"
    )
    return copied, skipped
