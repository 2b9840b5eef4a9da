"""Config nodes of PGD and FGD (``MODEL.KD.PGD``, ``MODEL.KD.FGD``) and of the MobileNetV2 backbone."""

from detectron2.config import CfgNode as CN

__all__ = ["add_pgd_fgd_config"]


def add_pgd_fgd_config(cfg: CN) -> None:
    """Add ``MODEL.KD.PGD``, ``MODEL.KD.FGD`` and ``MODEL.MOBILENETV2`` to ``cfg`` in place."""
    _add_pgd_config(cfg)
    _add_fgd_config(cfg)
    _add_mobilenetv2_config(cfg)


def _add_pgd_config(cfg: CN) -> None:
    # Prediction-Guided Distillation (Yang et al., ECCV 2022); spec pgd_fgd.md section 2.
    # Defaults are those of the FCOS R101 -> R50 1x reference config, with alpha/beta rescaled
    # for per-image masks (see ALPHA).
    _C = cfg
    _C.MODEL.KD.PGD = CN()
    # Mask generator (MASK_GENERATOR_REGISTRY) giving the key-region maps from the teacher.
    _C.MODEL.KD.PGD.MASK_GENERATOR = "PGWMaskGenerator"
    # K: candidates per object, taken jointly over all FPN levels (30; ATSS configs use 9).
    _C.MODEL.KD.PGD.TOPK = 30
    # xi of the quality p^(1-xi) * IoU^xi, for the classification and the regression maps.
    _C.MODEL.KD.PGD.XI_CLS = 0.8
    _C.MODEL.KD.PGD.XI_REG = 0.6
    # epsilon (px^2) added to the diagonal of the Gaussian's covariance (d2kd default; 0 with
    # EMULATE_COV_NOISE as in the reference).
    _C.MODEL.KD.PGD.COV_EPS = 1.0
    # Temperature tau of the spatial and per-pixel channel attentions (0.4 for AutoAssign).
    _C.MODEL.KD.PGD.TAU = 0.8
    # Weight of the foreground term. The reference's 0.04 was tuned with the batch-mixing bug,
    # which multiplies the fg/bg dose by the images per GPU (4): with per-image masks d2kd uses
    # 4 x 0.04 = 0.16 to keep the reference magnitude (spec 2.14-C).
    _C.MODEL.KD.PGD.ALPHA = 0.16
    # Weight of the background term (reference 0.02 at 4 images/GPU -> 0.08).
    _C.MODEL.KD.PGD.BETA = 0.08
    # Weight of the regression feature term (reference value, unaffected by the bug).
    _C.MODEL.KD.PGD.GAMMA = 0.064
    # Weight of the attention-imitation terms of both towers.
    _C.MODEL.KD.PGD.DELTA = 0.0008
    # Per-level multipliers of the classification fg/bg terms (not delta), P3 first.
    _C.MODEL.KD.PGD.LEVEL_WEIGHTS = [1.0, 1.25, 1.5, 1.75, 2.0]
    # Taps of the distilled tower features: the output of the first (conv, norm, act) block of
    # each tower, per level. "" finds it (first activation of head.cls_subnet / head.bbox_subnet).
    _C.MODEL.KD.PGD.CLS_TAP = ""
    _C.MODEL.KD.PGD.REG_TAP = ""
    # Student-side adapter when tower widths differ ("auto": 1x1 conv then, else identity).
    _C.MODEL.KD.PGD.ADAPTER = "auto"
    # Reproduction switches for the reference code's behaviour (spec 2.14); all off in d2kd.
    # A: top-K on the quality before the inside-box indicator (outside candidates shape the fit).
    _C.MODEL.KD.PGD.EMULATE_TOPK_BEFORE_INSIDE = False
    # B: inside-box tests read points as (y, x) (the reference FCOS/AutoAssign code).
    _C.MODEL.KD.PGD.EMULATE_AXIS_SWAP = False
    # C: each image's classification masks summed over all images of the batch.
    _C.MODEL.KD.PGD.EMULATE_BATCH_MASK_MIXING = False
    # I: U(-0.05, 0.05) px jitter in the Gaussian fit and no epsilon (COV_EPS ignored).
    _C.MODEL.KD.PGD.EMULATE_COV_NOISE = False


def _add_fgd_config(cfg: CN) -> None:
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


def _add_mobilenetv2_config(cfg: CN) -> None:
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
