"""PKD's loss (spec crosskd_pkd.md 3.1 and hand cases 5.8): values, invariances, gradient, M = 1."""

import pytest
import torch

from d2kd.layers.channel_stats import channel_mean_std, channel_standardize
from d2kd.methods.pkd.terms import pkd_loss


def _map(values):
    return torch.tensor(values, dtype=torch.float32).view(1, 1, 2, 2)


@pytest.mark.parametrize(
    "teacher, expected",
    [([2, 4, 6, 8], 0.0), ([4, 3, 2, 1], 1.5), ([1, 3, 2, 4], 0.15)],
)
def test_hand_cases(teacher, expected):
    # r = 1, -1, 0.8 over M = 4 positions: (M - 1) / M * (1 - r).
    loss = pkd_loss(_map([1, 2, 3, 4]), _map(teacher))
    assert loss.item() == pytest.approx(expected, abs=1e-5)


def test_equals_one_minus_pearson_per_channel():
    torch.manual_seed(0)
    s, t = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5)
    m = 2 * 4 * 5
    xs = s.transpose(0, 1).reshape(3, -1)
    xt = t.transpose(0, 1).reshape(3, -1)
    r = torch.stack([torch.corrcoef(torch.stack([a, b]))[0, 1] for a, b in zip(xs, xt)])
    expected = ((m - 1) / m * (1 - r)).mean()
    assert pkd_loss(s, t).item() == pytest.approx(expected.item(), rel=1e-4)


def test_invariant_to_positive_per_channel_affine_changes():
    torch.manual_seed(1)
    s, t = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    a = torch.tensor([0.5, 3.0, 10.0]).view(1, 3, 1, 1)
    b = torch.tensor([-2.0, 0.0, 7.0]).view(1, 3, 1, 1)
    base = pkd_loss(s, t)
    assert pkd_loss(a * s + b, t).item() == pytest.approx(base.item(), rel=1e-4)
    assert pkd_loss(s, a * t + b).item() == pytest.approx(base.item(), rel=1e-4)
    assert pkd_loss(a * t + b, t).item() == pytest.approx(0.0, abs=1e-5)
    # A negative scale is not an invariance: it flips the correlation.
    assert pkd_loss(-t, t).item() > 1.0


def test_batch_coupled_statistics():
    torch.manual_seed(2)
    s, t = torch.randn(2, 1, 3, 3), torch.randn(2, 1, 3, 3)
    both = pkd_loss(s, t)
    s2 = s.clone()
    s2[1] += 5.0  # only image 1 changes; the loss of image 0 is read through shared stats
    assert pkd_loss(s2, t).item() != pytest.approx(both.item(), rel=1e-3)


def test_gradient_reaches_the_student_only():
    torch.manual_seed(3)
    s = torch.randn(1, 2, 3, 3, requires_grad=True)
    t = torch.randn(1, 2, 3, 3, requires_grad=True)
    pkd_loss(s, t).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None


def test_single_position_is_finite():
    s = torch.tensor([[[[3.0]]]], requires_grad=True)
    t = torch.tensor([[[[5.0]]]])
    mean, std = channel_mean_std(s)
    assert std.item() == 0.0 and mean.item() == 3.0
    loss = pkd_loss(s, t)
    assert torch.isfinite(loss) and loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(s.grad).all()


def test_standardize_uses_unbiased_std_plus_eps():
    x = _map([1, 2, 3, 4])
    out = channel_standardize(x, eps=0.5)
    std = (5.0 / 3.0) ** 0.5
    expected = (torch.tensor([1.0, 2, 3, 4]) - 2.5) / (std + 0.5)
    assert torch.allclose(out.flatten(), expected, atol=1e-6)


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="student"):
        pkd_loss(torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 4, 4))
