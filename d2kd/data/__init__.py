"""
Datasets. Importing this package registers d2kd's datasets (see :mod:`d2kd.data.builtin`).

The generator :mod:`d2kd.data.shapes` needs only numpy and OpenCV, so it imports (and its unit
tests run) where Detectron2 is absent; registration needs Detectron2.
"""

from .shapes import SHAPE_CLASSES, ensure_shapes_dataset, generate_split

__all__ = ["SHAPE_CLASSES", "ensure_shapes_dataset", "generate_split"]

try:
    import detectron2  # noqa: F401
except ImportError:  # pragma: no cover - exercised only where Detectron2 is absent
    pass
else:
    from . import builtin  # noqa: F401  (registration side effect)
    from .builtin import register_shapes, shapes_root
    from .crowdhuman import CROWDHUMAN_CLASSES, load_crowdhuman, register_crowdhuman
    from .detr_mapper import DetrDatasetMapper, ImageReadError, build_train_mapper
    from .odgt import read_odgt

    __all__ += [
        "register_shapes",
        "shapes_root",
        "CROWDHUMAN_CLASSES",
        "load_crowdhuman",
        "register_crowdhuman",
        "read_odgt",
        "DetrDatasetMapper",
        "ImageReadError",
        "build_train_mapper",
    ]
