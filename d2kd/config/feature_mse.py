"""Config node of feature mimicking (``MODEL.KD.FEATURE_MSE``); the method is in
``d2kd/methods/feature_mse``."""

from detectron2.config import CfgNode as CN

__all__ = ["add_feature_mse_config"]


def add_feature_mse_config(cfg: CN) -> None:
    """Add ``cfg.MODEL.KD.FEATURE_MSE`` in place (``MODEL.KD`` must exist)."""
    _C = cfg
    # Feature mimicking (MSE) on named feature maps: the simplest distillation loss.
    _C.MODEL.KD.FEATURE_MSE = CN()
    # Module whose output holds the features (a dict such as the FPN's {"p3": ...}).
    _C.MODEL.KD.FEATURE_MSE.STUDENT_MODULE = "backbone"
    _C.MODEL.KD.FEATURE_MSE.TEACHER_MODULE = "backbone"
    # Keys of the feature dict to distil; strides must match between teacher and student.
    _C.MODEL.KD.FEATURE_MSE.KEYS = ["p3", "p4", "p5", "p6", "p7"]
    # Channel adapter on the student side: "auto" (1x1 conv when channels differ) or an
    # ADAPTER_REGISTRY name ("Identity", "Conv1x1").
    _C.MODEL.KD.FEATURE_MSE.ADAPTER = "auto"
