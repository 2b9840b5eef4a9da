"""A ResNet-FPN with P6/P7 whose extra levels start from C5 or P5 (MODEL.FPN.TOP_LEVELS_IN)."""

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone.fpn import FPN, LastLevelP6P7
from detectron2.modeling.backbone.resnet import build_resnet_backbone

__all__ = ["build_resnet_fpn_p6p7_backbone"]


@BACKBONE_REGISTRY.register()
def build_resnet_fpn_p6p7_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """
    Detectron2's ``build_retinanet_resnet_fpn_backbone`` (P3-P7; P6 = conv3x3/2 of the input,
    P7 = conv3x3/2 of ReLU(P6)), with P6's input chosen by ``MODEL.FPN.TOP_LEVELS_IN``: "res5"
    (identical to Detectron2's) or "p5".
    """
    top_in = cfg.MODEL.FPN.TOP_LEVELS_IN
    if top_in not in ("res5", "p5"):
        raise ValueError(f'MODEL.FPN.TOP_LEVELS_IN must be "res5" or "p5", got "{top_in}"')
    bottom_up = build_resnet_backbone(cfg, input_shape)
    out_channels = cfg.MODEL.FPN.OUT_CHANNELS
    in_channels = bottom_up.output_shape()["res5"].channels if top_in == "res5" else out_channels
    return FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=out_channels,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelP6P7(in_channels, out_channels, in_feature=top_in),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
