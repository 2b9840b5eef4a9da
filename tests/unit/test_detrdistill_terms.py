"""DETRDistill terms on small inputs: stage mapping, logits matching/losses, feature masks,
contrast."""

import math

import pytest
import torch
from torch.nn import functional as F

from d2kd.layers.box_ops import box_cxcywh_to_xyxy
from d2kd.layers.box_ops import pairwise_giou as pairwise_generalized_box_iou
from d2kd.methods.detrdistill.feature_distill import (
    masked_feature_mse,
    select_quality_queries,
    target_aware_mask,
)
from d2kd.methods.detrdistill.logits_distill import (
    logits_distill_cost,
    logits_distill_losses,
    match_to_teacher,
    soft_bce_cost,
)
from d2kd.methods.detrdistill.query_contrast import QueryContrastHead
from d2kd.methods.detrdistill.stage_map import stage_mapping


# ------------------------------------------------------------------------------- stage map
def test_stage_mapping():
    assert stage_mapping(6, 6) == [0, 1, 2, 3, 4, 5]
    assert stage_mapping(3, 6) == [1, 3, 5]  # 1->2, 2->4, 3->6 (1-based)
    assert stage_mapping(6, 3) == [0, 0, 1, 1, 2, 2]  # 0.5, 1, 1.5, ... rounded half up
    assert stage_mapping(2, 3) == [1, 2]
    assert stage_mapping(1, 6) == [5]
    assert stage_mapping(3, 6, "last") == [5, 5, 5]
    with pytest.raises(ValueError, match="STAGE_MAP"):
        stage_mapping(3, 6, "first")
    with pytest.raises(ValueError, match=">= 1"):
        stage_mapping(0, 6)


# ------------------------------------------------------------------------------- logits
def _boxes(n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.cat(
        [torch.rand(n, 2, generator=g) * 0.6 + 0.2, torch.rand(n, 2, generator=g) * 0.3 + 0.05], 1
    )


def test_soft_bce_cost_is_summed_over_classes():
    torch.manual_seed(0)
    z, p = torch.randn(4, 3), torch.rand(5, 3)
    brute = torch.stack(
        [
            torch.stack(
                [F.binary_cross_entropy_with_logits(z[j], p[i], reduction="sum") for i in range(5)]
            )
            for j in range(4)
        ]
    )
    torch.testing.assert_close(soft_bce_cost(z, p), brute)


def test_cost_terms_are_weighted_l1_and_negative_giou():
    s, t = _boxes(3, 0), _boxes(4, 1)
    size = (50, 200)  # (h, w)
    zs, zt = torch.zeros(3, 2), torch.zeros(4, 2)
    cost = logits_distill_cost(zs, s, zt, t, size, weights=(0.0, 0.0, 1.0))
    scale = torch.tensor([200.0, 50.0, 200.0, 50.0])
    expected = -pairwise_generalized_box_iou(
        box_cxcywh_to_xyxy(s) * scale, box_cxcywh_to_xyxy(t) * scale
    )
    torch.testing.assert_close(cost, expected)
    l1 = (s[:, None] - t[None]).abs().sum(-1)
    torch.testing.assert_close(
        logits_distill_cost(zs, s, zt, t, size, weights=(0.0, 5.0, 0.0)), 5 * l1
    )


def test_identical_student_and_teacher_give_zero_box_terms_and_a_minimal_class_term():
    torch.manual_seed(0)
    b, n, c = 2, 6, 3
    t_logits = torch.randn(b, n, c) * 2
    t_boxes = torch.stack([_boxes(n, 2), _boxes(n, 3)])
    perm = torch.randperm(n)  # the student predicts the same set in another query order
    s_logits = t_logits[:, perm].clone().requires_grad_(True)
    s_boxes = t_boxes[:, perm].clone().requires_grad_(True)
    sizes = [(64, 80), (64, 64)]
    indices = match_to_teacher(s_logits, s_boxes, t_logits, t_boxes, sizes)
    for si, ti in indices:
        assert perm[si].tolist() == ti.tolist()
    cls, l1, giou = logits_distill_losses(s_logits, s_boxes, t_logits, t_boxes, sizes, indices)
    assert l1.item() == pytest.approx(0.0, abs=1e-6)
    assert giou.item() == pytest.approx(0.0, abs=1e-5)
    # Soft BCE against its own probabilities = their entropy, and it is the minimum (zero gradient).
    p = t_logits.sigmoid()
    entropy = -(p * p.log() + (1 - p) * (1 - p).log()).sum() / (b * n)
    assert cls.item() == pytest.approx(entropy.item(), rel=1e-5)
    (cls + l1 + giou).backward()
    assert s_logits.grad.abs().max().item() < 1e-6


def test_more_student_than_teacher_queries_leaves_background():
    s_logits = torch.zeros(1, 3, 1)  # BCE(z=0, p) = log 2 for every target p
    s_boxes = _boxes(3, 4)[None]
    t_logits = torch.full((1, 1, 1), 10.0)
    t_boxes = s_boxes[:, 1:2].clone()  # the teacher's only query equals student query 1
    indices = match_to_teacher(s_logits, s_boxes, t_logits, t_boxes, [(32, 32)])
    assert indices[0][0].tolist() == [1] and indices[0][1].tolist() == [0]
    cls, l1, giou = logits_distill_losses(s_logits, s_boxes, t_logits, t_boxes, [(32, 32)], indices)
    # At logit 0 the BCE is log 2 whatever the target: 3 queries x 1 class, summed, over the
    # M = 1 matched pair (spec A4; not over the 3 student queries).
    assert cls.item() == pytest.approx(3 * math.log(2), rel=1e-5)
    assert l1.item() == pytest.approx(0.0, abs=1e-6) and giou.item() == pytest.approx(0.0, abs=1e-5)
    s_logits = torch.tensor([[[3.0], [0.0], [3.0]]])  # unmatched queries 0 and 2 target p = 0
    cls, _, _ = logits_distill_losses(s_logits, s_boxes, t_logits, t_boxes, [(32, 32)], indices)
    p1 = torch.sigmoid(torch.tensor(10.0)).item()
    expected = 2 * F.softplus(torch.tensor(3.0)).item() + math.log(2)  # / M = 1
    assert p1 > 0.99 and cls.item() == pytest.approx(expected, rel=1e-5)


def test_class_term_is_normalised_by_matched_pairs_across_the_batch():
    """2 images, 5 student vs 2 teacher queries: the class term sums the BCE of all 10 student
    queries and divides by the M = 4 matched pairs (not by B * Ns = 10)."""
    b, ns, nt, c = 2, 5, 2, 3
    s_logits = torch.zeros(b, ns, c)  # BCE = log 2 per (query, class) whatever the target
    s_boxes = torch.stack([_boxes(ns, 5), _boxes(ns, 6)])
    t_logits, t_boxes = torch.randn(b, nt, c), torch.stack([_boxes(nt, 7), _boxes(nt, 8)])
    sizes = [(40, 40), (40, 60)]
    indices = match_to_teacher(s_logits, s_boxes, t_logits, t_boxes, sizes)
    assert sum(len(si) for si, _ in indices) == 4
    cls, _, _ = logits_distill_losses(s_logits, s_boxes, t_logits, t_boxes, sizes, indices)
    assert cls.item() == pytest.approx(b * ns * c * math.log(2) / 4, rel=1e-5)


# ------------------------------------------------------------------------------- feature
def test_quality_is_probability_times_best_iou():
    t_logits = torch.logit(torch.tensor([[0.9, 0.1], [0.2, 0.6], [0.05, 0.05]]))
    t_boxes = torch.tensor([[0.25, 0.25, 0.5, 0.5], [0.75, 0.75, 0.5, 0.5], [0.5, 0.5, 0.1, 0.1]])
    hs = torch.arange(6.0).view(3, 2)
    gt = torch.tensor([[0.0, 0.0, 50.0, 100.0]])  # pixel xyxy in a 100 x 100 image
    queries, quality = select_quality_queries(t_logits, t_boxes, hs, gt, (100, 100), topk=2)
    torch.testing.assert_close(queries, hs[[0, 1]])  # entries (0, c0) p 0.9 and (1, c1) p 0.6
    # Query 0 = [0, 0, 50, 50]: IoU 0.5 with the GT; query 1 = [50, 50, 100, 100]: IoU 0.
    torch.testing.assert_close(quality, torch.tensor([0.9 * 0.5, 0.0]))
    _, quality = select_quality_queries(t_logits, t_boxes, hs, None, (100, 100), topk=2)
    torch.testing.assert_close(quality, torch.tensor([0.9, 0.6]))


def test_mask_by_hand_and_zero_loss_when_features_agree():
    h = torch.tensor([[[1.0, 0.0]]])  # one query (B=1, T=1, d=2)
    feat = torch.tensor([[[[2.0, 0.0, -1.0]], [[0.0, 3.0, 0.0]]]])  # (1, 2, 1, 3): cos 1, 0, -1
    mask = target_aware_mask(h, torch.tensor([[0.5]]), feat, floor=0.01)
    # m = max(0.5 * [1, 0, -1], 0.01) = [0.5, 0.01, 0.01]; divided by its max 0.5.
    torch.testing.assert_close(mask, torch.tensor([[[[1.0, 0.02, 0.02]]]]))
    valid = torch.tensor([[[True, True, False]]])
    torch.testing.assert_close(
        target_aware_mask(h, torch.tensor([[0.5]]), feat, 0.01, valid),
        torch.tensor([[[[1.0, 0.02, 0.0]]]]),
    )
    student = feat.clone().requires_grad_(True)
    assert masked_feature_mse(student, feat, mask).item() == 0.0
    other = torch.zeros_like(feat)
    expected = ((mask * feat) ** 2).mean()
    torch.testing.assert_close(masked_feature_mse(other, feat, mask), expected)
    with pytest.raises(ValueError, match="student"):
        masked_feature_mse(other[:, :1], feat, mask)


# ------------------------------------------------------------------------------- contrast
def test_contrast_head_trains_the_student_side_only():
    torch.manual_seed(0)
    head = QueryContrastHead(student_dim=4, teacher_dim=6, proj_dim=8, temperature=0.07)
    s = torch.randn(5, 4, requires_grad=True)
    t = torch.randn(5, 6, requires_grad=True)
    loss = head(s, t)
    assert loss.ndim == 0 and torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    assert s.grad is not None and t.grad is None
    with pytest.raises(ValueError, match="teacher states"):
        head(s, t[:3])
