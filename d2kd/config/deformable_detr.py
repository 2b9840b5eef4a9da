"""
Config nodes of Deformable DETR (``MODEL.DEFORMABLE_DETR``), its optimizer options (``SOLVER``)
and its dataset mapper (``INPUT``).
"""

from detectron2.config import CfgNode as CN

__all__ = ["add_deformable_detr_config", "add_detr_solver_config"]


def add_deformable_detr_config(cfg: CN) -> None:
    """Add ``cfg.MODEL.DEFORMABLE_DETR`` (defaults: Deformable DETR's official R50 recipe)."""
    _C = cfg
    _C.MODEL.DEFORMABLE_DETR = CN()
    _C.MODEL.DEFORMABLE_DETR.NUM_CLASSES = 80
    # Backbone outputs projected to the first levels (strides 8, 16, 32 on a ResNet).
    _C.MODEL.DEFORMABLE_DETR.IN_FEATURES = ["res3", "res4", "res5"]
    # Levels seen by the transformer; levels beyond IN_FEATURES come from stride-2 3x3 convs.
    _C.MODEL.DEFORMABLE_DETR.NUM_FEATURE_LEVELS = 4
    # Channels of the transformer (d).
    _C.MODEL.DEFORMABLE_DETR.HIDDEN_DIM = 256
    # Attention heads of every attention layer.
    _C.MODEL.DEFORMABLE_DETR.NHEADS = 8
    # Encoder layers.
    _C.MODEL.DEFORMABLE_DETR.ENC_LAYERS = 6
    # Decoder layers (= decoder stages with a prediction each).
    _C.MODEL.DEFORMABLE_DETR.DEC_LAYERS = 6
    # Width of the feed-forward layers.
    _C.MODEL.DEFORMABLE_DETR.DIM_FEEDFORWARD = 1024
    # Dropout in the transformer.
    _C.MODEL.DEFORMABLE_DETR.DROPOUT = 0.1
    # Sampling points per head and level in encoder / decoder deformable attention.
    _C.MODEL.DEFORMABLE_DETR.ENC_N_POINTS = 4
    _C.MODEL.DEFORMABLE_DETR.DEC_N_POINTS = 4
    # Object queries.
    _C.MODEL.DEFORMABLE_DETR.NUM_QUERIES = 300
    # Iterative box refinement (each decoder layer refines the previous layer's boxes).
    _C.MODEL.DEFORMABLE_DETR.WITH_BOX_REFINE = False
    # Two-stage Deformable DETR (needs WITH_BOX_REFINE, as the official code): the NUM_QUERIES
    # best encoder proposals (one per memory position, scored by class 0 of an extra class head,
    # boxed by an extra box head) give each image its queries and reference boxes; trained with
    # an extra set loss on the proposals (suffix _enc).
    _C.MODEL.DEFORMABLE_DETR.TWO_STAGE = False
    # Initial foreground probability of the classifier (bias prior).
    _C.MODEL.DEFORMABLE_DETR.PRIOR_PROB = 0.01
    # Hungarian matching cost weights: focal class cost, L1 (cxcywh), -GIoU.
    _C.MODEL.DEFORMABLE_DETR.MATCHER = CN()
    _C.MODEL.DEFORMABLE_DETR.MATCHER.COST_CLASS = 2.0
    _C.MODEL.DEFORMABLE_DETR.MATCHER.COST_BBOX = 5.0
    _C.MODEL.DEFORMABLE_DETR.MATCHER.COST_GIOU = 2.0
    # Loss weights and focal-loss parameters.
    _C.MODEL.DEFORMABLE_DETR.LOSS = CN()
    _C.MODEL.DEFORMABLE_DETR.LOSS.CLS_WEIGHT = 2.0
    _C.MODEL.DEFORMABLE_DETR.LOSS.L1_WEIGHT = 5.0
    _C.MODEL.DEFORMABLE_DETR.LOSS.GIOU_WEIGHT = 2.0
    _C.MODEL.DEFORMABLE_DETR.LOSS.FOCAL_ALPHA = 0.25
    _C.MODEL.DEFORMABLE_DETR.LOSS.FOCAL_GAMMA = 2.0
    # Auxiliary losses on every decoder stage (each re-matched), suffixed _0, _1, ...
    _C.MODEL.DEFORMABLE_DETR.LOSS.AUX_LOSS = True


def add_detr_solver_config(cfg: CN) -> None:
    """Optimizer and data options DETRs need (read by ``d2kd.solver.build_optimizer`` and
    ``d2kd.data.build_train_mapper``); the defaults leave other detectors unchanged."""
    _C = cfg
    # "SGD" (Detectron2's optimizer) or "ADAMW".
    _C.SOLVER.OPTIMIZER = "SGD"
    # Learning-rate factor of parameters under a "backbone" module (Deformable DETR: 0.1).
    _C.SOLVER.BACKBONE_MULTIPLIER = 1.0
    # Learning-rate factor of parameters whose name contains one of LINEAR_PROJ_NAMES
    # (Deformable DETR: 0.1 for the sampling offsets and the reference-point projection).
    _C.SOLVER.LINEAR_PROJ_MULTIPLIER = 1.0
    _C.SOLVER.LINEAR_PROJ_NAMES = ["sampling_offsets", "reference_points"]
    # Train-time dataset mapper: "DatasetMapper" (Detectron2's) or "DetrDatasetMapper" (with
    # INPUT.CROP.ENABLED, half of the images are resized to DETR_CROP_RESIZE and cropped first).
    _C.INPUT.DATASET_MAPPER_NAME = "DatasetMapper"
    # Shorter-side sizes of DETR's pre-crop resize.
    _C.INPUT.DETR_CROP_RESIZE = (400, 500, 600)
