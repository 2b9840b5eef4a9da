"""
Which priors of a padded batch lie on an image's own pixels.

Images of different sizes are padded to one batch tensor; priors on the padding of a smaller image
see only zeros. mmdet's anchor ``valid_flags`` mark a location of level l (stride s) valid when
``x < ceil(w / s)`` and ``y < ceil(h / s)``, and BCKD/LD give invalid priors ``label_weights = 0``.
This reproduces that rule from the level shapes. (mmdet uses each image's own 32-padded shape;
Detectron2 keeps only the unpadded size, which is what d2kd uses: at most one extra row/column of
locations per level is dropped.)

Priors are ordered level by level, then (y, x, anchor) as Detectron2's ``permute_to_N_HWA_K``.
"""

import math
from typing import Sequence, Tuple

import torch
from torch import Tensor

__all__ = ["valid_prior_mask"]


def valid_prior_mask(
    level_shapes: Sequence[Tuple[int, int]],
    strides: Sequence[int],
    num_anchors: int,
    image_size: Tuple[int, int],
    device=None,
) -> Tensor:
    """
    Args:
        level_shapes: (H_l, W_l) per level.
        strides: stride per level.
        num_anchors: A, anchors per location.
        image_size: (h, w) of the image before padding.
    Returns:
        (R,) bool, R = sum_l H_l * W_l * A.
    """
    h, w = image_size
    masks = []
    for (fh, fw), s in zip(level_shapes, strides):
        vh, vw = min(math.ceil(h / s), fh), min(math.ceil(w / s), fw)
        rows = torch.arange(fh, device=device) < vh
        cols = torch.arange(fw, device=device) < vw
        mask = (rows[:, None] & cols[None, :])[:, :, None].expand(fh, fw, num_anchors)
        masks.append(mask.reshape(-1))
    return torch.cat(masks)
