"""PGD's prediction-guided weighting on hand-checkable inputs (pure PyTorch)."""

import math

import pytest
import torch

from d2kd.layers.box_ops import aligned_iou as box_iou
from d2kd.methods.pgd.pgw import (
    background_mask,
    gaussian_mle_weights,
    points_inside_boxes,
    prediction_guided_weights,
    quality_score,
    select_candidates,
    split_levels,
)


def test_box_iou_hand_values():
    boxes = torch.tensor([[[0.0, 0, 2, 2], [5, 5, 6, 6], [1, 1, 1, 1]]])  # (1, 3, 4)
    gt = torch.tensor([[[1.0, 1, 3, 3], [0, 0, 2, 2]]])  # (1, 2, 4)
    iou = box_iou(boxes[:, :, None], gt[:, None])
    expected = torch.tensor([[[1 / 7, 1.0], [0.0, 0.0], [0.0, 0.0]]])
    assert torch.allclose(iou, expected)
    # Aligned pairs (what the generator computes for inside pairs only).
    assert torch.allclose(box_iou(boxes[0, :2], gt[0]), torch.tensor([1 / 7, 0.0]))


def test_quality_score_hand_values():
    prob, iou = torch.tensor([0.5, 0.9, 0.0]), torch.tensor([0.25, 0.0, 0.7])
    q = quality_score(prob, iou, xi=0.8)
    expected = [math.pow(0.5, 0.2) * math.pow(0.25, 0.8), 0.0, 0.0]
    assert torch.allclose(q, torch.tensor(expected))
    assert torch.allclose(
        quality_score(prob[:1], iou[:1], 0.6), torch.tensor([0.5**0.4 * 0.25**0.6])
    )


def test_inside_is_strict_and_axis_swap_reflects():
    box = torch.tensor([0.0, 4.0, 2.0, 6.0])
    points = torch.tensor([[1.0, 5.0], [0.0, 5.0], [5.0, 1.0]])
    assert points_inside_boxes(points, box).tolist() == [True, False, False]
    # The reference reads (x, y) as (y, x): (5, 1) is then "inside", (1, 5) is not.
    assert points_inside_boxes(points, box, swap_xy=True).tolist() == [False, False, True]


def test_topk_is_joint_over_levels_and_drops_zero_quality():
    # Priors 0-3 on level P3, 4-5 on level P4 (flattened, as the generator sees them).
    q = torch.tensor([0.1, 0.0, 0.7, 0.0, 0.9, 0.0])[None, :, None]  # (N=1, R=6, G=1)
    idx, valid = select_candidates(q, k=4, positive_only=True)
    assert idx[0, :, 0].tolist()[:3] == [4, 2, 0]  # the best of P4 first, then P3's
    assert valid[0, :, 0].tolist() == [True, True, True, False]
    _, valid_ref = select_candidates(q, k=4, positive_only=False)
    assert valid_ref.all()
    idx_all, _ = select_candidates(q, k=100, positive_only=True)  # k > R: all priors
    assert idx_all.shape == (1, 6, 1)


def test_gaussian_square_hand_values():
    pos = torch.tensor([[0.0, 0], [2, 0], [0, 2], [2, 2]])
    valid = torch.ones(4, dtype=torch.bool)
    # mu = (1, 1), biased covariance = I; + eps I = 2 I -> Mahalanobis^2 = 2/2 = 1.
    w = gaussian_mle_weights(pos, valid, cov_eps=1.0)
    assert torch.allclose(w, torch.full((4,), math.exp(-0.5)))
    w0 = gaussian_mle_weights(pos, valid, cov_eps=0.0)  # Sigma = I -> Mahalanobis^2 = 2
    assert torch.allclose(w0, torch.full((4,), math.exp(-1.0)), atol=1e-6)


def test_gaussian_collinear_is_regularised_and_deterministic():
    pos = torch.tensor([[0.0, 0], [2, 0], [4, 0]])
    valid = torch.ones(3, dtype=torch.bool)
    # var_x = 8/3, var_y = 0; + I -> Sigma = diag(11/3, 1); end points: 4 / (11/3) = 12/11.
    w = gaussian_mle_weights(pos, valid, cov_eps=1.0)
    expected = torch.tensor([math.exp(-6 / 11), 1.0, math.exp(-6 / 11)])
    assert torch.allclose(w, expected)
    assert torch.equal(w, gaussian_mle_weights(pos, valid, cov_eps=1.0))
    # Reference without jitter: singular Sigma, adj/(det+1e-10) -> weight 1 everywhere.
    assert torch.allclose(gaussian_mle_weights(pos, valid, cov_eps=0.0), torch.ones(3))
    # Reference with jitter: random but finite weights in [0, 1].
    torch.manual_seed(0)
    wj = gaussian_mle_weights(pos, valid, cov_eps=0.0, jitter=0.05)
    assert torch.isfinite(wj).all() and (wj >= 0).all() and (wj <= 1).all()


def test_gaussian_diagonal_collinear_is_finite():
    pos = torch.tensor([[100.0, 100], [108, 108], [116, 116], [124, 124]])
    w = gaussian_mle_weights(pos, torch.ones(4, dtype=torch.bool), cov_eps=1.0)
    assert torch.isfinite(w).all() and (w > 0).all() and (w <= 1).all()


def test_gaussian_single_and_empty_and_masked_sets():
    pos = torch.tensor([[[3.0, 4.0], [100.0, 100.0]], [[1.0, 1.0], [2.0, 2.0]]])
    valid = torch.tensor([[True, False], [False, False]])
    w = gaussian_mle_weights(pos, valid, cov_eps=1.0)
    assert w.tolist() == [[1.0, 0.0], [0.0, 0.0]]
    # An invalid far-away position does not move the fit of the valid ones.
    square = torch.tensor([[0.0, 0], [2, 0], [0, 2], [2, 2], [50, 50]])
    v = torch.tensor([True, True, True, True, False])
    assert torch.allclose(gaussian_mle_weights(square, v)[:4], torch.full((4,), math.exp(-0.5)))


# Five priors and one box [0, 0, 4, 4]: priors 0, 1, 3, 4 inside, prior 2 at (5, 1) outside.
CENTRES = torch.tensor([[1.0, 1], [3, 1], [5, 1], [1, 3], [3, 3]])
BOX = torch.tensor([[[0.0, 0, 4, 4]]])
QUALITY = torch.tensor([0.9, 0.8, 0.95, 0.1, 0.0])[None, :, None]


def _inside(gt):
    return points_inside_boxes(CENTRES[None, :, None], gt[:, None])


def test_pgw_default_masks_before_topk():
    w = prediction_guided_weights(QUALITY, _inside(BOX), CENTRES, k=2, cov_eps=1.0)
    # Candidates 0 and 1: mu = (2, 1), Sigma = diag(1, 0) + I; Mahalanobis^2 = 1/2 each.
    e = math.exp(-0.25)
    assert torch.allclose(w, torch.tensor([[e, e, 0, 0, 0]]))


def test_pgw_reference_order_topk_before_inside():
    w = prediction_guided_weights(
        QUALITY, _inside(BOX), CENTRES, k=2, cov_eps=1.0, topk_before_inside=True
    )
    # Candidates 2 and 0: mu = (3, 1), Sigma = diag(4, 0) + I; prior 2 is outside -> 0.
    assert torch.allclose(w, torch.tensor([[math.exp(-0.4), 0, 0, 0, 0]]))


def test_pgw_max_over_boxes_and_fewer_than_k_candidates():
    gt = torch.tensor([[[0.0, 0, 4, 4], [0, 0, 2, 2]]])
    q = QUALITY.expand(1, 5, 2).clone()
    w = prediction_guided_weights(q, _inside(gt), CENTRES, k=2, cov_eps=1.0)
    # Box 2 holds only prior 0: a single candidate gets weight 1; max over the boxes.
    e = math.exp(-0.25)
    assert torch.allclose(w, torch.tensor([[1.0, e, 0, 0, 0]]))


def test_pgw_images_are_independent_and_padding_is_inert():
    gt_a = torch.tensor([[0.0, 0, 4, 4], [0, 0, 0, 0]])  # second box is padding
    gt_b = torch.tensor([[2.0, 0, 6, 2], [0, 2, 4, 4]])
    valid = torch.tensor([[True, False], [True, True]])
    gt = torch.stack([gt_a, gt_b])
    inside = points_inside_boxes(CENTRES[None, :, None], gt[:, None]) & valid[:, None]
    q = torch.rand(2, 5, 2) * valid[:, None]
    batch = prediction_guided_weights(q, inside, CENTRES, k=3)
    alone_a = prediction_guided_weights(q[:1, :, :1], inside[:1, :, :1], CENTRES, k=3)
    alone_b = prediction_guided_weights(q[1:], inside[1:], CENTRES, k=3)
    assert torch.equal(batch[0], alone_a[0]) and torch.equal(batch[1], alone_b[0])


def test_pgw_without_boxes_is_zero():
    w = prediction_guided_weights(
        torch.zeros(2, 5, 0), torch.zeros(2, 5, 0, dtype=torch.bool), CENTRES, k=3
    )
    assert torch.equal(w, torch.zeros(2, 5))


def test_background_mask():
    gt = torch.tensor([[[0.0, 0, 2, 2], [0, 0, 4, 2]]])
    bg = background_mask(_inside(gt))
    assert bg.tolist() == [[0.0, 0.0, 1.0, 1.0, 1.0]]


def test_split_levels_max_over_anchors():
    # Two levels, 2 anchors per location: P3 2x1 locations, P4 1x1.
    values = torch.tensor([[0.1, 0.4, 0.0, 0.3, 0.9, 0.2]])
    p3, p4 = split_levels(values, [(2, 1), (1, 1)], num_anchors=2)
    assert p3.shape == (1, 1, 2, 1) and p4.shape == (1, 1, 1, 1)
    assert p3.flatten().tolist() == pytest.approx([0.4, 0.3]) and p4.item() == pytest.approx(0.9)
    with pytest.raises(ValueError, match="priors"):
        split_levels(values, [(2, 2)], num_anchors=2)
