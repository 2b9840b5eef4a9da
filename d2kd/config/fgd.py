"""Config node of FGD (``MODEL.KD.FGD``); the method is in ``d2kd/methods/fgd``."""

from detectron2.config import CfgNode as CN

__all__ = ["add_fgd_config"]


def add_fgd_config(cfg: CN) -> None:
    """Add ``cfg.MODEL.KD.FGD`` in place (``MODEL.KD`` must exist)."""
    # Focal and Global Distillation (Yang et al., CVPR 2022); spec pgd_fgd.md section 3.
    # Defaults are the RetinaNet ones.
    _C = cfg
    _C.MODEL.KD.FGD = CN()
    # Modules whose outputs are dicts of feature maps (the FPN), and the keys distilled.
    _C.MODEL.KD.FGD.STUDENT_MODULE = "backbone"
    _C.MODEL.KD.FGD.TEACHER_MODULE = "backbone"
    _C.MODEL.KD.FGD.KEYS = ["p3", "p4", "p5", "p6", "p7"]
    # Mask generator (MASK_GENERATOR_REGISTRY) giving the focal fg/bg masks from the GT boxes.
    _C.MODEL.KD.FGD.MASK_GENERATOR = "GTBoxMaskGenerator"
    # Temperature of the spatial and channel attentions (0.8 for FCOS).
    _C.MODEL.KD.FGD.TEMPERATURE = 0.5
    # Weights of the fg, bg, attention and global terms (RetinaNet configs of the paper).
    _C.MODEL.KD.FGD.ALPHA = 0.001
    _C.MODEL.KD.FGD.BETA = 0.0005
    _C.MODEL.KD.FGD.GAMMA = 0.0005
    _C.MODEL.KD.FGD.LAMBDA = 0.000005
    # Student-side adapter per level ("auto": 1x1 conv with bias when channels differ).
    _C.MODEL.KD.FGD.ADAPTER = "auto"
    # Reference box mapping x / img_w * W with the unpadded image size (spec 3.2); d2kd maps
    # x / stride, exact for Detectron2's padding.
    _C.MODEL.KD.FGD.EMULATE_IMG_SHAPE_MAPPING = False
