"""
CrowdHuman AP / MR^-2 / JI on hand-made cases whose values are worked out in the comments.

Boxes are (x1, y1, x2, y2). IoU and IoA denominators carry +1e-6, so expected values are compared
with an absolute tolerance of 1e-5.
"""

import math

import numpy as np
import pytest

from d2kd.evaluation.crowdhuman_metrics import (
    CrowdHumanImage,
    average_precision,
    caltech_match,
    clip_boxes,
    evaluate_crowdhuman,
    jaccard_counts,
    log_average_miss_rate,
)

TOL = 1e-5


def _im(gt, ignore, dt, scores, size=(100, 100)):
    return CrowdHumanImage(
        gt_boxes=np.array(gt, dtype=float).reshape(-1, 4),
        gt_ignore=np.array(ignore, dtype=bool),
        dt_boxes=np.array(dt, dtype=float).reshape(-1, 4),
        dt_scores=np.array(scores, dtype=float),
        height=size[0],
        width=size[1],
    )


def _three_images():
    """
    A (100 x 100): valid g1 = [0,0,10,10], g2 = [20,0,30,10]; ignore region I = [50,0,90,40].
        d1 = g1 (0.9): IoU 1 -> TP.   d2 = [60,0,70,10] (0.8), d3 = [55,5,65,15] (0.75): no
        valid overlap, IoA with I = 1 -> both discarded (one region absorbs several).
        d4 = [0,50,10,60] (0.7): FP.   d5 = g2 (0.6): TP.
    B: valid g3 = [0,0,20,20], no detections.   C: no gt, d = [0,0,10,10] (0.65): FP.
    """
    a = _im(
        [[0, 0, 10, 10], [20, 0, 30, 10], [50, 0, 90, 40]],
        [False, False, True],
        [[0, 0, 10, 10], [60, 0, 70, 10], [55, 5, 65, 15], [0, 50, 10, 60], [20, 0, 30, 10]],
        [0.9, 0.8, 0.75, 0.7, 0.6],
    )
    b = _im([[0, 0, 20, 20]], [False], [], [])
    c = _im([], [], [[0, 0, 10, 10]], [0.65])
    return [a, b, c]


def test_ap_mr_ji_on_three_images():
    res = evaluate_crowdhuman(_three_images())
    assert res["num_gt"] == 3 and res["num_images"] == 3
    # Pool by score: 0.9 TP, 0.7 FP, 0.65 FP (image C), 0.6 TP; G = 3.
    # (recall, precision): (1/3, 1), (1/3, 1/2), (1/3, 1/3), (2/3, 1/2).
    # AP = 0 + 0 + (2/3 - 1/3) * (1/3 + 1/2) / 2 = 5/36.
    assert res["AP"] == pytest.approx(5 / 36, abs=TOL)
    # FPPI = FP / 3 images: 0, 1/3, 2/3, 2/3; miss rate 2/3, 2/3, 2/3, 1/3. References
    # 0.01 ... 0.3162 first reach FPPI at 1/3 (miss 2/3), 0.5623 at 2/3 (miss 2/3); 1.0 is
    # never reached: last point (miss 1/3). MR = exp((8 ln 2/3 + ln 1/3) / 9).
    mr = math.exp((8 * math.log(2 / 3) + math.log(1 / 3)) / 9)
    assert res["MR"] == pytest.approx(mr, abs=TOL)
    assert res["MR"] == pytest.approx(0.61726, abs=1e-4)
    # JI (score > s). s <= 0.5: A: k = 2, n = 5 - 2 (d2, d3 in I) = 3, m = 2 -> 2/3; B: m = 1
    # -> 0; C: n = 1 -> 0; JI = (2/3) / 3 = 2/9. s = 0.6: A loses d5: k = 1, n = 2, m = 2 -> 1/3;
    # JI = 1/9. s = 0.7: A keeps d1-d3: k = 1, n = 1 -> 1/2; C has m = n = 0 and is not
    # counted: JI = (1/2) / 2 = 1/4. s = 0.8: A keeps d1: 1/2 again. s = 0.9: 0.
    expected = [2 / 9] * 6 + [1 / 9, 1 / 4, 1 / 4, 0.0]
    for s, e in zip(range(10), expected):
        assert res[f"JI@{s / 10:.1f}"] == pytest.approx(e, abs=TOL), s
    assert res["JI"] == pytest.approx(0.25, abs=TOL)
    assert res["JI_score_thresh"] == 0.7  # the first threshold reaching the maximum


def test_valid_gt_first_and_largest_iou():
    # Valid g = [0,0,10,10] inside an ignore region I = [0,0,12,12], I listed first. d1 = g
    # (0.9) matches g although IoA(d1, I) = 1; d2 = g (0.8) finds g used, then I absorbs it.
    gt, ign = np.array([[0, 0, 12, 12], [0, 0, 10, 10]], float), np.array([True, False])
    scores, labels = caltech_match(
        np.array([[0, 0, 10, 10]] * 2, float), np.array([0.8, 0.9]), gt, ign
    )
    assert scores.tolist() == [0.9] and labels.tolist() == [1]
    # g1 = [0,0,10,10], g2 = [2,0,12,10]. d1 = [2,0,12,10]: IoU g2 = 1, g1 = 80/120 -> takes g2.
    # d2 = [-3,0,7,10]: IoU g1 = 70/130 = 0.54, g2 = 50/150 -> TP on g1. Taking the first valid
    # box above 0.5 instead would give d1 -> g1 and d2 a false positive.
    gt = np.array([[0, 0, 10, 10], [2, 0, 12, 10]], float)
    dt = np.array([[2, 0, 12, 10], [-3, 0, 7, 10]], float)
    _, labels = caltech_match(dt, np.array([0.9, 0.8]), gt, np.zeros(2, bool))
    assert labels.tolist() == [1, 1]


def test_clipping_rule():
    boxes = np.array([[-5, -5, 120, 70], [150, 60, 170, 80], [-20, -20, -10, -10]], float)
    # x1 -> [0, W-1], y1 -> [0, H-1], x2 -> [0, W], y2 -> [0, H] with W = 100, H = 50.
    assert clip_boxes(boxes, 50, 100).tolist() == [[0, 0, 100, 50], [99, 49, 100, 50], [0, 0, 0, 0]]
    # Both boxes lie right of the image: they become slivers [99,10,100,40] (1 x 30) and
    # [99,12,100,38] (1 x 26) with IoU 26/30 > 0.5: a true positive, AP 0 (single point), MR 0.
    res = evaluate_crowdhuman(
        [_im([[110, 10, 150, 40]], [False], [[105, 12, 160, 38]], [0.5], (50, 100))]
    )
    assert res["AP"] == 0.0 and res["MR"] == 0.0
    assert res["JI"] == pytest.approx(1.0, abs=TOL)


def test_ap_single_true_positive_is_zero_and_trapezoids():
    assert average_precision(np.array([1]), 1) == 0.0
    # Labels 1, 1, 0, 1 with G = 4: recall .25 .5 .5 .75, precision 1 1 2/3 3/4.
    # AP = .25 * 1 + 0 + .25 * (2/3 + 3/4) / 2 = 0.25 + 0.177083 = 0.427083.
    assert average_precision(np.array([1, 1, 0, 1]), 4) == pytest.approx(
        0.25 + 0.25 * (17 / 12) / 2
    )


def test_mr_reads_first_point_at_or_beyond_each_fppi():
    # Labels 1, 0, 1; G = 2, one image: FPPI 0, 1, 1; miss rate .5, .5, 0. Every reference
    # (<= 1) first reaches FPPI at the 2nd point: MR = 0.5. (Reading the last point with
    # FPPI <= r would take miss rate 0 at r = 1 and give MR 0.)
    assert log_average_miss_rate(np.array([1, 0, 1]), 2, 1) == pytest.approx(0.5)


def test_degenerate_inputs_do_not_crash():
    # No detections anywhere: AP 0, MR 1 (every gt missed), JI 0.
    res = evaluate_crowdhuman([_im([[0, 0, 10, 10]], [False], [], [])])
    assert res["AP"] == 0.0 and res["MR"] == 1.0 and res["JI"] == 0.0
    # No valid gt box in the dataset: AP and MR undefined.
    res = evaluate_crowdhuman([_im([], [], [[0, 0, 10, 10]], [0.9])])
    assert math.isnan(res["AP"]) and math.isnan(res["MR"]) and res["JI"] == 0.0


def test_ji_forgives_valid_gt_inside_ignore_region():
    # Valid g = [0,0,10,10] unmatched, IoA(g over I = [0,0,20,20]) = 1: m = 0 (and n = 0).
    gt, ign = np.array([[0, 0, 10, 10], [0, 0, 20, 20]], float), np.array([False, True])
    assert jaccard_counts(np.zeros((0, 4)), gt, ign) == (0, 0, 0)
    # A detection far away: n = 1, k = 0, m = 0.
    assert jaccard_counts(np.array([[50, 50, 60, 60]], float), gt, ign) == (0, 0, 1)
