"""CrossKD's pure terms against the spec's hand-checkable cases (crosskd_pkd.md section 5)."""

import math

import pytest
import torch
from torch.nn import functional as F

from d2kd.methods.crosskd.terms import (
    align_to_teacher,
    clamp_size_deltas,
    distribution_kl,
    giou_distance,
    iou_log_distance,
    kd_quality_focal,
    kl_regression_loss,
    normalized_sum,
    regression_weight,
)


def _map(values, shape=(1, 1, 2, 2)):
    return torch.tensor(values, dtype=torch.float32).view(*shape)


def test_alignment_by_hand():
    out = align_to_teacher(_map([1, 2, 3, 4]), _map([10, 10, 14, 14]))
    expected = torch.tensor([9.316720, 11.105574, 12.894426, 14.683280])
    assert torch.allclose(out.flatten(), expected, atol=1e-5)


def test_alignment_couples_the_images_of_the_batch():
    # (N=2, C=2, 1x2): channel 0 image 0 [1, 2], image 1 [3, 4]; channel 1 [0, 0], [1, 1].
    s = torch.tensor([[[[1.0, 2.0]], [[0.0, 0.0]]], [[[3.0, 4.0]], [[1.0, 1.0]]]])
    t = torch.tensor([[[[0.0, 0.0]], [[5.0, 5.0]]], [[[2.0, 2.0]], [[7.0, 9.0]]]])
    out = align_to_teacher(s, t)
    expected = torch.tensor(
        [
            [[[-0.341640, 0.552787]], [[4.841691, 4.841691]]],
            [[[1.447213, 2.341640]], [[8.158310, 8.158310]]],
        ]
    )
    assert torch.allclose(out, expected, atol=1e-5)
    s2 = s.clone()
    s2[1, 0] = torch.tensor([[30.0, 40.0]])
    assert not torch.allclose(align_to_teacher(s2, t)[0], out[0], atol=1e-3)


def test_alignment_single_position_gives_the_teacher_mean():
    s = torch.tensor([[[[3.0]], [[-1.0]]]], requires_grad=True)
    t = torch.tensor([[[[5.0]], [[2.0]]]])
    out = align_to_teacher(s, t)
    assert torch.equal(out.detach(), t)
    out.sum().backward()
    assert torch.isfinite(s.grad).all()


def test_alignment_gradient_flows_through_student_statistics_only():
    torch.manual_seed(0)
    s = torch.randn(2, 3, 4, 4, requires_grad=True)
    t = torch.randn(2, 3, 4, 4, requires_grad=True)
    out = align_to_teacher(s, t)
    out.sum().backward()
    # Every output's channel sum is M * mu_t whatever s is, so d(sum)/ds = 0 through the
    # differentiable student statistics (it would be sd_t / sd_s per element without them).
    assert s.grad.abs().max() < 1e-4
    assert t.grad is None


def test_alignment_of_an_affine_copy_is_the_teacher():
    torch.manual_seed(1)
    t = torch.randn(2, 3, 5, 5)
    a = torch.tensor([0.2, 4.0, 1.5]).view(1, 3, 1, 1)
    b = torch.tensor([1.0, -3.0, 0.0]).view(1, 3, 1, 1)
    assert torch.allclose(align_to_teacher(a * t + b, t), t, atol=1e-4)


def test_hold_variants_by_hand():
    z_s, z_t = _map([-2, -1, 1, 3]), _map([-1, 0, 2, 3])
    default = F.relu(align_to_teacher(z_s, z_t))
    assert torch.allclose(default.flatten(), torch.tensor([0, 0, 1.617540, 3.264313]), atol=1e-5)
    emulated = F.relu(align_to_teacher(F.relu(z_s), F.relu(z_t)))
    expected = torch.tensor([0.189341, 0.189341, 1.25, 3.371319])
    assert torch.allclose(emulated.flatten(), expected, atol=1e-5)


def test_kd_quality_focal_value_and_gradient():
    s = torch.zeros(1, requires_grad=True)
    t = torch.tensor([math.log(3.0)])  # q = 0.75
    loss = kd_quality_focal(s, t)
    assert loss.item() == pytest.approx(math.log(2) * 0.25, abs=1e-6)
    loss.backward()
    # The focal factor keeps its gradient: -0.2358 (detached factor would give -0.0625).
    assert s.grad.item() == pytest.approx(-0.235787, abs=1e-5)


def test_kd_quality_focal_is_zero_at_the_teacher_and_beta_applies():
    t = torch.randn(3, 4)
    assert kd_quality_focal(t.clone(), t).abs().max().item() < 1e-6
    s = torch.zeros(1)
    t1 = torch.tensor([math.log(3.0)])
    assert kd_quality_focal(s, t1, beta=2.0).item() == pytest.approx(math.log(2) * 0.0625, abs=1e-6)


def test_distribution_kl_by_hand_and_at_identity():
    teacher = torch.tensor([[0.0, math.log(3.0)] * 4])
    cross = torch.zeros(1, 8)
    kl = distribution_kl(cross, teacher, bins=2)
    assert kl.shape == (1, 4)
    assert torch.allclose(kl, torch.full((1, 4), 0.130812), atol=1e-5)
    assert distribution_kl(teacher.clone(), teacher, bins=2).abs().max() < 1e-6
    # T^2 scaling: at T = 2 the KL of the softened distributions times 4.
    soft = distribution_kl(cross, teacher, bins=2, temperature=2.0)
    p = torch.softmax(torch.tensor([0.0, math.log(3.0)]) / 2, 0)
    expected = 4 * (p * (p.log() - math.log(0.5))).sum()
    assert torch.allclose(soft, expected.expand(1, 4), atol=1e-5)


def _two_bin_logits_with_kl(value: float) -> torch.Tensor:
    """Logits [0, x] whose two-bin KL against a uniform teacher is ``value`` (bisection)."""
    lo, hi = 0.0, 20.0
    for _ in range(60):
        x = (lo + hi) / 2
        kl = distribution_kl(torch.tensor([[0.0, x]]), torch.zeros(1, 2), bins=2).item()
        lo, hi = (x, hi) if kl < value else (lo, x)
    return torch.tensor([0.0, (lo + hi) / 2])


def test_kl_regression_normaliser_by_hand():
    # Two priors, w = 0.5 and 0.25, side-summed KL 0.2 and 0.4 -> (0.1 + 0.1) / 0.75.
    cross = torch.stack(
        [_two_bin_logits_with_kl(0.05).repeat(4), _two_bin_logits_with_kl(0.1).repeat(4)]
    )
    teacher = torch.zeros(2, 8)
    assert torch.allclose(
        distribution_kl(cross, teacher, 2).sum(-1), torch.tensor([0.2, 0.4]), atol=1e-5
    )
    w = torch.tensor([0.5, 0.25])
    assert kl_regression_loss(cross, teacher, w, bins=2).item() == pytest.approx(0.266667, abs=1e-5)
    # Only padding priors (all weights 0): 0, not NaN.
    assert kl_regression_loss(cross, teacher, torch.zeros(2), bins=2).item() == 0.0


def test_box_distances_by_hand():
    t = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    c = torch.tensor([[1.0, 1.0, 3.0, 3.0]])
    assert giou_distance(c, t).item() == pytest.approx(1.079365, abs=1e-5)
    assert iou_log_distance(c, t).item() == pytest.approx(1.945910, abs=1e-5)
    assert giou_distance(t, t).item() == pytest.approx(0.0, abs=1e-6)
    assert iou_log_distance(t, t).item() == pytest.approx(0.0, abs=1e-6)
    # Disjoint boxes: -ln of the floored IoU, finite.
    far = torch.tensor([[10.0, 10.0, 12.0, 12.0]])
    assert iou_log_distance(far, t).item() == pytest.approx(-math.log(1e-6), rel=1e-5)


def test_retinanet_regression_example_by_hand():
    omega = torch.tensor([1.0, 1.0, 0.0])  # third anchor in the ignore band
    t_logits = torch.tensor([[0.0, -5.0], [-math.log(3.0), -9.0], [2.0, 0.0]])
    w = regression_weight(t_logits) * (omega > 0).float()
    assert torch.allclose(w, torch.tensor([0.5, 0.25, 0.0]))
    dist = torch.tensor([1.079365, 0.5, 0.7])
    assert normalized_sum(dist, w, 1.0).item() == pytest.approx(0.664683, abs=1e-5)


def test_size_deltas_are_clamped_from_below_as_mmdet():
    """|dw / w_w|, |dh / w_h| <= ln(1000 / 16) (mmdet); only the lower side is added here (the
    upper one is the decoder's). Weights (10, 10, 5, 5): the raw bound is -5 * 4.135."""
    bound = math.log(1000 / 16)
    deltas = torch.tensor([[-30.0, 30.0, -30.0, -20.0], [1.0, -1.0, 30.0, -21.0]])
    deltas.requires_grad_(True)
    out = clamp_size_deltas(deltas, (10.0, 10.0, 5.0, 5.0), bound)
    expected = [[-30.0, 30.0, -5 * bound, -20.0], [1.0, -1.0, 30.0, -5 * bound]]
    assert torch.allclose(out, torch.tensor(expected))
    out.sum().backward()
    assert deltas.grad.tolist() == [[1.0, 1.0, 0.0, 1.0], [1.0, 1.0, 1.0, 0.0]]
