"""Config node of BCKD (``MODEL.KD.BCKD``); the method is in ``d2kd/methods/bckd``."""

from detectron2.config import CfgNode as CN

__all__ = ["add_bckd_config"]


def add_bckd_config(cfg: CN) -> None:
    """Add ``cfg.MODEL.KD.BCKD`` in place (``MODEL.KD`` must exist)."""
    _C = cfg
    # BCKD (ICCV 2023). Both terms are normalised by N_pos, the number of the student's positives
    # (sum over images of max(#pos, 1), averaged over GPUs, at least 1), as the official code does.
    _C.MODEL.KD.BCKD = CN()
    # alpha1: weight of the binary classification distillation (0.25 next to a feature method).
    _C.MODEL.KD.BCKD.CLS_WEIGHT = 1.0
    # alpha2: weight of the IoU-based localization distillation (2.0 next to a feature method).
    _C.MODEL.KD.BCKD.LOC_WEIGHT = 4.0
    # Localization distance: "giou" (1 - GIoU, official config) or "iou" (1 - IoU, paper).
    _C.MODEL.KD.BCKD.LOC_LOSS = "giou"
    # Emulate the official per-level gate: a level contributes only if the per-GPU batch has a
    # positive on it (off by default: every level always contributes).
    _C.MODEL.KD.BCKD.LEVEL_GATE = False
    # Give priors on batch padding weight 0, as mmdet's valid flags: valid = on the image's own
    # extent rounded up to the backbone's size divisibility (mmdet's pad_shape).
    _C.MODEL.KD.BCKD.IGNORE_PADDING = True
