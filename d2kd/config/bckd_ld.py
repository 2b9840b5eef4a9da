"""Config nodes of the logit-distillation methods BCKD (``MODEL.KD.BCKD``) and LD (``MODEL.KD.LD``)."""

from detectron2.config import CfgNode as CN


def add_bckd_ld_config(cfg: CN) -> None:
    """Add ``cfg.MODEL.KD.BCKD`` and ``cfg.MODEL.KD.LD`` in place (``MODEL.KD`` must exist)."""
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
    # Give priors on batch padding (outside an image's own pixels) weight 0, as mmdet's valid flags.
    _C.MODEL.KD.BCKD.IGNORE_PADDING = True

    # LD (CVPR 2022). Every term has its own weight here; 0 switches a term off (not computed).
    _C.MODEL.KD.LD = CN()
    # Main LD: KL of the box-side distributions on the student's positives, weighted by the
    # student's max class score (official weight 0.25, constant divisor 4).
    _C.MODEL.KD.LD.MAIN_WEIGHT = 0.25
    _C.MODEL.KD.LD.MAIN_AVG_FACTOR = 4.0
    # VLR LD: the same KL on the valuable localization region, weighted by the anchor's IoU
    # (official GFL: weight 0.25, divisor 16; the official ATSS head uses divisor 4).
    _C.MODEL.KD.LD.VLR_WEIGHT = 0.25
    _C.MODEL.KD.LD.VLR_AVG_FACTOR = 16.0
    # Main KD: softmax KL of the class logits on the positives, mean per level (official 10).
    # The KL is averaged over the K classes (official), so the dose per summed KL is weight / K:
    # scale the weight by K / 80 to keep COCO's dose on a dataset of K classes (shapes: 0.5).
    _C.MODEL.KD.LD.CLS_WEIGHT = 10.0
    # Temperatures of the localization KL and of the classification KL.
    _C.MODEL.KD.LD.TEMPERATURE = 10.0
    _C.MODEL.KD.LD.CLS_TEMPERATURE = 2.0
    # The VLR: anchors with VLR_ALPHA * gamma <= DIoU < gamma, gamma the ATSS threshold of each
    # object computed over VLR_TOPK candidates per level.
    _C.MODEL.KD.LD.VLR_ALPHA = 0.25
    _C.MODEL.KD.LD.VLR_TOPK = 9
    # "official": LD's IoF-based DIoU (intersection / anchor area - rho^2/c^2); "textbook": IoU-based.
    _C.MODEL.KD.LD.VLR_DIOU = "official"
    # Dose: the official main/VLR LD are per-GPU sums (they grow with images per GPU). d2kd
    # multiplies them by DOSE_REFERENCE_IMAGES / images-per-GPU, reproducing the official
    # magnitude at the reference 2 images per GPU for any batch size. 0: raw per-GPU sums (official).
    _C.MODEL.KD.LD.DOSE_REFERENCE_IMAGES = 2
    # Give priors on batch padding weight 0 (official valid flags).
    _C.MODEL.KD.LD.IGNORE_PADDING = True
