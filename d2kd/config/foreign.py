"""
Model options that make a d2kd model compute what another framework's model computes (for
teachers converted from mmdetection, torchvision, ...; see d2kd/convert and configs/teachers).
Every default is Detectron2's behaviour, so configs that do not set them are unchanged.
"""

from detectron2.config import CfgNode as CN


def add_foreign_model_config(cfg: CN) -> None:
    """Add ``MODEL.DENSE_TEST``, ``MODEL.FCOS.POINT_OFFSET`` and
    ``MODEL.CONVERT`` in place (after ``add_fcos_config``)."""
    _C = cfg
    _C.MODEL.DENSE_TEST = CN()
    # Clip the decoded boxes to the image before NMS (torchvision, mmdetection) rather than after
    # it (Detectron2). Read by "D2KDRetinaNet" and d2kd's FCOS, ATSS and GFL.
    _C.MODEL.DENSE_TEST.CLIP_BEFORE_NMS = False

    # Where d2kd's FCOS places its point in each cell, in strides: Detectron2's 0.5 (cell centres,
    # (i + 0.5) * stride) or 0.0 (torchvision, mmdetection 2.x FCOS: i * stride).
    _C.MODEL.FCOS.POINT_OFFSET = 0.5

    _C.MODEL.CONVERT = CN()
    # Epsilon of the frozen batch norms of the model a converted checkpoint comes from, when it
    # differs from Detectron2's 1e-5 (torchvision's published COCO RetinaNet v1 weights: 0.0).
    # The converter shifts each running_var by the difference, so the outputs are the source's.
    # Negative: the same as Detectron2's (no shift).
    _C.MODEL.CONVERT.SOURCE_NORM_EPS = -1.0
    # Source class indices the converted classifier keeps, in the d2kd model's class order (its
    # NUM_CLASSES entries); empty: all, in the source's order. torchvision's COCO models predict 91
    # classes indexed by COCO category id; the 80 ids of Detectron2's COCO classes keep those.
    _C.MODEL.CONVERT.SOURCE_CLASSES = []
