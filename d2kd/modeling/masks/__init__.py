from .registry import MASK_GENERATOR_REGISTRY, build_mask_generator

# Imported for their registration side effect:
from . import gt_box, pgw  # noqa: F401 isort:skip

__all__ = ["MASK_GENERATOR_REGISTRY", "build_mask_generator"]
