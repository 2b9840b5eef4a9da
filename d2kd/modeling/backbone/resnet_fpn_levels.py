"""
ResNet-FPN backbone with P6/P7 whose source and activation are configurable, for teachers
converted from other frameworks (mmdetection's ``FPN(add_extra_convs=..., relu_before_extra_convs
=...)``).

Detectron2's RetinaNet backbone (``build_retinanet_resnet_fpn_backbone``) computes
``P6 = conv(C5)`` and ``P7 = conv(relu(P6))``. mmdetection's RetinaNet computes P6 from C5 too
(``add_extra_convs='on_input'``) but without the ReLU before P7; its FCOS, ATSS and GFL compute P6
from P5 (``'on_output'``), with the ReLU only where ``relu_before_extra_convs=True`` (FCOS).
"""

from typing import List

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone import build_resnet_backbone
from detectron2.modeling.backbone.fpn import FPN, LastLevelP6P7
from torch import Tensor
from torch.nn import functional as F

__all__ = ["LastLevelP6P7Configurable", "build_resnet_fpn_p6p7_backbone"]


class LastLevelP6P7Configurable(LastLevelP6P7):
    """
    Detectron2's :class:`LastLevelP6P7` (same parameter names ``p6`` / ``p7``, so checkpoints
    of either load into the other) with the ReLU before P7 optional.
    """

    def __init__(
        self, in_channels: int, out_channels: int, in_feature: str = "res5", relu_before_p7=True
    ):
        """
        Args:
            in_channels / out_channels: channels of the source feature and of P6, P7.
            in_feature: "res5" (C5) or "p5" (the FPN's own P5).
            relu_before_p7: apply ReLU to P6 before the P7 convolution (Detectron2: always).
        """
        super().__init__(in_channels, out_channels, in_feature=in_feature)
        self.relu_before_p7 = bool(relu_before_p7)

    def forward(self, x: Tensor) -> List[Tensor]:
        """x: (N, C, H, W) source map -> [P6 (N, C', H/2, W/2), P7 (N, C', H/4, W/4)]."""
        p6 = self.p6(x)
        p7 = self.p7(F.relu(p6) if self.relu_before_p7 else p6)
        return [p6, p7]


@BACKBONE_REGISTRY.register()
def build_resnet_fpn_p6p7_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """
    Detectron2's ResNet + FPN (``MODEL.RESNETS``, ``MODEL.FPN``) with P6/P7 from
    ``MODEL.FPN.P6P7_IN_FEATURE`` ("res5" or "p5") and the ReLU before P7 per
    ``MODEL.FPN.P6P7_RELU_BEFORE_P7``. With "res5" and True it is
    ``build_retinanet_resnet_fpn_backbone``.
    """
    bottom_up = build_resnet_backbone(cfg, input_shape)
    source = cfg.MODEL.FPN.P6P7_IN_FEATURE
    out_channels = cfg.MODEL.FPN.OUT_CHANNELS
    if source == "res5":
        in_channels = bottom_up.output_shape()["res5"].channels
    elif source == "p5":
        in_channels = out_channels
    else:
        raise ValueError(f'MODEL.FPN.P6P7_IN_FEATURE must be "res5" or "p5", got {source!r}')
    top_block = LastLevelP6P7Configurable(
        in_channels,
        out_channels,
        in_feature=source,
        relu_before_p7=cfg.MODEL.FPN.P6P7_RELU_BEFORE_P7,
    )
    return FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=out_channels,
        norm=cfg.MODEL.FPN.NORM,
        top_block=top_block,
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
