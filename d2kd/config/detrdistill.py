"""Config node of DETRDistill (``MODEL.KD.DETRDISTILL``); the method is in
``d2kd/methods/detrdistill``."""

from detectron2.config import CfgNode as CN

__all__ = ["add_detrdistill_config"]


def add_detrdistill_config(cfg: CN) -> None:
    """
    Add ``cfg.MODEL.KD.DETRDISTILL`` (needs ``MODEL.KD``): the settings of DETRDistill's four
    losses. Which of them run, and with which weight, is ``MODEL.KD.LOSSES`` /
    ``MODEL.KD.LOSS_WEIGHTS`` (the paper setting: ``DETRLogitsDistillLoss``,
    ``DETRFeatureDistillLoss``, ``DETRQueryPriorLoss`` at 1.0 each; the official code adds
    ``DETRQueryContrastLoss`` at 0.2).
    """
    _C = cfg
    _C.MODEL.KD.DETRDISTILL = CN()
    # Teacher stage of each student stage, for the logits, query-prior and contrastive losses:
    # "uniform" (stage by stage, spread when the depths differ) or "last" (the teacher's final
    # stage for every student stage).
    _C.MODEL.KD.DETRDISTILL.STAGE_MAP = "uniform"
    # Hungarian-matching logits distillation at every decoder stage (DETRLogitsDistillLoss).
    # Weights of soft-target BCE, L1 and GIoU, in the matching cost and in the loss. The
    # contrastive loss pairs queries with the same matching cost.
    _C.MODEL.KD.DETRDISTILL.LOGITS = CN()
    _C.MODEL.KD.DETRDISTILL.LOGITS.CLS_WEIGHT = 1.0
    _C.MODEL.KD.DETRDISTILL.LOGITS.L1_WEIGHT = 5.0
    _C.MODEL.KD.DETRDISTILL.LOGITS.GIOU_WEIGHT = 2.0
    # Target-aware feature distillation on the multi-scale features (DETRFeatureDistillLoss).
    _C.MODEL.KD.DETRDISTILL.FEAT = CN()
    # (query, class) entries of the teacher's probabilities that build the mask, per stage.
    _C.MODEL.KD.DETRDISTILL.FEAT.TOPK = 100
    # Features distilled: "neck" (the encoder inputs, as the official code) or "memory" (the
    # encoder output, as the paper's text).
    _C.MODEL.KD.DETRDISTILL.FEAT.SOURCE = "neck"
    # Lower bound of the unnormalised mask.
    _C.MODEL.KD.DETRDISTILL.FEAT.MASK_FLOOR = 0.01
    # Weight each query by probability x best IoU with the ground truth (False: probability).
    _C.MODEL.KD.DETRDISTILL.FEAT.USE_IOU_QUALITY = True
    # Student-side channel adapter when the hidden sizes differ ("auto": 1x1 conv if needed).
    _C.MODEL.KD.DETRDISTILL.FEAT.ADAPTER = "auto"
    # Zero the mask on padded pixels (the official code does not).
    _C.MODEL.KD.DETRDISTILL.FEAT.MASK_PADDING = False
    # Query-prior assignment distillation (DETRQueryPriorLoss): the teacher's queries through the
    # student's decoder (DeformableDETR.forward_query_group), an extra training-only group trained
    # with the student's GT losses and weights.
    _C.MODEL.KD.DETRDISTILL.QUERY_PRIOR = CN()
    # Which GT box each query of the group is trained towards, per student stage:
    # "rematch": a fresh Hungarian matching of the group's own predictions to the GT, as the
    #   released code does (the behaviour behind the published numbers);
    # "teacher": the teacher's own Hungarian assignment of its mapped stage, as the paper
    #   describes it (the released code computes it but never uses it).
    _C.MODEL.KD.DETRDISTILL.QUERY_PRIOR.ASSIGNMENT = "rematch"
    # Rerun the student's encoder for this group, as the official code (default: reuse the
    # memory of the student's own forward and rerun only the decoder).
    _C.MODEL.KD.DETRDISTILL.QUERY_PRIOR.RERUN_ENCODER = False
    # Contrastive query term of the official code (not in the paper; DETRQueryContrastLoss, weight
    # 0.2 in the official recipe): InfoNCE between projected student states and their matched
    # teacher states.
    _C.MODEL.KD.DETRDISTILL.CONTRAST = CN()
    _C.MODEL.KD.DETRDISTILL.CONTRAST.TEMP = 0.07
    _C.MODEL.KD.DETRDISTILL.CONTRAST.PROJ_DIM = 512
