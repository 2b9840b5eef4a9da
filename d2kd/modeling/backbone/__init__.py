from .mobilenet_v2 import MobileNetV2, build_mobilenetv2_backbone, build_mobilenetv2_fpn_backbone
from .resnet_fpn_levels import LastLevelP6P7Configurable, build_resnet_fpn_p6p7_backbone

__all__ = [
    "LastLevelP6P7Configurable",
    "MobileNetV2",
    "build_mobilenetv2_backbone",
    "build_mobilenetv2_fpn_backbone",
    "build_resnet_fpn_p6p7_backbone",
]
