"""The registry of distillation losses and its builder."""

from typing import Dict

from detectron2.utils.registry import Registry
from torch import nn

DISTILL_LOSS_REGISTRY = Registry("DISTILL_LOSS")
DISTILL_LOSS_REGISTRY.__doc__ = """
Registry for distillation losses (subclasses of :class:`d2kd.modeling.losses.DistillLoss`).

A registered class is built as ``cls(cfg, student, teacher)`` (``@configurable`` with a
``from_config(cls, cfg, student, teacher)``). Its ``forward(record: DistillRecord)`` returns a
dict of *unweighted-by-the-meta-architecture* loss terms whose names start with ``loss_kd_``;
the meta-architecture multiplies every term by the loss's entry of ``MODEL.KD.LOSS_WEIGHTS``
and the warm-up factor.
"""

__all__ = ["DISTILL_LOSS_REGISTRY", "build_distill_losses"]


def build_distill_losses(cfg, student: nn.Module, teacher: nn.Module) -> Dict[str, nn.Module]:
    """
    Build every loss named in ``cfg.MODEL.KD.LOSSES``.

    Returns:
        dict: loss name -> module, in config order.
    Raises:
        ValueError: when ``LOSSES`` and ``LOSS_WEIGHTS`` differ in length or a name is repeated.
        KeyError: for a name that is not registered, listing the registered names.
    """
    names = list(cfg.MODEL.KD.LOSSES)
    if len(names) != len(cfg.MODEL.KD.LOSS_WEIGHTS):
        raise ValueError(
            f"MODEL.KD.LOSSES has {len(names)} entries but MODEL.KD.LOSS_WEIGHTS has "
            f"{len(cfg.MODEL.KD.LOSS_WEIGHTS)}: give one weight per loss"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"MODEL.KD.LOSSES names a loss twice: {names}")
    losses = {}
    for name in names:
        if name not in DISTILL_LOSS_REGISTRY:
            raise KeyError(
                f'MODEL.KD.LOSSES: unknown distillation loss "{name}". '
                f"Registered: {sorted(k for k, _ in DISTILL_LOSS_REGISTRY)}"
            )
        losses[name] = DISTILL_LOSS_REGISTRY.get(name)(cfg, student, teacher)
    return losses
