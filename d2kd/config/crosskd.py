"""Config node of CrossKD (``MODEL.KD.CROSSKD``); spec crosskd_pkd.md section 2."""

from detectron2.config import CfgNode as CN

__all__ = ["add_crosskd_config"]


def add_crosskd_config(cfg: CN) -> None:
    """Add ``cfg.MODEL.KD.CROSSKD`` in place (``MODEL.KD`` must exist)."""
    _C = cfg
    _C.MODEL.KD.CROSSKD = CN()
    # k: the student's tower activations after block k (of both branches) go through the rest of
    # the teacher's head (blocks k+1.., predictors, scales). Official: 3 (GFL, RetinaNet, ATSS),
    # 2 (FCOS). 0 feeds the FPN maps to the whole teacher head.
    _C.MODEL.KD.CROSSKD.CROSS_BLOCK = 3
    # Classification KD (quality-focal BCE against the teacher's sigmoid): weight and exponent.
    # Official: 1.0 (GFL, RetinaNet, ATSS), 0.4 (FCOS); beta 1.
    _C.MODEL.KD.CROSSKD.CLS_WEIGHT = 1.0
    _C.MODEL.KD.CROSSKD.CLS_BETA = 1.0
    # Regression KD: "giou" (1 - GIoU on decoded boxes: RetinaNet, ATSS), "iou_log" (-ln IoU:
    # FCOS), "kl" (KL over the distribution bins: GFL), or "auto" (by the student's detector).
    # "giou" decodes both boxes with the student's coder plus the official lower clamp of the
    # width/height deltas (no box under 1/62.5 of its anchor; Detectron2 clamps from above only).
    _C.MODEL.KD.CROSSKD.REG_LOSS = "auto"
    # Official: 1.0 (GFL: config 4.0 over avg_factor 4), 1.0 (RetinaNet, ATSS), 0.75 (FCOS).
    _C.MODEL.KD.CROSSKD.REG_WEIGHT = 1.0
    # Temperature of the GFL KL (the loss is multiplied by T^2).
    _C.MODEL.KD.CROSSKD.KL_TEMPERATURE = 1.0
    # Centerness KD (ATSS only; official 1.0). 0 switches the term off.
    _C.MODEL.KD.CROSSKD.CTR_WEIGHT = 0.0
    # Normaliser of the terms: "auto" (by detector, as the official code: RetinaNet "pos_per_gpu",
    # ATSS/GFL "pos" (all-reduced), FCOS "centerness"), or one of these three explicitly.
    _C.MODEL.KD.CROSSKD.NORMALIZER = "auto"
    # Student-side channel adapter before alignment: "auto" (1x1 conv when the student's tower
    # width differs from the teacher's), "Identity" (refuses a mismatch, as the official code).
    _C.MODEL.KD.CROSSKD.ADAPTER = "auto"
    # Align the student's activations to the teacher's per-channel batch statistics (official:
    # always; False for ablations only).
    _C.MODEL.KD.CROSSKD.ALIGN = True
    # Priors over batch padding get weight 0 (official for RetinaNet/ATSS/GFL; False reproduces
    # the official FCOS, which distils every point).
    _C.MODEL.KD.CROSSKD.IGNORE_PADDING = True
    # RetinaNet: also distil the anchors of the ignore band (official: excluded).
    _C.MODEL.KD.CROSSKD.INCLUDE_IGNORED = False
    # Hold the student's/teacher's block-k output after the ReLU, as the official code does
    # through an in-place ReLU (the published numbers); d2kd holds it before the ReLU (the
    # code's intent).
    _C.MODEL.KD.CROSSKD.EMULATE_POST_RELU_HOLD = False
