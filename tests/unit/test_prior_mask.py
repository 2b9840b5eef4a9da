"""Valid priors of an image smaller than its batch (mmdet's valid flags on the image's
pad_shape)."""

import torch

from d2kd.layers.prior_mask import padded_image_size, valid_prior_mask

# A 256 x 352 batch (the larger image's size, a multiple of 32) over P3-P7.
BATCH_LEVELS = [(32, 44), (16, 22), (8, 11), (4, 6), (2, 3)]
STRIDES = [8, 16, 32, 64, 128]


def test_padded_image_size_rounds_up_to_the_divisibility():
    assert padded_image_size((200, 300), 32) == (224, 320)
    assert padded_image_size((224, 320), 32) == (224, 320)
    assert padded_image_size((200, 300), 0) == (200, 300)  # no divisibility: unchanged


def test_200x300_image_keeps_the_priors_of_its_own_padded_extent():
    # Padded to 224 x 320: ceil(224 / s) x ceil(320 / s) locations per level,
    # 28 x 40 + 14 x 20 + 7 x 10 + 4 x 5 + 2 x 3 = 1120 + 280 + 70 + 20 + 6 = 1496.
    mask = valid_prior_mask(BATCH_LEVELS, STRIDES, 1, (200, 300), size_divisibility=32)
    assert int(mask.sum()) == 1496
    # The unpadded size (what d2kd used before) gives 25 x 38 + 13 x 19 + 7 x 10 + 4 x 5 + 2 x 3.
    unpadded = valid_prior_mask(BATCH_LEVELS, STRIDES, 1, (200, 300))
    assert int(unpadded.sum()) == 1293
    # On P3 the valid block is the top-left 28 x 40 of the 32 x 44 grid, whatever the anchors.
    p3 = valid_prior_mask(BATCH_LEVELS, STRIDES, 2, (200, 300), 32)[: 32 * 44 * 2].view(32, 44, 2)
    expected = torch.zeros(32, 44, dtype=torch.bool)
    expected[:28, :40] = True
    assert torch.equal(p3, expected[:, :, None].expand(32, 44, 2))


def test_the_largest_image_has_every_prior():
    assert bool(valid_prior_mask(BATCH_LEVELS, STRIDES, 9, (256, 352), 32).all())
