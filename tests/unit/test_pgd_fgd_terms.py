"""Attention maps and the loss terms of PGD and FGD against explicit loop references."""

import math

import pytest
import torch

from d2kd.layers.feature_attention import (
    global_channel_attention,
    pixel_channel_attention,
    spatial_attention,
)
from d2kd.layers.fgd_terms import fgd_feature_terms, fgd_global_term, focal_masks
from d2kd.layers.gc_block import GcBlock
from d2kd.layers.pgd_terms import normalize_per_image, pgd_cls_terms, pgd_reg_terms


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


def test_attention_maps_hand_values():
    x = torch.tensor([[[[1.0, -3.0]], [[1.0, 1.0]]]])  # (1, 2, 1, 2)
    p = spatial_attention(x, tau=1.0)
    # mean |x| per pixel: 1 and 2 -> 2 * softmax([1, 2]).
    e1, e2 = math.exp(1), math.exp(2)
    assert torch.allclose(p, torch.tensor([[[2 * e1 / (e1 + e2), 2 * e2 / (e1 + e2)]]]))
    a = pixel_channel_attention(x, tau=1.0)
    # pixel 0: |x| = (1, 1) -> 1, 1; pixel 1: (3, 1) -> 2 softmax([3, 1]).
    e3 = math.exp(3)
    assert torch.allclose(a[0, :, 0, 0], torch.tensor([1.0, 1.0]))
    assert torch.allclose(a[0, :, 0, 1], torch.tensor([2 * e3 / (e3 + e1), 2 * e1 / (e3 + e1)]))
    g = global_channel_attention(x, tau=0.5)
    # mean_hw |x|: channel 0 = 2, channel 1 = 1 -> 2 softmax([4, 2]).
    e4 = math.exp(4)
    assert torch.allclose(g, torch.tensor([[2 * e4 / (e4 + e2), 2 * e2 / (e4 + e2)]]))


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


def test_focal_masks_hand_values():
    boxes = torch.tensor([[[0.5, 0.5, 1.5, 2.5], [2.2, 2.2, 2.8, 2.8]]])
    fg, bg = focal_masks(boxes, torch.tensor([[True, True]]), 4, 4)
    # Box 1: cols 0..2, rows 0..3 -> 1/12; box 2: cols 2..3, rows 2..3 -> 1/4, max wins.
    expected = torch.zeros(4, 4)
    expected[0:4, 0:3] = 1 / 12
    expected[2:4, 2:4] = 1 / 4
    assert torch.allclose(fg[0], expected)
    assert torch.allclose(bg[0], (expected == 0).float() / 2)  # 2 background cells


def test_focal_masks_border_padding_and_no_boxes():
    # Touching the border: 3 x 3 cells counted, 2 x 2 painted -> mass 4/9 < 1.
    fg, _ = focal_masks(torch.tensor([[[2.5, 2.5, 4.0, 4.0]]]), torch.tensor([[True]]), 4, 4)
    assert fg[0].sum().item() == pytest.approx(4 / 9)
    fg, bg = focal_masks(torch.tensor([[[0.0, 0, 4, 4]]]), torch.tensor([[False]]), 4, 4)
    assert fg.sum() == 0 and bg[0].sum().item() == pytest.approx(1.0)
    fg, bg = focal_masks(torch.zeros(2, 0, 4), torch.zeros(2, 0, dtype=torch.bool), 3, 5)
    assert fg.shape == (2, 3, 5) and torch.allclose(bg, torch.full((2, 3, 5), 1 / 15))


def test_fgd_feature_terms_match_loop_reference():
    torch.manual_seed(1)
    s, t = torch.randn(2, 3, 2, 2), torch.randn(2, 3, 2, 2)
    fg, bg = torch.rand(2, 2, 2), torch.rand(2, 2, 2)
    tau = 0.5
    l_fg, l_bg, l_at = fgd_feature_terms(s, t, fg, bg, tau)
    sp_t, sp_s = spatial_attention(t, tau), spatial_attention(s, tau)
    ch_t, ch_s = global_channel_attention(t, tau), global_channel_attention(s, tau)
    ref_fg = ref_bg = 0.0
    for n in range(2):
        for c in range(3):
            for h in range(2):
                for w in range(2):
                    d = sp_t[n, h, w] * ch_t[n, c] * (s[n, c, h, w] - t[n, c, h, w]) ** 2
                    ref_fg += fg[n, h, w] * d
                    ref_bg += bg[n, h, w] * d
    ref_at = (ch_s - ch_t).abs().sum() / 2 + (sp_s - sp_t).abs().sum() / 2
    assert torch.allclose(l_fg, ref_fg / 2, rtol=1e-5)
    assert torch.allclose(l_bg, ref_bg / 2, rtol=1e-5)
    assert torch.allclose(l_at, ref_at, rtol=1e-5)
    x = torch.randn(2, 3, 2, 2)
    assert all(v.item() == 0.0 for v in fgd_feature_terms(x, x.clone(), fg, bg, tau))


def test_gc_block_identity_at_init_and_global_term():
    torch.manual_seed(0)
    gc_s, gc_t = GcBlock(4), GcBlock(4)
    x = torch.randn(2, 4, 3, 3)
    assert torch.equal(gc_s(x), x)
    assert fgd_global_term(x, x.clone(), gc_s, gc_t).item() == 0.0
    s = torch.randn(2, 4, 3, 3)
    assert fgd_global_term(s, x, gc_s, gc_t).item() == pytest.approx(
        ((s - x) ** 2).sum().item() / 2
    )
    with torch.no_grad():
        gc_s.channel_add[-1].bias.fill_(1.0)
    # A constant context shift of 1 per channel: R_S(x) = x + 1.
    assert fgd_global_term(x, x, gc_s, gc_t).item() == pytest.approx(4 * 9 * 2 / 2)
    loss = fgd_global_term(s, x, gc_s, gc_t)
    loss.backward()
    assert gc_s.conv_mask.weight.grad is not None and gc_t.channel_add[-1].weight.grad is not None
    with pytest.raises(ValueError, match="channels"):
        GcBlock(1)
