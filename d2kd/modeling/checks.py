"""Build-time checks that a teacher and a student can be distilled together."""

from typing import Dict, List, Tuple

from detectron2.layers import ShapeSpec
from torch import nn

from .recorder import resolve_module

__all__ = [
    "feature_shapes",
    "paired_feature_shapes",
    "num_classes_of",
    "check_same_num_classes",
    "check_same_strides",
    "check_dense_detector",
    "two_stage_losses",
    "check_kd_config",
    "reads_teacher_class_scores",
    "model_num_classes",
    "num_classes_key",
]

# What a dense (one-stage) detector offers that head-based losses read.
DENSE_HEAD_ATTRS = ("head", "head_in_features", "anchor_generator")


def two_stage_losses() -> List[str]:
    """The registered losses that work with two-stage models (``DistillLoss.TWO_STAGE``)."""
    from .losses.registry import DISTILL_LOSS_REGISTRY  # here: the losses import this module

    return sorted(name for name, cls in DISTILL_LOSS_REGISTRY if getattr(cls, "TWO_STAGE", False))


def feature_shapes(
    model: nn.Module, module: str, keys: List[str], which: str
) -> Dict[str, ShapeSpec]:
    """
    ``output_shape()`` of ``model``'s sub-module ``module`` restricted to ``keys``.

    Raises:
        KeyError: when the module is missing; ValueError: when it lacks one of the keys.
    """
    sub = resolve_module(model, module)
    if not hasattr(sub, "output_shape"):
        raise TypeError(f'{which} module "{module}" ({type(sub).__name__}) has no output_shape()')
    shapes = sub.output_shape()
    missing = [k for k in keys if k not in shapes]
    if missing:
        raise ValueError(
            f'{which} module "{module}" has no features {missing}; it has {sorted(shapes)}'
        )
    return {k: shapes[k] for k in keys}


def paired_feature_shapes(
    student: nn.Module, teacher: nn.Module, node, key_name: str
) -> Tuple[Dict[str, ShapeSpec], Dict[str, ShapeSpec]]:
    """
    Shapes of the features ``node.KEYS`` of ``node.STUDENT_MODULE`` / ``node.TEACHER_MODULE``
    (a config node such as ``MODEL.KD.FGD``), checking that each key has the same stride on
    both sides. ``key_name`` (e.g. "MODEL.KD.FGD.KEYS") names the key in errors.

    Returns:
        (student_shapes, teacher_shapes): key -> ShapeSpec.
    """
    keys = list(node.KEYS)
    s_shapes = feature_shapes(student, node.STUDENT_MODULE, keys, "student")
    t_shapes = feature_shapes(teacher, node.TEACHER_MODULE, keys, "teacher")
    for k in keys:
        if s_shapes[k].stride != t_shapes[k].stride:
            raise ValueError(
                f"{key_name}: feature '{k}' has stride {s_shapes[k].stride} in the student but "
                f"{t_shapes[k].stride} in the teacher; strides must be equal"
            )
    return s_shapes, t_shapes


def check_dense_detector(model: nn.Module, which: str, loss: str) -> None:
    """
    Raise a ValueError naming ``loss`` and what is missing when ``model`` (the "teacher" or the
    "student") is not a dense detector, e.g. a two-stage GeneralizedRCNN (Faster R-CNN), whose
    predictions come from an RPN and per-proposal ROI heads rather than one head on every level.
    """
    missing = [a for a in DENSE_HEAD_ATTRS if not hasattr(model, a)]
    if not missing:
        return
    kind = " (a two-stage detector)" if hasattr(model, "roi_heads") else ""
    raise ValueError(
        f"{loss} reads a dense (one-stage) detector's head on every FPN level, but the {which} "
        f"({type(model).__name__}{kind}) has no {', '.join(missing)}. Use a dense detector "
        f"(RetinaNet, FCOS, ATSS, GFL) as the {which}; two-stage models work with the losses "
        f"that need only FPN features and ground truth ({', '.join(two_stage_losses())})"
    )


def num_classes_of(model: nn.Module, which: str = "model", loss: str = "this loss") -> int:
    """The number of foreground classes of a dense detector (``num_classes`` attribute)."""
    n = getattr(model, "num_classes", None)
    if n is None:
        check_dense_detector(model, which, loss)
        raise TypeError(f"{type(model).__name__} has no num_classes attribute")
    return int(n)


def check_same_num_classes(student: nn.Module, teacher: nn.Module, loss: str) -> int:
    """Raise a ValueError naming ``loss`` when teacher and student predict different classes."""
    s, t = num_classes_of(student, "student", loss), num_classes_of(teacher, "teacher", loss)
    if s != t:
        raise ValueError(
            f"{loss} needs teacher and student to predict the same classes, but the teacher has "
            f"{t} classes and the student {s}: check NUM_CLASSES in both configs"
        )
    return s


def head_strides(model: nn.Module, which: str = "model", loss: str = "this loss") -> List[int]:
    """Strides of the feature levels a dense detector's head reads."""
    check_dense_detector(model, which, loss)
    shapes = model.backbone.output_shape()
    return [shapes[f].stride for f in model.head_in_features]


def check_same_strides(student: nn.Module, teacher: nn.Module, loss: str) -> List[int]:
    """Raise a ValueError naming ``loss`` when the heads read levels of different strides."""
    s, t = head_strides(student, "student", loss), head_strides(teacher, "teacher", loss)
    if s != t:
        raise ValueError(
            f"{loss} needs the same head levels in teacher and student, but the teacher's strides "
            f"are {t} and the student's {s}: check the IN_FEATURES of both heads"
        )
    return s


def check_kd_config(cfg) -> None:
    """
    Build-time sanity of ``cfg.MODEL.KD`` for a ``DistillDetector``: at least one loss, no
    negative weight (a negative weight pushes the student away from the teacher).

    Raises:
        ValueError naming the key.
    """
    kd = cfg.MODEL.KD
    if not kd.LOSSES:
        raise ValueError(
            "MODEL.KD.LOSSES is empty: DistillDetector would run the teacher every step for no "
            f"distillation. To train the plain student, set MODEL.META_ARCHITECTURE to the "
            f'student\'s own meta-architecture ("{kd.STUDENT_META_ARCHITECTURE}"); to distil, name '
            "at least one loss"
        )
    negative = {n: w for n, w in zip(kd.LOSSES, kd.LOSS_WEIGHTS) if w < 0}
    if negative:
        raise ValueError(
            f"MODEL.KD.LOSS_WEIGHTS: negative weights {negative}; weights must be >= 0 (0 turns a "
            "loss off)"
        )


# Losses that read the teacher's class scores (directly or through a prediction-guided mask),
# so the teacher's classes must be the dataset's. A loss class may also declare it with a
# ``reads_teacher_class_scores`` attribute.
_CLASS_SCORE_LOSSES = (
    "BCKDLoss",
    "LDLoss",
    "DETRLogitsDistillLoss",
    "DETRFeatureDistillLoss",  # query quality = teacher class probability x IoU
    "DETRQueryPriorLoss",  # its "teacher" assignment matches the teacher's scores to the GT
    "DETRQueryContrastLoss",  # pairs from the logits matching
    "CrossKDLoss",
)
# Mask generators computed from the teacher's classification scores.
_CLASS_SCORE_MASKS = ("PGWMaskGenerator",)


def reads_teacher_class_scores(cfg) -> List[str]:
    """Names of the configured losses that read the teacher's class scores."""
    from .losses import DISTILL_LOSS_REGISTRY

    out = []
    for name in cfg.MODEL.KD.LOSSES:
        declared = None
        if name in DISTILL_LOSS_REGISTRY:
            declared = getattr(DISTILL_LOSS_REGISTRY.get(name), "reads_teacher_class_scores", None)
        node = (
            cfg.MODEL.KD.get(name[: -len("Loss")].upper(), None) if name.endswith("Loss") else None
        )
        mask = node.get("MASK_GENERATOR", None) if node is not None else None
        if declared or (
            declared is None and (name in _CLASS_SCORE_LOSSES or mask in _CLASS_SCORE_MASKS)
        ):
            out.append(name)
    return out


# The config key of each detector's class count (the first match in the model's class hierarchy).
NUM_CLASSES_KEYS = {
    "RetinaNet": "MODEL.RETINANET.NUM_CLASSES",
    "FCOS": "MODEL.FCOS.NUM_CLASSES",
    "ATSS": "MODEL.ATSS.NUM_CLASSES",
    "GFL": "MODEL.GFL.NUM_CLASSES",
    "GeneralizedRCNN": "MODEL.ROI_HEADS.NUM_CLASSES",
    "DeformableDETR": "MODEL.DEFORMABLE_DETR.NUM_CLASSES",
}


def num_classes_key(model: nn.Module) -> str:
    """The config key that sets ``model``'s class count, e.g. "MODEL.RETINANET.NUM_CLASSES"
    (for an unknown detector, a description naming its config node's NUM_CLASSES)."""
    for cls in type(model).__mro__:
        if cls.__name__ in NUM_CLASSES_KEYS:
            return NUM_CLASSES_KEYS[cls.__name__]
    return f"the NUM_CLASSES key of the {type(model).__name__} config node"


def model_num_classes(model: nn.Module):
    """Foreground classes of a detector (``num_classes`` or ``roi_heads.num_classes``), or None."""
    n = getattr(model, "num_classes", None)
    if n is None:
        n = getattr(getattr(model, "roi_heads", None), "num_classes", None)
    return None if n is None else int(n)
