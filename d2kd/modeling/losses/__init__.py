from .base import DistillLoss
from .registry import DISTILL_LOSS_REGISTRY, build_distill_losses

# Imported for their registration side effect:
from . import bckd, detrdistill, feature_mse, fgd, ld, pgd  # noqa: F401 isort:skip

__all__ = ["DistillLoss", "DISTILL_LOSS_REGISTRY", "build_distill_losses"]
