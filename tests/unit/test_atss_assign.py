"""ATSS assignment on hand-made anchors and boxes (expected values worked out by hand)."""

import statistics

import pytest
import torch

from d2kd.layers.atss_assign import atss_assign, atss_iou_thresholds


def _t(rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_single_gt_threshold_is_mean_plus_std_of_topk_candidates():
    # One level, topk 3: the three anchors closest to the GT centre (5, 5) are candidates,
    # the far one (centre 30) is not. IoUs with [0, 0, 10, 10]: 1, 60/140 = 3/7, 20/180 = 1/9.
    anchors = _t([[0, 0, 10, 10], [4, 0, 14, 10], [8, 0, 18, 10], [25, 0, 35, 10]])
    out = atss_assign(anchors, [4], _t([[0, 0, 10, 10]]), topk=3)
    ious = [1.0, 3 / 7, 1 / 9]
    expected_thr = statistics.mean(ious) + statistics.stdev(ious)  # 0.9637 (hand: 0.5132 + 0.4505)
    assert out.iou_thresholds.tolist() == pytest.approx([expected_thr], abs=1e-6)
    assert sorted(out.candidate_idxs[:, 0].tolist()) == [0, 1, 2]
    assert out.matched_gt_idx.tolist() == [0, -1, -1, -1]
    assert out.ious[:3, 0].tolist() == pytest.approx(ious, abs=1e-6)


def _edge_case(right: float):
    # GT [0, 0, 10, 10]; anchor 0 = [0, 0, right, 10] has IoU 100 / right (about 0.5) and its
    # centre at x = right / 2, near the GT's right edge; the two others have IoU 0.
    anchors = _t([[0, 0, right, 10], [30, 0, 40, 10], [60, 0, 70, 10]])
    return atss_assign(anchors, [3], _t([[0, 0, 10, 10]]), topk=3)


def test_centre_must_be_inside_the_gt_by_more_than_0_01():
    # Threshold for IoUs [~0.5, 0, 0]: mean + std = 1/6 + sqrt(1/12) = 0.455 < 0.5, so only the
    # centre test decides. Centre 9.98 -> 0.02 from the edge: positive.
    assert _edge_case(19.96).matched_gt_idx.tolist() == [0, -1, -1]
    # Centre 9.995 -> 0.005 from the edge (< 0.01): background.
    assert _edge_case(19.99).matched_gt_idx.tolist() == [-1, -1, -1]
    # Centre exactly on the edge: background.
    assert _edge_case(20.0).matched_gt_idx.tolist() == [-1, -1, -1]


def _two_gt_scene():
    # Level 0 (3 anchors, topk 2 -> 2 candidates) and level 1 (1 anchor -> topk clipped to 1).
    anchors = _t([[0, 0, 10, 10], [30, 0, 40, 10], [60, 0, 70, 10], [100, 100, 120, 120]])
    # GT a = [0, 0, 10, 10]: IoU with anchor 0 = 1.  GT b = [0, 0, 12, 10]: IoU = 100/120.
    return anchors, _t([[0, 0, 10, 10]]), _t([[0, 0, 12, 10]])


def test_topk_clipped_by_level_size_and_thresholds_per_gt():
    anchors, gt_a, gt_b = _two_gt_scene()
    out = atss_assign(anchors, [3, 1], torch.cat([gt_a, gt_b]), topk=2)
    assert tuple(out.candidate_idxs.shape) == (3, 2)  # 2 on level 0 + 1 on level 1
    for g in range(2):
        assert sorted(out.candidate_idxs[:, g].tolist()) == [0, 1, 3]
    # Candidate IoUs: a -> [1, 0, 0], b -> [5/6, 0, 0].
    thr_a = statistics.mean([1, 0, 0]) + statistics.stdev([1, 0, 0])  # 0.9107
    thr_b = statistics.mean([5 / 6, 0, 0]) + statistics.stdev([5 / 6, 0, 0])  # 0.7589
    assert out.iou_thresholds.tolist() == pytest.approx([thr_a, thr_b], abs=1e-6)


@pytest.mark.parametrize("order", [(0, 1), (1, 0)])
def test_anchor_positive_for_two_gts_goes_to_the_larger_iou(order):
    # Anchor 0 passes both thresholds (1 >= 0.9107, 0.833 >= 0.7589) with its centre inside
    # both GTs: it goes to GT a (IoU 1), whichever index a has.
    anchors, gt_a, gt_b = _two_gt_scene()
    gts = [gt_a, gt_b]
    out = atss_assign(anchors, [3, 1], torch.cat([gts[i] for i in order]), topk=2)
    index_of_a = order.index(0)
    assert out.matched_gt_idx.tolist() == [index_of_a, -1, -1, -1]


def test_no_gt_gives_all_background():
    anchors, _, _ = _two_gt_scene()
    out = atss_assign(anchors, [3, 1], torch.zeros((0, 4)), topk=2)
    assert out.matched_gt_idx.tolist() == [-1] * 4
    assert out.iou_thresholds.shape == (0,)
    assert tuple(out.candidate_idxs.shape) == (3, 0)


def test_level_sizes_must_add_up():
    anchors, gt_a, _ = _two_gt_scene()
    with pytest.raises(ValueError, match="sums to 3"):
        atss_assign(anchors, [2, 1], gt_a)


def test_thresholds_alone_match_the_assignment_and_valid_shrinks_the_levels():
    anchors, gt_a, gt_b = _two_gt_scene()
    gts = torch.cat([gt_a, gt_b])
    out = atss_assign(anchors, [3, 1], gts, topk=2)
    assert torch.equal(atss_iou_thresholds(anchors, [3, 1], gts, topk=2), out.iou_thresholds)
    # Only anchors 0 and 3 valid: one candidate per level, IoUs a -> [1, 0], b -> [5/6, 0].
    valid = torch.tensor([True, False, False, True])
    thr = atss_iou_thresholds(anchors, [3, 1], gts, topk=2, valid=valid)
    expected = [statistics.mean(c) + statistics.stdev(c) for c in ([1, 0], [5 / 6, 0])]
    assert thr.tolist() == pytest.approx(expected, abs=1e-6)
    # A single candidate is its own threshold; no candidate at all gives 0.
    only_0 = torch.tensor([True, False, False, False])
    assert atss_iou_thresholds(anchors, [3, 1], gts, 2, only_0).tolist() == pytest.approx(
        [1, 5 / 6]
    )
    none = torch.zeros(4, dtype=torch.bool)
    assert atss_iou_thresholds(anchors, [3, 1], gts, 2, none).tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="sums to 3"):
        atss_iou_thresholds(anchors, [2, 1], gts)


def _reference_loop(anchors, sizes, gts, topk):
    """The algorithm written out GT by GT (slow, obvious), for the batched version to match."""
    ctr = (anchors[:, :2] + anchors[:, 2:]) / 2
    best = torch.full((len(anchors),), -1.0)
    matched = torch.full((len(anchors),), -1, dtype=torch.long)
    for g, box in enumerate(gts):
        inter_wh = (torch.min(anchors[:, 2:], box[2:]) - torch.max(anchors[:, :2], box[:2])).clamp(
            min=0
        )
        inter = inter_wh[:, 0] * inter_wh[:, 1]
        area_a = (anchors[:, 2] - anchors[:, 0]) * (anchors[:, 3] - anchors[:, 1])
        iou = inter / (area_a + (box[2] - box[0]) * (box[3] - box[1]) - inter)
        dist = ((ctr - (box[:2] + box[2:]) / 2) ** 2).sum(1).sqrt()
        cands, start = [], 0
        for n in sizes:
            cands += (start + dist[start : start + n].argsort()[: min(topk, n)]).tolist()
            start += n
        thr = iou[cands].mean() + iou[cands].std()
        for a in cands:
            inside = (
                min(ctr[a, 0] - box[0], ctr[a, 1] - box[1], box[2] - ctr[a, 0], box[3] - ctr[a, 1])
                > 0.01
            )
            if iou[a] >= thr and inside and iou[a] > best[a]:
                best[a], matched[a] = iou[a], g
    return matched


def test_batched_assignment_matches_a_per_gt_loop():
    g = torch.Generator().manual_seed(0)
    sizes, anchors = [], []
    for stride, n in [(8, 8), (16, 4), (32, 2)]:
        ys, xs = torch.meshgrid(torch.arange(n) * stride, torch.arange(n) * stride, indexing="ij")
        c = torch.stack([xs.flatten(), ys.flatten()], 1).float() + 0.37  # avoid distance ties
        anchors.append(torch.cat([c - 4 * stride, c + 4 * stride], 1))
        sizes.append(n * n)
    anchors = torch.cat(anchors)
    xy = torch.rand(12, 2, generator=g) * 50
    gts = torch.cat([xy, xy + 4 + torch.rand(12, 2, generator=g) * 40], 1)
    out = atss_assign(anchors, sizes, gts, topk=3)
    expected = _reference_loop(anchors, sizes, gts, 3)
    assert (out.matched_gt_idx >= 0).sum() > 5  # the scene has positives
    assert torch.equal(out.matched_gt_idx, expected)


def _touching_the_padding(valid):
    # One level, anchors of side 8 (rows 1..9) centred at x = 0, 4, 8, 12, 16; the image is 12
    # wide, so the last two anchors lie on the batch padding. GT [2, 0, 12, 10] touches the
    # image's right edge. topk 3 by centre distance to x = 7: anchors 2, 1, 3 over the whole
    # row, anchors 2, 1, 0 over the image's own anchors.
    anchors = _t([[c - 4, 1, c + 4, 9] for c in (0, 4, 8, 12, 16)])
    mask = torch.tensor([True, True, True, False, False]) if valid else None
    return atss_assign(anchors, [5], _t([[2, 0, 12, 10]]), topk=3, valid=mask)


def test_object_touching_the_padding_draws_candidates_from_the_image_only():
    # IoUs with the GT (area 100, anchors 64): 16/148, 48/116, 64/100, 32/132 for anchors 0-3.
    iou = [16 / 148, 48 / 116, 64 / 100, 32 / 132]
    out = _touching_the_padding(valid=True)
    assert sorted(out.candidate_idxs[:, 0].tolist()) == [0, 1, 2]
    image_only = [iou[0], iou[1], iou[2]]
    thr = statistics.mean(image_only) + statistics.stdev(image_only)  # 0.6542 > 0.64
    assert out.iou_thresholds.tolist() == pytest.approx([thr], abs=1e-6)
    assert out.matched_gt_idx.tolist() == [-1] * 5
    # With the padding anchor 3 as a candidate the threshold drops to 0.6315 and anchor 2
    # became positive: what d2kd did before it honoured the image's valid anchors.
    old = _touching_the_padding(valid=False)
    with_padding = [iou[2], iou[1], iou[3]]
    assert old.iou_thresholds.tolist() == pytest.approx(
        [statistics.mean(with_padding) + statistics.stdev(with_padding)], abs=1e-6
    )
    assert old.matched_gt_idx.tolist() == [-1, -1, 0, -1, -1]


def test_valid_mask_shape_is_checked():
    anchors, gt_a, _ = _two_gt_scene()
    with pytest.raises(ValueError, match=r"valid must be a \(4,\) bool mask"):
        atss_assign(anchors, [3, 1], gt_a, valid=torch.ones(3, dtype=torch.bool))
