"""Config node of PGD (``MODEL.KD.PGD``); the method is in ``d2kd/methods/pgd``."""

from detectron2.config import CfgNode as CN

__all__ = ["add_pgd_config"]


def add_pgd_config(cfg: CN) -> None:
    """Add ``cfg.MODEL.KD.PGD`` in place (``MODEL.KD`` must exist)."""
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
    # D: GFL teacher boxes decoded with a per-image stride: image k's distances times the stride
    # of level k, on every level (GFL teachers only; at most one image per level and GPU).
    _C.MODEL.KD.PGD.EMULATE_GFL_STRIDE_BUG = False
    # I: U(-0.05, 0.05) px jitter in the Gaussian fit and no epsilon (COV_EPS ignored).
    _C.MODEL.KD.PGD.EMULATE_COV_NOISE = False
    # FCOS teachers only: score the whole padded batch and count its padding as background, as
    # the reference FCOS code (d2kd, like the reference anchor heads: an image's own extent
    # rounded up to the size divisibility only; background 0 on the rest of the batch padding).
    _C.MODEL.KD.PGD.EMULATE_FCOS_PADDING = False
