"""Config node of PKD (``MODEL.KD.PKD``); spec crosskd_pkd.md section 3."""

from detectron2.config import CfgNode as CN

__all__ = ["add_pkd_config"]


def add_pkd_config(cfg: CN) -> None:
    """Add ``cfg.MODEL.KD.PKD`` in place (``MODEL.KD`` must exist)."""
    _C = cfg
    _C.MODEL.KD.PKD = CN()
    # Modules whose outputs are dicts of feature maps (the FPN).
    _C.MODEL.KD.PKD.STUDENT_MODULE = "backbone"
    _C.MODEL.KD.PKD.TEACHER_MODULE = "backbone"
    # Keys to distil: all five levels as CrossKD + PKD; mmrazor's RetinaNet setting uses p3-p6.
    # Strides must match (no resizing, unlike mmrazor's resize_stu).
    _C.MODEL.KD.PKD.KEYS = ["p3", "p4", "p5", "p6", "p7"]
    # Student-side channel adapter: "auto" (1x1 conv when channels differ), "Identity", "Conv1x1".
    _C.MODEL.KD.PKD.ADAPTER = "auto"
    # Added to each channel's (unbiased) std before dividing.
    _C.MODEL.KD.PKD.EPS = 1e-6
