from .fpn_p6p7 import build_resnet_fpn_p6p7_backbone
from .mobilenet_v2 import MobileNetV2, build_mobilenetv2_backbone, build_mobilenetv2_fpn_backbone

__all__ = [
    "MobileNetV2",
    "build_mobilenetv2_backbone",
    "build_mobilenetv2_fpn_backbone",
    "build_resnet_fpn_p6p7_backbone",
]
