"""Config nodes of the dense detectors d2kd registers for yacs: ``MODEL.{FCOS, ATSS, GFL}``."""

from detectron2.config import CfgNode as CN


def add_fcos_config(cfg: CN) -> None:
    """Add ``cfg.MODEL.FCOS`` (Detectron2's FCOS has no yacs keys of its own)."""
    _C = cfg
    _C.MODEL.FCOS = CN()
    _C.MODEL.FCOS.NUM_CLASSES = 80
    _C.MODEL.FCOS.IN_FEATURES = ["p3", "p4", "p5", "p6", "p7"]
    # Convolutions in each tower, and their norm ("GN" trains stably from scratch).
    _C.MODEL.FCOS.NUM_CONVS = 4
    _C.MODEL.FCOS.HEAD_NORM = "GN"
    _C.MODEL.FCOS.PRIOR_PROB = 0.01
    _C.MODEL.FCOS.FOCAL_LOSS_ALPHA = 0.25
    _C.MODEL.FCOS.FOCAL_LOSS_GAMMA = 2.0
    # Radius (in strides) around a box centre inside which points are positives.
    _C.MODEL.FCOS.CENTER_SAMPLING_RADIUS = 1.5
    _C.MODEL.FCOS.SCORE_THRESH_TEST = 0.05
    _C.MODEL.FCOS.TOPK_CANDIDATES_TEST = 1000
    _C.MODEL.FCOS.NMS_THRESH_TEST = 0.6
    # mmdetection's FCOS (teachers converted from it; defaults: Detectron2's FCOS).
    # A learnable scale per level on the box regression (mmdet, the FCOS paper; Detectron2: none).
    _C.MODEL.FCOS.HEAD_SCALES = False
    # Centerness branch on the box tower (True: Detectron2, mmdet centerness_on_reg=True) or on the
    # classification tower (False: mmdet's default FCOS).
    _C.MODEL.FCOS.CENTERNESS_ON_REG = True
    # Box regression: "relu" (distances relu(x) x stride: Detectron2, mmdet norm_on_bbox=True) or
    # "exp" (distances exp(x) in pixels: mmdet's default FCOS).
    _C.MODEL.FCOS.BOX_PARAM = "relu"
    # Test-time scores: "sqrt" (Detectron2: sqrt(cls x centerness) thresholded, ranked, returned)
    # or "mmdet" (threshold and top-k on the class score, NMS on and output of cls x centerness).
    _C.MODEL.FCOS.TEST_SCORE_MODE = "sqrt"


def add_atss_config(cfg: CN) -> None:
    """Add ``cfg.MODEL.ATSS``: hyper-parameters as in the ATSS paper (Zhang et al., CVPR 2020)."""
    _C = cfg
    _C.MODEL.ATSS = CN()
    _C.MODEL.ATSS.NUM_CLASSES = 80
    _C.MODEL.ATSS.IN_FEATURES = ["p3", "p4", "p5", "p6", "p7"]
    _C.MODEL.ATSS.NUM_CONVS = 4
    _C.MODEL.ATSS.HEAD_NORM = "GN"
    _C.MODEL.ATSS.PRIOR_PROB = 0.01
    # One square anchor per location whose side is ANCHOR_SCALE x stride.
    _C.MODEL.ATSS.ANCHOR_SCALE = 8.0
    # Candidates per level (closest anchor centres to each box centre).
    _C.MODEL.ATSS.TOPK = 9
    _C.MODEL.ATSS.FOCAL_LOSS_ALPHA = 0.25
    _C.MODEL.ATSS.FOCAL_LOSS_GAMMA = 2.0
    # Box coder weights: (1/0.1, 1/0.1, 1/0.2, 1/0.2), i.e. mmdet's DeltaXYWH stds.
    _C.MODEL.ATSS.BBOX_REG_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
    _C.MODEL.ATSS.GIOU_LOSS_WEIGHT = 2.0
    # Test-time scores: "sqrt" (sqrt(cls * centerness) thresholded, ranked and returned, as the
    # official ATSS code) or "mmdet" (threshold and top-k on the class score alone, NMS on and
    # output of cls * centerness, as mmdetection's ATSSHead).
    _C.MODEL.ATSS.TEST_SCORE_MODE = "sqrt"
    _C.MODEL.ATSS.SCORE_THRESH_TEST = 0.05
    _C.MODEL.ATSS.TOPK_CANDIDATES_TEST = 1000
    _C.MODEL.ATSS.NMS_THRESH_TEST = 0.6


def add_gfl_config(cfg: CN) -> None:
    """
    Add ``cfg.MODEL.GFL``: Generalized Focal Loss (Li et al., NeurIPS 2020) on an ATSS-assigned,
    one-anchor-per-location head; defaults are mmdet's ``gfl_r50_fpn_1x_coco``.
    """
    _C = cfg
    _C.MODEL.GFL = CN()
    _C.MODEL.GFL.NUM_CLASSES = 80
    _C.MODEL.GFL.IN_FEATURES = ["p3", "p4", "p5", "p6", "p7"]
    _C.MODEL.GFL.NUM_CONVS = 4
    _C.MODEL.GFL.HEAD_NORM = "GN"
    _C.MODEL.GFL.PRIOR_PROB = 0.01
    # One square anchor per location whose side is ANCHOR_SCALE x stride (ATSS assignment only).
    _C.MODEL.GFL.ANCHOR_SCALE = 8.0
    # Candidates per level of the ATSS assignment.
    _C.MODEL.GFL.TOPK = 9
    # Largest distance (in strides) of a box side: REG_MAX + 1 bins per side.
    _C.MODEL.GFL.REG_MAX = 16
    # Exponent of the Quality Focal Loss modulating factor |y - sigma|.
    _C.MODEL.GFL.QFL_BETA = 2.0
    _C.MODEL.GFL.QFL_LOSS_WEIGHT = 1.0
    _C.MODEL.GFL.GIOU_LOSS_WEIGHT = 2.0
    _C.MODEL.GFL.DFL_LOSS_WEIGHT = 0.25
    _C.MODEL.GFL.SCORE_THRESH_TEST = 0.05
    _C.MODEL.GFL.TOPK_CANDIDATES_TEST = 1000
    _C.MODEL.GFL.NMS_THRESH_TEST = 0.6
