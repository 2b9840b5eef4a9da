"""
The optimizer of ``train_net.py``: Detectron2's SGD unless the config asks for a DETR recipe.

DETR-family recipes (DETR, Deformable DETR, DETRDistill) use AdamW, a smaller learning rate for
the backbone (``SOLVER.BACKBONE_MULTIPLIER``) and for the deformable attention's sampling
offsets and reference points (``SOLVER.LINEAR_PROJ_MULTIPLIER``), and clip the gradient norm of
the whole model (``SOLVER.CLIP_GRADIENTS.CLIP_TYPE: "full_model"``), where Detectron2 clips per
parameter.
"""

import functools
from typing import Any, Dict, List

import torch
from detectron2.config import CfgNode
from detectron2.solver import build_optimizer as d2_build_optimizer
from detectron2.solver.build import (
    _generate_optimizer_class_with_gradient_clipping,
    get_default_optimizer_params,
    maybe_add_gradient_clipping,
)
from torch import nn

__all__ = ["build_optimizer", "optimizer_param_groups", "lr_multiplier"]

OPTIMIZERS = ("SGD", "ADAMW")


def lr_multiplier(name: str, cfg: CfgNode) -> float:
    """The learning-rate factor of parameter ``name`` (a dotted name from ``named_parameters``)."""
    s = cfg.SOLVER
    if "backbone" in name.split("."):
        return s.BACKBONE_MULTIPLIER
    if any(key in name for key in s.LINEAR_PROJ_NAMES):
        return s.LINEAR_PROJ_MULTIPLIER
    return 1.0


def optimizer_param_groups(cfg: CfgNode, model: nn.Module) -> List[Dict[str, Any]]:
    """
    One group per learning-rate factor over the trainable parameters (each parameter once), with
    ``SOLVER.WEIGHT_DECAY`` on all of them (norms and biases included) as Deformable DETR does:
    Detectron2's ``get_default_optimizer_params`` with :func:`lr_multiplier` as ``lr_factor_func``.
    """
    return get_default_optimizer_params(
        model,
        base_lr=cfg.SOLVER.BASE_LR,
        weight_decay=cfg.SOLVER.WEIGHT_DECAY,
        lr_factor_func=functools.partial(lr_multiplier, cfg=cfg),
    )


def _full_model_clipping(optimizer_type: type, max_norm: float, norm_type: float) -> type:
    """A subclass of ``optimizer_type`` whose ``step`` first clips the norm of all gradients
    (Detectron2's global clipper, which it keeps for DETR)."""

    def clip(params):
        torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type)

    return _generate_optimizer_class_with_gradient_clipping(optimizer_type, global_clipper=clip)


def build_optimizer(cfg: CfgNode, model: nn.Module) -> torch.optim.Optimizer:
    """
    Detectron2's optimizer when ``SOLVER.OPTIMIZER`` is "SGD" with no lr multipliers and no
    full-model clipping; otherwise SGD/AdamW over :func:`optimizer_param_groups`, clipped as
    ``SOLVER.CLIP_GRADIENTS`` says.

    Raises:
        ValueError: for an unknown ``SOLVER.OPTIMIZER``.
    """
    s = cfg.SOLVER
    name = s.OPTIMIZER.upper()
    if name not in OPTIMIZERS:
        raise ValueError(f'SOLVER.OPTIMIZER "{s.OPTIMIZER}" is not one of {OPTIMIZERS}')
    full_clip = s.CLIP_GRADIENTS.ENABLED and s.CLIP_GRADIENTS.CLIP_TYPE == "full_model"
    plain = s.BACKBONE_MULTIPLIER == 1.0 and s.LINEAR_PROJ_MULTIPLIER == 1.0
    if name == "SGD" and plain and not full_clip:
        return d2_build_optimizer(cfg, model)
    groups = optimizer_param_groups(cfg, model)
    if name == "ADAMW":
        optimizer_type, kwargs = torch.optim.AdamW, {}
    else:
        optimizer_type, kwargs = torch.optim.SGD, {"momentum": s.MOMENTUM, "nesterov": s.NESTEROV}
    if full_clip:
        optimizer_type = _full_model_clipping(
            optimizer_type, s.CLIP_GRADIENTS.CLIP_VALUE, s.CLIP_GRADIENTS.NORM_TYPE
        )
    else:
        optimizer_type = maybe_add_gradient_clipping(cfg, optimizer_type)
    return optimizer_type(groups, lr=s.BASE_LR, weight_decay=s.WEIGHT_DECAY, **kwargs)
