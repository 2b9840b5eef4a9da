from .mobilenet_v2 import MobileNetV2, build_mobilenetv2_backbone, build_mobilenetv2_fpn_backbone

__all__ = ["MobileNetV2", "build_mobilenetv2_backbone", "build_mobilenetv2_fpn_backbone"]
