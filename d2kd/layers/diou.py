"""
Distance-IoU between anchors and ground-truth boxes, in LD's official form and the textbook form.

Textbook DIoU (Zheng et al., AAAI 2020): ``IoU(a, g) - rho^2 / c^2``, rho the distance between the
box centres and c the diagonal of the smallest box enclosing both:
``torchvision.ops.distance_box_iou``
(which adds eps to c^2 and does not guard the union; d2kd's anchors have positive area).

LD's official code (``bbox_overlaps(mode='diou')`` in HikariTJU/LD and BCKD) forms the union only
for the "iou"/"giou" modes, so its "DIoU" divides the intersection by the area of the *first* box
(the anchor): ``inter / area(a) - rho^2 / c^2`` (IoF-based). The valuable localization region is
defined with that quantity, so d2kd uses it by default (see ``MODEL.KD.LD.VLR_DIOU``).

Shape shorthand: a (R, 4) anchors, g (G, 4) ground truth, xyxy; results (R, G).
"""

import torch
from torch import Tensor

from .box_ops import box_area, enclosing_size

__all__ = ["pairwise_diou_official"]


def _centre_penalty(a: Tensor, g: Tensor, eps: float) -> Tensor:
    """(R, G) rho^2 / c^2."""
    a, g = a[:, None, :], g[None, :, :]
    rho2 = ((g[..., 0] + g[..., 2]) - (a[..., 0] + a[..., 2])) ** 2 / 4 + (
        (g[..., 1] + g[..., 3]) - (a[..., 1] + a[..., 3])
    ) ** 2 / 4
    enclose_wh = enclosing_size(a, g)
    c2 = (enclose_wh[..., 0] ** 2 + enclose_wh[..., 1] ** 2).clamp(min=eps)
    return rho2 / c2


def pairwise_diou_official(a: Tensor, g: Tensor, eps: float = 1e-6) -> Tensor:
    """LD's official IoF-based "DIoU" ``inter / area(a) - rho^2 / c^2``: (R, 4), (G, 4) ->
    (R, G)."""
    lt = torch.max(a[:, None, :2], g[None, :, :2])
    rb = torch.min(a[:, None, 2:], g[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    iof = wh[..., 0] * wh[..., 1] / box_area(a)[:, None].clamp(min=eps)
    return iof - _centre_penalty(a, g, eps)
