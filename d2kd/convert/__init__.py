"""
Converting checkpoints of other frameworks into d2kd models' state dicts.

``registry.py`` holds the framework-neutral part (pure PyTorch); one module per source format
registers its converter on import.
"""

from . import deformable_detr  # noqa: F401  (registers "deformable-detr")
from . import mmdet  # noqa: F401  (registers "mmdet")
from . import torchvision  # noqa: F401  (registers "torchvision")
from .registry import (
    CONVERTERS,
    CheckpointConverter,
    ConversionResult,
    detect_format,
    get_converter,
    inert_classes_of,
    register_converter,
)

__all__ = [
    "CONVERTERS",
    "CheckpointConverter",
    "ConversionResult",
    "detect_format",
    "get_converter",
    "inert_classes_of",
    "register_converter",
]
