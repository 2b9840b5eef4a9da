"""The spatial, per-pixel channel and global channel attentions (shared by PGD and FGD), by hand."""

import math

import torch

from d2kd.layers.feature_attention import (
    global_channel_attention,
    pixel_channel_attention,
    spatial_attention,
)


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
