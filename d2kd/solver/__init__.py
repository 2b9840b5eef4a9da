"""Optimizers: ``build_optimizer(cfg, model)`` adds AdamW, per-name lr multipliers and
full-model gradient clipping (DETR recipes) to Detectron2's builder."""

from .build import build_optimizer, optimizer_param_groups

__all__ = ["build_optimizer", "optimizer_param_groups"]
