"""The registry of mask generators (which locations a feature loss attends to)."""

from detectron2.utils.registry import Registry

MASK_GENERATOR_REGISTRY = Registry("KD_MASK_GENERATOR")
MASK_GENERATOR_REGISTRY.__doc__ = """
Registry for mask generators. A generator is an ``nn.Module`` built as ``cls(cfg, student,
teacher)``
(``@configurable``); its ``forward(record: DistillRecord, level_shapes, strides)`` returns, per
level, a float mask of shape (N, 1, H_l, W_l) (or a dict of such lists when it makes several
masks, e.g. foreground and background). Masks of one image never depend on another image.
"""

__all__ = ["MASK_GENERATOR_REGISTRY", "build_mask_generator"]


def build_mask_generator(name: str, cfg, student, teacher):
    """Build the mask generator registered as ``name``; unknown names list the valid ones."""
    if name not in MASK_GENERATOR_REGISTRY:
        raise KeyError(
            f'unknown mask generator "{name}"; registered: '
            f"{sorted(k for k, _ in MASK_GENERATOR_REGISTRY)}"
        )
    return MASK_GENERATOR_REGISTRY.get(name)(cfg, student, teacher)
