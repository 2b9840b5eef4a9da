"""
Converting checkpoints of other frameworks into d2kd models' state dicts.

``registry.py`` holds the framework-neutral part (pure PyTorch); one module per source format
registers its converter on import.
"""

from . import mmdet  # noqa: F401  (registers "mmdet")
from .registry import (
    CONVERTERS,
    CheckpointConverter,
    ConversionResult,
    detect_format,
    get_converter,
    register_converter,
)

__all__ = [
    "CONVERTERS",
    "CheckpointConverter",
    "ConversionResult",
    "detect_format",
    "get_converter",
    "register_converter",
]
