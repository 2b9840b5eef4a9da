from .registry import MASK_GENERATOR_REGISTRY, build_mask_generator

__all__ = ["MASK_GENERATOR_REGISTRY", "build_mask_generator"]
