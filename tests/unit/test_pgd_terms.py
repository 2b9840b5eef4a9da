"""PGD's feature and attention terms against explicit loop references."""

import math

import pytest
import torch

from d2kd.methods.pgd.terms import normalize_per_image, pgd_cls_terms, pgd_reg_terms


def _softmax(values, tau):
    e = [math.exp(v / tau) for v in values]
    return [x / sum(e) for x in e]


def _loop_attention(x, tau):
    """Spatial P[n][h][w] and per-pixel channel A[n][c][h][w] by explicit loops."""
    n, c, h, w = x.shape
    xs = x.abs().tolist()
    spatial, channel = [], []
    for i in range(n):
        g = [sum(xs[i][k][a][b] for k in range(c)) / c for a in range(h) for b in range(w)]
        p = [h * w * v for v in _softmax(g, tau)]
        spatial.append([[p[a * w + b] for b in range(w)] for a in range(h)])
        ch = [[[0.0] * w for _ in range(h)] for _ in range(c)]
        for a in range(h):
            for b in range(w):
                s = _softmax([xs[i][k][a][b] for k in range(c)], tau)
                for k in range(c):
                    ch[k][a][b] = c * s[k]
        channel.append(ch)
    return torch.tensor(spatial), torch.tensor(channel)


def test_normalize_per_image():
    m = torch.tensor([[[[0.0, 2.0], [1.0, 0.0]]], [[[0.0, 0.0], [0.0, 0.0]]]])
    out = normalize_per_image(m)
    assert out[0, 0].tolist() == [[0.0, 1.0], [0.5, 0.0]]
    assert torch.equal(out[1], torch.zeros(1, 2, 2))


def test_pgd_cls_terms_match_loop_reference():
    torch.manual_seed(0)
    s, t = torch.randn(2, 3, 2, 2), torch.randn(2, 3, 2, 2)
    fg = normalize_per_image(torch.tensor([[[[0.5, 0], [1, 0]]], [[[0, 0], [0, 0.2]]]]))
    bg = normalize_per_image(torch.tensor([[[[0.0, 1], [0, 1]]], [[[1, 1], [1, 0]]]]))
    tau = 0.8
    l_fg, l_bg, l_att = pgd_cls_terms(s, t, fg, bg, tau)
    p_t, a_t = _loop_attention(t, tau)
    p_s, a_s = _loop_attention(s, tau)
    ref_fg = ref_bg = 0.0
    for n in range(2):
        for c in range(3):
            for h in range(2):
                for w in range(2):
                    d = p_t[n, h, w] * a_t[n, c, h, w] * (s[n, c, h, w] - t[n, c, h, w]) ** 2
                    ref_fg += fg[n, 0, h, w] * d
                    ref_bg += bg[n, 0, h, w] * d
    ref_att = (a_s - a_t).abs().sum() / (2 * 2 * 2) + (p_s - p_t).abs().sum() / 2
    assert torch.allclose(l_fg, ref_fg / 2, rtol=1e-5)
    assert torch.allclose(l_bg, ref_bg / 2, rtol=1e-5)
    assert torch.allclose(l_att, ref_att, rtol=1e-5)


def test_pgd_terms_zero_when_equal():
    x = torch.randn(2, 4, 3, 3)
    fg = bg = torch.ones(2, 1, 3, 3)
    assert all(v.item() == 0.0 for v in pgd_cls_terms(x, x.clone(), fg, bg, 0.8))
    assert all(v.item() == 0.0 for v in pgd_reg_terms(x, x.clone(), fg, 0.8))


def test_pgd_reg_terms_hand_and_empty():
    s = torch.zeros(1, 2, 1, 2, requires_grad=True)
    t = torch.tensor([[[[1.0, 5.0]], [[1.0, 5.0]]]])
    weight = torch.tensor([[[[0.5, 0.0]]]])  # only pixel 0 selected
    l_feat, l_att = pgd_reg_terms(s, t, weight, tau=0.8)
    # Pixel 0: teacher |x| = (1, 1) -> A^T = (1, 1), student A^S = (1, 1); residual^2 = 1.
    assert l_feat.item() == pytest.approx(0.5 * (1 * 1 + 1 * 1) / 2)
    assert l_att.item() == pytest.approx(0.0)
    empty_feat, empty_att = pgd_reg_terms(s, t, torch.zeros(1, 1, 1, 2), tau=0.8)
    assert empty_feat.item() == 0.0 and empty_att.item() == 0.0
    empty_feat.backward()  # kept in the graph
    assert s.grad is not None
