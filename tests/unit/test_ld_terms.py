"""LD's KL at temperature, its terms, the ATSS threshold, the VLR and the prior-validity mask."""

import math
import statistics

import pytest
import torch

from d2kd.layers.atss_assign import atss_iou_thresholds
from d2kd.layers.prior_mask import valid_prior_mask
from d2kd.methods.ld.kd_kl import kl_div_with_temperature
from d2kd.methods.ld.terms import per_level_mean_kl, weighted_distribution_kl
from d2kd.methods.ld.vlr import vlr_region


def _softmax(xs, t):
    m = max(xs)
    e = [math.exp((x - m) / t) for x in xs]
    return [v / sum(e) for v in e]


def _textbook_kl(u, v, t):
    p, s = _softmax(v, t), _softmax(u, t)
    return sum(pk * (math.log(pk) - math.log(sk)) for pk, sk in zip(p, s))


@pytest.mark.parametrize("t", [1.0, 2.0, 10.0])
def test_kl_is_t_squared_times_one_kth_of_the_textbook_kl(t):
    torch.manual_seed(0)
    u, v = torch.randn(17, dtype=torch.float64), torch.randn(17, dtype=torch.float64) * 3
    ref = _textbook_kl(u.tolist(), v.tolist(), t)
    official = kl_div_with_temperature(u, v, t).item()
    assert math.isclose(official, t * t * ref / 17, rel_tol=1e-9)  # 1/17 of the sum
    summed = kl_div_with_temperature(u, v, t, mean_over_bins=False).item()
    assert math.isclose(summed, t * t * ref, rel_tol=1e-9)


def test_kl_by_hand_against_uniform_student():
    # Student uniform over 2 bins, teacher (0.75, 0.25): KL = 0.75 ln 1.5 + 0.25 ln 0.5, / 2.
    v = torch.tensor([math.log(3.0), 0.0])
    kl = kl_div_with_temperature(torch.zeros(2), v, 1.0)
    assert math.isclose(kl.item(), (0.75 * math.log(1.5) + 0.25 * math.log(0.5)) / 2, rel_tol=1e-6)


def test_kl_zero_when_equal_detaches_teacher_and_checks_inputs():
    z = torch.randn(3, 4, 17, requires_grad=True)
    assert torch.allclose(kl_div_with_temperature(z, z, 10.0), torch.zeros(3, 4), atol=1e-7)
    t = torch.randn(3, 17, requires_grad=True)
    kl_div_with_temperature(torch.randn(3, 17, requires_grad=True), t, 2.0).sum().backward()
    assert t.grad is None
    with pytest.raises(ValueError, match=">= 1"):
        kl_div_with_temperature(z, z, 0.5)
    with pytest.raises(ValueError, match="teacher"):
        kl_div_with_temperature(z, z[:, :, :5], 2.0)


def test_weighted_distribution_kl_sums_sides_and_divides_by_the_constant():
    torch.manual_seed(1)
    zs, zt = torch.randn(2, 4, 17, dtype=torch.float64), torch.randn(2, 4, 17, dtype=torch.float64)
    w = torch.tensor([0.5, 2.0], dtype=torch.float64)
    ref = sum(
        w[i].item() * 100 * _textbook_kl(zs[i, e].tolist(), zt[i, e].tolist(), 10.0) / 17
        for i in range(2)
        for e in range(4)
    )
    assert math.isclose(
        weighted_distribution_kl(zs, zt, w, 10.0, 4.0).item(), ref / 4, rel_tol=1e-9
    )
    assert math.isclose(
        weighted_distribution_kl(zs, zt, w, 10.0, 16.0).item(), ref / 16, rel_tol=1e-9
    )


def test_per_level_mean_kl_averages_within_levels_and_sums_levels():
    torch.manual_seed(2)
    s, t = torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    kl = [4 * _textbook_kl(s[i].tolist(), t[i].tolist(), 2.0) / 5 for i in range(3)]
    got = per_level_mean_kl(s, t, torch.tensor([0, 0, 2]), num_levels=3, temperature=2.0)
    assert math.isclose(got.item(), (kl[0] + kl[1]) / 2 + kl[2], rel_tol=1e-9)
    empty = per_level_mean_kl(s[:0], t[:0], torch.zeros(0, dtype=torch.long), 3, 2.0)
    assert empty.item() == 0.0


# ------------------------------------------------------------------------- ATSS threshold, VLR
GT = torch.tensor([[0.0, 0, 10, 10]])
# IoU with GT: 1, 1/3, 0, 1/4 (a4 = [6, 0, 16, 10]: 40 / 160).
ANCHORS = torch.tensor([[0.0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30], [6, 0, 16, 10]])
IOUS = [1.0, 1 / 3, 0.0, 0.25]


def test_atss_threshold_is_mean_plus_unbiased_std_of_all_candidates():
    gamma = atss_iou_thresholds(ANCHORS, [4], GT, topk=9)
    assert math.isclose(gamma.item(), statistics.mean(IOUS) + statistics.stdev(IOUS), rel_tol=1e-6)


def test_atss_threshold_takes_topk_closest_per_level():
    # Level 0 = anchors 0, 1 (closest: anchor 0); level 1 = anchors 2, 3 (closest: anchor 3).
    gamma = atss_iou_thresholds(ANCHORS, [2, 2], GT, topk=1)
    cand = [IOUS[0], IOUS[3]]
    assert math.isclose(gamma.item(), statistics.mean(cand) + statistics.stdev(cand), rel_tol=1e-6)
    # Invalid anchors are never candidates: without anchor 0, level 0 offers anchor 1.
    valid = torch.tensor([False, True, True, True])
    gamma = atss_iou_thresholds(ANCHORS, [2, 2], GT, topk=1, valid=valid)
    cand = [IOUS[1], IOUS[3]]
    assert math.isclose(gamma.item(), statistics.mean(cand) + statistics.stdev(cand), rel_tol=1e-6)


def _official_diou(a, g):
    """Written out for one pair: intersection / area(anchor) - rho^2 / c^2."""
    iw = max(0.0, min(a[2], g[2]) - max(a[0], g[0]))
    ih = max(0.0, min(a[3], g[3]) - max(a[1], g[1]))
    rho2 = ((a[0] + a[2] - g[0] - g[2]) / 2) ** 2 + ((a[1] + a[3] - g[1] - g[3]) / 2) ** 2
    c2 = (max(a[2], g[2]) - min(a[0], g[0])) ** 2 + (max(a[3], g[3]) - min(a[1], g[1])) ** 2
    return iw * ih / ((a[2] - a[0]) * (a[3] - a[1])) - rho2 / c2


def test_vlr_membership_on_a_toy_image_official_vs_textbook():
    gamma = statistics.mean(IOUS) + statistics.stdev(IOUS)  # ~0.823
    dious = [_official_diou(a, GT[0].tolist()) for a in ANCHORS.tolist()]
    expected = [0.25 * gamma <= d < gamma for d in dious]
    assert expected == [False, True, False, True]  # a1 >= gamma (a positive), a3 far away
    weight, idx = vlr_region(ANCHORS, [4], GT, alpha=0.25, topk=9, diou_mode="official")
    assert torch.allclose(weight, torch.tensor([0.0, 1 / 3, 0.0, 0.25]))
    assert idx.tolist() == [-1, 0, -1, 0]
    # Textbook DIoU of a4 = 1/4 - 36/356 < 0.25 * gamma: a4 leaves the region.
    weight, _ = vlr_region(ANCHORS, [4], GT, diou_mode="textbook")
    assert torch.allclose(weight, torch.tensor([0.0, 1 / 3, 0.0, 0.0]))


def test_vlr_keeps_the_ground_truth_with_the_largest_iou_and_respects_valid():
    gts = torch.cat(
        [GT, torch.tensor([[4.0, 0, 14, 10]])]
    )  # a2 = [5,0,15,10] overlaps it by 90/110
    weight, idx = vlr_region(ANCHORS, [4], gts)
    ious2 = [0.6 / 1.4, 90 / 110, 0.0, 80 / 120]
    # Recompute the expected region from the written-out formulas for both boxes.
    best = []
    for i, a in enumerate(ANCHORS.tolist()):
        cands = []
        for g, ious in ((GT[0].tolist(), IOUS), (gts[1].tolist(), ious2)):
            gam = statistics.mean(ious) + statistics.stdev(ious)
            if 0.25 * gam <= _official_diou(a, g) < gam:
                cands.append(ious[i])
        best.append(max(cands) if cands else 0.0)
    assert torch.allclose(weight, torch.tensor(best), atol=1e-6)
    assert ((idx >= 0) == (weight > 0)).all()
    weight, _ = vlr_region(ANCHORS, [4], GT, valid=torch.tensor([True, False, True, True]))
    assert weight[1] == 0


def test_vlr_without_ground_truth_is_empty_and_bad_mode_raises():
    weight, idx = vlr_region(ANCHORS, [4], torch.zeros(0, 4))
    assert weight.tolist() == [0.0] * 4 and idx.tolist() == [-1] * 4
    with pytest.raises(ValueError, match="official"):
        vlr_region(ANCHORS, [4], GT, diou_mode="iou")


def test_valid_prior_mask_follows_ceil_of_image_over_stride():
    # One level 2 x 3, stride 8, 2 anchors; image 9 x 8: ceil(9/8) = 2 rows, ceil(8/8) = 1 column.
    mask = valid_prior_mask([(2, 3)], [8], 2, (9, 8))
    assert mask.nonzero().flatten().tolist() == [0, 1, 6, 7]
    two = valid_prior_mask([(2, 3), (1, 2)], [8, 16], 1, (16, 24))
    assert two.tolist() == [True] * 6 + [True, True]
