"""DETRDistill's query-prior assignment on a hand-made toy where the teacher's assignment and the
group's own re-matching differ (spec A6: re-matching is the released code and d2kd's default)."""

import pytest
import torch

from d2kd.layers.detr.criterion import SetCriterion
from d2kd.layers.detr.matcher import HungarianMatcher
from d2kd.methods.detrdistill.query_prior import query_group_assignments

# Two GT boxes (normalised cxcywh): A of class 0 top-left, B of class 1 bottom-right.
BOX_A, BOX_B = [0.25, 0.25, 0.2, 0.2], [0.75, 0.75, 0.2, 0.2]
TARGETS = [{"labels": torch.tensor([0, 1]), "boxes": torch.tensor([BOX_A, BOX_B])}]


def _preds(first, second, stages):
    """(stages, 1, 2, 2) logits and (stages, 1, 2, 4) boxes: query 0 confidently predicts the
    (class, box) ``first``, query 1 ``second``."""
    logits = torch.full((2, 2), -6.0)
    logits[0, first[0]] = logits[1, second[0]] = 6.0
    boxes = torch.tensor([first[1], second[1]])
    return logits.expand(stages, 1, 2, 2).clone(), boxes.expand(stages, 1, 2, 4).clone()


def _toy():
    # The teacher's queries find A then B; decoded by the student, the same queries land on B
    # then A (the teacher's queries point elsewhere through the student's reference points).
    t_logits, t_boxes = _preds((0, BOX_A), (1, BOX_B), stages=3)
    g_logits, g_boxes = _preds((1, BOX_B), (0, BOX_A), stages=2)
    return g_logits, g_boxes, t_logits, t_boxes


def _as_lists(assignments):
    return [[(q.tolist(), g.tolist()) for q, g in stage] for stage in assignments]


def test_rematch_and_teacher_assignment_differ_on_the_toy():
    g_logits, g_boxes, t_logits, t_boxes = _toy()
    matcher = HungarianMatcher()
    args = (g_logits, g_boxes, t_logits, t_boxes, TARGETS, [1, 2], matcher, matcher)
    rematch = query_group_assignments("rematch", *args)
    teacher = query_group_assignments("teacher", *args)
    # Re-matched: the group's query 0 (on B) -> GT 1, query 1 (on A) -> GT 0, at both stages.
    assert _as_lists(rematch) == [[([0, 1], [1, 0])]] * 2
    # The teacher's assignment: its query 0 found A -> GT 0, query 1 -> GT 1.
    assert _as_lists(teacher) == [[([0, 1], [0, 1])]] * 2

    # Trained with the re-matching, a group already on the GT has no box loss; with the
    # teacher's assignment it is pulled across the image.
    criterion = SetCriterion(num_classes=2, matcher=matcher)
    on_gt = criterion.stage_losses(g_logits[0], g_boxes[0], TARGETS, rematch[0])
    moved = criterion.stage_losses(g_logits[0], g_boxes[0], TARGETS, teacher[0])
    assert on_gt["loss_bbox"].item() == pytest.approx(0.0, abs=1e-6)
    assert on_gt["loss_giou"].item() == pytest.approx(0.0, abs=1e-5)
    # cx and cy off by 0.5 for both boxes: 5 x (0.5 + 0.5) x 2 boxes / 2 GT
    assert moved["loss_bbox"].item() == pytest.approx(5.0, rel=1e-5)
    assert moved["loss_ce"].item() > 10 * on_gt["loss_ce"].item()


def test_each_mode_calls_its_own_matcher_on_its_own_predictions():
    g_logits, g_boxes, t_logits, t_boxes = _toy()
    calls = []

    def recording(name):
        def match(logits, boxes, targets):
            calls.append((name, logits.clone(), boxes.clone()))
            return HungarianMatcher()(logits, boxes, targets)

        return match

    args = (g_logits, g_boxes, t_logits, t_boxes, TARGETS)
    query_group_assignments("rematch", *args, [2, 2], recording("s"), recording("t"))
    assert [c[0] for c in calls] == ["s", "s"]  # one matching per student stage
    assert all(torch.equal(c[2], g_boxes[0]) for c in calls)
    calls.clear()
    out = query_group_assignments("teacher", *args, [2, 2], recording("s"), recording("t"))
    assert [c[0] for c in calls] == ["t"]  # teacher stage 3 matched once for both stages
    assert torch.equal(calls[0][2], t_boxes[2]) and len(out) == 2
    with pytest.raises(ValueError, match="QUERY_PRIOR.ASSIGNMENT"):
        query_group_assignments("paper", *args, [2, 2], recording("s"), recording("t"))
