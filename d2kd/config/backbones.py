"""Config node of d2kd's MobileNetV2 backbone (``MODEL.MOBILENETV2``)."""

from detectron2.config import CfgNode as CN

__all__ = ["add_mobilenetv2_config"]


def add_mobilenetv2_config(cfg: CN) -> None:
    """Add ``cfg.MODEL.MOBILENETV2`` (the MobileNetV2 FPN backbone) in place."""
    _C = cfg
    _C.MODEL.MOBILENETV2 = CN()
    # Width multiplier of torchvision's MobileNetV2.
    _C.MODEL.MOBILENETV2.WIDTH_MULT = 1.0
    # Norm of the backbone: "BN", "SyncBN" or "FrozenBN" (pretrained weights, frozen statistics).
    _C.MODEL.MOBILENETV2.NORM = "BN"
    # Stages whose parameters are frozen: 0 none, 1 the stem + res2 (stride 4), ... 4 all.
    _C.MODEL.MOBILENETV2.FREEZE_AT = 0
    # Stages returned: res2 (stride 4, 24 ch), res3 (8, 32), res4 (16, 96), res5 (32, 1280).
    _C.MODEL.MOBILENETV2.OUT_FEATURES = ["res3", "res4", "res5"]
