"""Multi-scale deformable attention against a direct, loop-by-loop bilinear reference."""

import math

import pytest
import torch

from d2kd.layers.detr.ms_deform_attn import MSDeformAttn, ms_deform_attn_core


def _bilinear(img, x, y):
    """img (D, H, W); (x, y) in [0, 1] with 0/1 at the outer edges; zeros outside."""
    _, h, w = img.shape
    px, py = x * w - 0.5, y * h - 0.5  # pixel-centre coordinates
    x0, y0 = math.floor(px), math.floor(py)
    out = torch.zeros(img.shape[0], dtype=img.dtype)
    for yy, wy in ((y0, 1 - (py - y0)), (y0 + 1, py - y0)):
        for xx, wx in ((x0, 1 - (px - x0)), (x0 + 1, px - x0)):
            if 0 <= yy < h and 0 <= xx < w:
                out += wy * wx * img[:, yy, xx]
    return out


def _reference(value, shapes, locs, weights):
    b, _, m, d = value.shape
    _, lq, _, n_l, n_p, _ = locs.shape
    starts = [0]
    for h, w in shapes:
        starts.append(starts[-1] + h * w)
    out = torch.zeros(b, lq, m, d, dtype=value.dtype)
    for bi in range(b):
        for q in range(lq):
            for mi in range(m):
                for lvl, (h, w) in enumerate(shapes):
                    img = value[bi, starts[lvl] : starts[lvl + 1], mi].T.reshape(d, h, w)
                    for p in range(n_p):
                        x, y = locs[bi, q, mi, lvl, p].tolist()
                        out[bi, q, mi] += weights[bi, q, mi, lvl, p] * _bilinear(img, x, y)
    return out.reshape(b, lq, m * d)


def test_core_matches_direct_bilinear_reference():
    torch.manual_seed(0)
    shapes = [(4, 5), (2, 3)]
    b, lq, m, d, n_p = 2, 3, 2, 3, 2
    value = torch.randn(b, sum(h * w for h, w in shapes), m, d, dtype=torch.float64)
    # Locations spread beyond [0, 1] so that border and outside (zero) samples are exercised.
    locs = torch.rand(b, lq, m, len(shapes), n_p, 2, dtype=torch.float64) * 1.4 - 0.2
    weights = torch.rand(b, lq, m, len(shapes), n_p, dtype=torch.float64)
    out = ms_deform_attn_core(value, shapes, locs, weights)
    assert out.shape == (b, lq, m * d)
    torch.testing.assert_close(out, _reference(value, shapes, locs, weights))


def test_core_at_a_pixel_centre_reads_that_pixel():
    value = torch.arange(12.0).view(1, 12, 1, 1)  # one level 3 x 4, values 0..11 row-major
    loc = torch.tensor([(2 + 0.5) / 4, (1 + 0.5) / 3]).view(1, 1, 1, 1, 1, 2)  # pixel (y=1, x=2)
    out = ms_deform_attn_core(value, [(3, 4)], loc, torch.ones(1, 1, 1, 1, 1))
    assert out.item() == pytest.approx(6.0)


def test_module_shapes_padding_and_box_references():
    torch.manual_seed(0)
    attn = MSDeformAttn(d_model=16, n_levels=2, n_heads=4, n_points=2)
    shapes = torch.tensor([[4, 4], [2, 2]])
    src = torch.randn(2, 20, 16, requires_grad=True)
    query = torch.randn(2, 5, 16)
    pad = torch.zeros(2, 20, dtype=torch.bool)
    for ref in (torch.rand(2, 5, 2, 2), torch.rand(2, 5, 2, 4)):
        out = attn(query, ref, src, shapes, pad)
        assert out.shape == (2, 5, 16)
    out.sum().backward()
    assert src.grad is not None and torch.isfinite(src.grad).all()
    # All values padded: the attention output is the output projection's bias alone.
    out = attn(query, torch.rand(2, 5, 2, 2), src, shapes, torch.ones(2, 20, dtype=torch.bool))
    torch.testing.assert_close(out, attn.output_proj.bias.expand_as(out))
    with pytest.raises(ValueError, match="levels"):
        attn(query, torch.rand(2, 5, 2, 2), src[:, :16], shapes[:1])
