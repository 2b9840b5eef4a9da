"""
DETRDistill's query-prior term: which ground-truth box each query of the teacher-query group
(the teacher's queries decoded by the student) is trained towards, per student stage.

* ``"rematch"`` (default): the group's own predictions are Hungarian-matched to the GT, i.e. the
  standard detection loss of an extra decoder group. This is what the released code does
  (``loss_teacher_group`` receives no teacher assignment and falls back to ``loss_single``) and
  what its published numbers were measured with.
* ``"teacher"``: query i inherits the teacher's own Hungarian assignment of its predictions at
  the mapped teacher stage (the paper's description; the released ``loss_single_teacher_group``,
  never called). Through the student's reference-point layer the teacher's queries may point far
  from the boxes the teacher gave them, so these targets can lie outside what the student's
  deformable attention samples.

Shape shorthand: K_S student stages, B images, N' group queries (= the teacher's), C classes.
"""

from typing import Callable, Dict, List, Sequence, Tuple

from torch import Tensor

__all__ = ["ASSIGNMENTS", "query_group_assignments"]

ASSIGNMENTS = ("rematch", "teacher")

Indices = Tuple[Tensor, Tensor]
# (logits (B, N, C), boxes (B, N, 4) normalised cxcywh, targets) -> B pairs (query_idx, gt_idx)
MatchFn = Callable[[Tensor, Tensor, List[Dict[str, Tensor]]], List[Indices]]


def query_group_assignments(
    mode: str,
    group_logits: Tensor,
    group_boxes: Tensor,
    teacher_logits: Tensor,
    teacher_boxes: Tensor,
    targets: List[Dict[str, Tensor]],
    stage_map: Sequence[int],
    student_match: MatchFn,
    teacher_match: MatchFn,
) -> List[List[Indices]]:
    """
    The assignment each student stage j of the teacher-query group is trained with.

    Args:
        mode: one of :data:`ASSIGNMENTS`.
        group_logits / group_boxes: (K_S, B, N', C) / (K_S, B, N', 4), the group's predictions.
        teacher_logits / teacher_boxes: (K_T, B, N', C) / (K_T, B, N', 4), the teacher's.
        targets: B dicts {"labels": (G,), "boxes": (G, 4) normalised cxcywh}.
        stage_map: 0-based teacher stage of each student stage (used by ``"teacher"`` only).
        student_match / teacher_match: the student's / teacher's Hungarian matcher.
    Returns:
        K_S lists of B pairs (query_idx, gt_idx).
    Raises:
        ValueError: on an unknown ``mode``.
    """
    if mode == "rematch":
        return [
            student_match(group_logits[j].detach(), group_boxes[j].detach(), targets)
            for j in range(len(stage_map))
        ]
    if mode != "teacher":
        raise ValueError(
            f'MODEL.KD.DETRDISTILL.QUERY_PRIOR.ASSIGNMENT "{mode}" is not one of {ASSIGNMENTS}'
        )
    by_stage: Dict[int, List[Indices]] = {}  # each teacher stage matched once
    for k in stage_map:
        if k not in by_stage:
            by_stage[k] = teacher_match(teacher_logits[k], teacher_boxes[k], targets)
    return [by_stage[k] for k in stage_map]
