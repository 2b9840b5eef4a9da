"""Datasets. Importing this package registers d2kd's datasets (see :mod:`d2kd.data.builtin`)."""

from . import builtin  # noqa: F401  (registration side effect)
from .builtin import register_shapes, shapes_root
from .crowdhuman import CROWDHUMAN_CLASSES, load_crowdhuman, register_crowdhuman
from .detr_mapper import DetrDatasetMapper, build_train_mapper
from .odgt import read_odgt
from .shapes import SHAPE_CLASSES, ensure_shapes_dataset, generate_split

__all__ = [
    "CROWDHUMAN_CLASSES",
    "load_crowdhuman",
    "register_crowdhuman",
    "read_odgt",
    "DetrDatasetMapper",
    "build_train_mapper",
    "register_shapes",
    "shapes_root",
    "SHAPE_CLASSES",
    "ensure_shapes_dataset",
    "generate_split",
]
