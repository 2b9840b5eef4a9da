"""The framework side of mask generators: the registry and shared ground-truth helpers. The
generators themselves live in their method's folder in ``d2kd.methods``."""

from .ground_truth import pad_gt_instances
from .registry import MASK_GENERATOR_REGISTRY, build_mask_generator

__all__ = ["MASK_GENERATOR_REGISTRY", "build_mask_generator", "pad_gt_instances"]
