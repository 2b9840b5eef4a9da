"""Config node of LD (``MODEL.KD.LD``); the method is in ``d2kd/methods/ld``."""

from detectron2.config import CfgNode as CN

__all__ = ["add_ld_config"]


def add_ld_config(cfg: CN) -> None:
    """Add ``cfg.MODEL.KD.LD`` in place (``MODEL.KD`` must exist)."""
    _C = cfg
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
    # "official": LD's IoF-based DIoU (intersection / anchor area - rho^2/c^2); "textbook": IoU-
    # based.
    _C.MODEL.KD.LD.VLR_DIOU = "official"
    # Dose: the official main/VLR LD are per-GPU sums (they grow with images per GPU). d2kd
    # multiplies them by DOSE_REFERENCE_IMAGES / images-per-GPU, reproducing the official
    # magnitude at the reference 2 images per GPU for any batch size. 0: raw per-GPU sums
    # (official).
    _C.MODEL.KD.LD.DOSE_REFERENCE_IMAGES = 2
    # Give priors on batch padding weight 0 (official valid flags: on the image's own extent
    # rounded up to the backbone's size divisibility, mmdet's pad_shape).
    _C.MODEL.KD.LD.IGNORE_PADDING = True
