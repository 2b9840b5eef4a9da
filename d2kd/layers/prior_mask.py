"""
Which priors of a padded batch lie on an image's own (padded) extent.

Images of different sizes are padded to one batch tensor; priors on the padding of a smaller image
see only zeros. mmdet pads every image to a multiple of the size divisor first (its ``pad_shape``,
32 in the reference configs) and only then to the batch size; its anchor ``valid_flags`` mark a
location of level l (stride s) valid when ``x < ceil(pad_w / s)`` and ``y < ceil(pad_h / s)``.
ATSS assigns over valid anchors only, and BCKD/LD give invalid priors ``label_weights = 0``.

Detectron2 keeps only the unpadded ``image_sizes``; this module rounds them up to the backbone's
``size_divisibility`` to recover mmdet's ``pad_shape``. The difference is not one row: a 200 x 300
image (padded 224 x 320) keeps 1,496 priors over P3-P7 with one anchor per location, against 1,293
from the unpadded size (P3 alone 28 x 40 against 25 x 38 locations).

Priors are ordered level by level, then (y, x, anchor) as Detectron2's ``permute_to_N_HWA_K``.
"""

import math
from typing import Sequence, Tuple

import torch
from torch import Tensor

__all__ = ["padded_image_size", "valid_prior_mask"]


def padded_image_size(image_size: Tuple[int, int], size_divisibility: int) -> Tuple[int, int]:
    """(h, w) rounded up to a multiple of ``size_divisibility`` (<= 1: unchanged)."""
    d = max(int(size_divisibility or 0), 1)
    h, w = image_size
    return int(math.ceil(h / d) * d), int(math.ceil(w / d) * d)


def valid_prior_mask(
    level_shapes: Sequence[Tuple[int, int]],
    strides: Sequence[int],
    num_anchors: int,
    image_size: Tuple[int, int],
    size_divisibility: int = 1,
    device=None,
) -> Tensor:
    """
    Args:
        level_shapes: (H_l, W_l) per level.
        strides: stride per level.
        num_anchors: A, anchors per location.
        image_size: (h, w) of the image before padding.
        size_divisibility: the backbone's; the image's own extent is ``image_size`` rounded up
            to it (mmdet's ``pad_shape``).
    Returns:
        (R,) bool, R = sum_l H_l * W_l * A.
    """
    h, w = padded_image_size(image_size, size_divisibility)
    masks = []
    for (fh, fw), s in zip(level_shapes, strides):
        vh, vw = min(math.ceil(h / s), fh), min(math.ceil(w / s), fw)
        rows = torch.arange(fh, device=device) < vh
        cols = torch.arange(fw, device=device) < vw
        mask = (rows[:, None] & cols[None, :])[:, :, None].expand(fh, fw, num_anchors)
        masks.append(mask.reshape(-1))
    return torch.cat(masks)
