"""The "inheriting strategy" of PGD/FGD: start the student's neck and head from the teacher's."""

import logging
from collections import OrderedDict
from typing import Dict, List, Sequence, Tuple

import torch
from torch import nn

__all__ = ["inherit_teacher_weights", "inherit_report", "check_head_share"]

logger = logging.getLogger(__name__)


def _module_of(name: str) -> str:
    """The group of a tensor in the report: its first two name components, without the tensor's
    own name (``head.cls_subnet.0.weight`` -> ``head.cls_subnet``, ``head.cls_score.bias`` ->
    ``head.cls_score``)."""
    parts = name.split(".")[:-1] or [name]
    return ".".join(parts[:2])


@torch.no_grad()
def inherit_teacher_weights(
    student: nn.Module, teacher: nn.Module, exclude: Sequence[str] = ("backbone.bottom_up.",)
) -> Tuple[List[str], List[Tuple[str, tuple, tuple]]]:
    """
    Copy every teacher tensor (parameters and buffers) into the student tensor of the same name
    and shape, except names starting with one of ``exclude``. Call it after every other
    initialisation, or it is silently overwritten (FGD README, mmdet >= 2.12).

    Returns:
        (copied, skipped): names copied, and (name, student shape, teacher shape) of the tensors
        present in both with different shapes.
    """
    s_state = student.state_dict()
    copied, skipped = [], []
    for name, t_value in teacher.state_dict().items():
        if any(name.startswith(p) for p in exclude) or name not in s_state:
            continue
        if s_state[name].shape != t_value.shape:
            skipped.append((name, tuple(s_state[name].shape), tuple(t_value.shape)))
            continue
        s_state[name].copy_(t_value)
        copied.append(name)
    logger.info(inherit_report(copied, skipped, exclude))
    return copied, skipped


def inherit_report(copied: List[str], skipped: List[Tuple[str, tuple, tuple]], exclude) -> str:
    """A multi-line report of what inherit copied and skipped, grouped by module."""
    groups: Dict[str, List[int]] = OrderedDict()  # module -> [copied, skipped]
    for name in copied:
        groups.setdefault(_module_of(name), [0, 0])[0] += 1
    for name, _, _ in skipped:
        groups.setdefault(_module_of(name), [0, 0])[1] += 1
    lines = [
        f"Inherit: copied {len(copied)} teacher tensors into the student, skipped {len(skipped)} "
        f"for shape mismatch (excluded prefixes {list(exclude)})"
    ]
    for module, (n_copied, n_skipped) in groups.items():
        lines.append(f"  {module}: {n_copied} copied, {n_skipped} skipped")
    for name, s_shape, t_shape in skipped:
        lines.append(f"  skipped {name}: student {s_shape} vs teacher {t_shape}")
    return "\n".join(lines)


def check_head_share(
    student: nn.Module,
    copied: List[str],
    skipped: List[Tuple[str, tuple, tuple]],
    head_prefixes: Sequence[str],
    min_share: float,
) -> float:
    """
    Raise a ValueError when inherit copied less than ``min_share`` of the student's head tensors
    (names starting with one of ``head_prefixes``), naming the mismatched shapes and the remedies.

    Returns:
        the share copied (1.0 when the student has no tensor under ``head_prefixes``).
    """
    head = [n for n in student.state_dict() if any(n.startswith(p) for p in head_prefixes)]
    if not head:
        logger.warning(
            f"MODEL.KD.INHERIT.HEAD_PREFIXES {list(head_prefixes)} match no tensor of the student "
            f"({type(student).__name__}): the share of its head copied by inherit is not checked"
        )
        return 1.0
    copied_set = set(copied)
    share = sum(n in copied_set for n in head) / len(head)
    if share < min_share:
        in_head = [x for x in skipped if any(x[0].startswith(p) for p in head_prefixes)]
        rest = [x for x in skipped if x not in in_head]
        mismatched = [f"{n}: student {s} vs teacher {t}" for n, s, t in in_head + rest][:20]
        raise ValueError(
            f"MODEL.KD.INHERIT copied {share:.0%} of the student's head ({len(head)} tensors under "
            f"{list(head_prefixes)}), less than MODEL.KD.INHERIT.MIN_HEAD_SHARE {min_share:.0%}. "
            f"Mismatched shapes: {mismatched or 'none (the names differ)'}. Either make the "
            "student's neck and head the teacher's shape (e.g. the same MODEL.FPN.OUT_CHANNELS and "
            "head NUM_CONVS in both configs), or turn inherit off (MODEL.KD.INHERIT.ENABLED False)"
        )
    return share
