"""FGD's focal masks, feature terms and global (GcBlock) term against hand values and loops."""

import pytest
import torch

from d2kd.layers.feature_attention import global_channel_attention, spatial_attention
from d2kd.methods.fgd.gc_block import GcBlock
from d2kd.methods.fgd.terms import fgd_feature_terms, fgd_global_term, focal_masks


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
