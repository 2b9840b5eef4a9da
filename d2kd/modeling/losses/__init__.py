"""The framework side of distillation losses: the base class, the registry, and the dense
teacher/student pairing shared by logit methods. The losses themselves live in ``d2kd.methods``."""

from .base import DistillLoss
from .registry import DISTILL_LOSS_REGISTRY, build_distill_losses

__all__ = ["DistillLoss", "DISTILL_LOSS_REGISTRY", "build_distill_losses"]
