"""Config of d2kd's backbones: ``MODEL.MOBILENETV2`` and the P6/P7 keys of ``MODEL.FPN``."""

from detectron2.config import CfgNode as CN

__all__ = ["add_fpn_p6p7_config", "add_mobilenetv2_config"]


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


def add_fpn_p6p7_config(cfg: CN) -> None:
    """
    Add the keys of ``build_resnet_fpn_p6p7_backbone`` to ``cfg.MODEL.FPN`` in place (read by no
    other backbone; the defaults are Detectron2's RetinaNet backbone).
    """
    _C = cfg
    # Source of P6: "res5" (C5: Detectron2, mmdet add_extra_convs='on_input') or "p5" (the FPN's
    # P5: mmdet 'on_output', its FCOS / ATSS / GFL).
    _C.MODEL.FPN.P6P7_IN_FEATURE = "res5"
    # ReLU on P6 before the P7 convolution: Detectron2 always; mmdet only with
    # relu_before_extra_convs=True (its FCOS), not its RetinaNet / ATSS / GFL.
    _C.MODEL.FPN.P6P7_RELU_BEFORE_P7 = True
