"""The training hook that stops a diverging run (see :mod:`d2kd.utils.divergence`)."""

import logging
from typing import Dict

import torch
import torch.distributed as dist
from detectron2.engine import HookBase
from detectron2.utils import comm

from ..utils.divergence import Divergence, DivergenceMonitor, divergence_advice

__all__ = ["DivergenceHook", "TrainingDivergedError"]

logger = logging.getLogger(__name__)


class TrainingDivergedError(FloatingPointError):
    """Raised when a loss term is non-finite or explodes (a FloatingPointError, as Detectron2's);
    ``iteration``: the training iteration it was found at (None where not known)."""

    def __init__(self, message: str, iteration=None):
        super().__init__(message)
        self.iteration = iteration


class DivergenceHook(HookBase):
    """
    Check every loss term right after the model's training forward (before the backward pass,
    the metrics and the optimizer step) and stop training with :class:`TrainingDivergedError`
    when one is non-finite or exceeds ``SOLVER.DIVERGENCE.FACTOR`` x its reference (its lowest
    running median, at least ``MIN_LOSS``). The terms are read from the model's output through a
    forward hook; under DDP they are averaged over ranks first, so every rank stops at the same
    iteration.
    """

    def __init__(self, cfg):
        d = cfg.SOLVER.DIVERGENCE
        self.monitor = DivergenceMonitor(d.FACTOR, d.WINDOW, d.MIN_HISTORY, d.MIN_LOSS)
        self.cfg = cfg
        self._handle = None

    def before_train(self):
        self._handle = self.trainer.model.register_forward_hook(self._capture)

    def after_train(self):
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        if self.monitor.max_ratio:
            peaks = {k: round(v, 2) for k, v in sorted(self.monitor.max_ratio.items())}
            logger.info(
                f"Divergence check: largest value / reference per loss term (reference: lowest "
                f"running median, at least MIN_LOSS {self.monitor.min_loss}): {peaks} (stops "
                f"above FACTOR {self.monitor.factor})"
            )

    def state_dict(self):
        """The monitor's state, saved with every checkpoint (``trainer.hooks.DivergenceHook``):
        ``--resume`` and tools/demo.py's resume points then stop a run where an uninterrupted one
        would stop."""
        return self.monitor.state_dict()

    def load_state_dict(self, state_dict):
        self.monitor.load_state_dict(state_dict)

    def _capture(self, module, inputs, output):
        """Forward hook: check the loss dict of a training forward (before backward and before
        Detectron2 writes the metrics; HookBase.after_backward is not called for the hooks of a
        DefaultTrainer)."""
        if not (module.training and isinstance(output, dict)) or not output:
            return
        found = self.monitor.update(self.trainer.iter, self._values(output))
        if found is not None:
            message = self.message(found)
            logger.error(message)
            raise TrainingDivergedError(message, found.iteration)

    @staticmethod
    def _values(losses: Dict[str, torch.Tensor]) -> Dict[str, float]:
        names = sorted(losses)
        values = torch.stack([losses[n].detach().float().reshape(()) for n in names])
        if comm.get_world_size() > 1:
            dist.all_reduce(values)
            values /= comm.get_world_size()
        return dict(zip(names, values.cpu().tolist()))

    def message(self, found: Divergence) -> str:
        """The error: what exploded, which group first, and what to change."""
        cfg = self.cfg
        clip = cfg.SOLVER.CLIP_GRADIENTS
        kd = None
        if cfg.MODEL.META_ARCHITECTURE == "DistillDetector":
            kd = (
                dict(zip(cfg.MODEL.KD.LOSSES, cfg.MODEL.KD.LOSS_WEIGHTS)),
                cfg.MODEL.KD.WARMUP_ITERS,
            )
        advice = divergence_advice(
            found.first_group,
            cfg.SOLVER.BASE_LR,
            cfg.SOLVER.WARMUP_ITERS,
            (clip.CLIP_TYPE, clip.CLIP_VALUE) if clip.ENABLED else None,
            kd,
        )
        return (
            f"{found.describe()}. {advice}. (Thresholds: SOLVER.DIVERGENCE.FACTOR "
            f"{self.monitor.factor}, MIN_LOSS {self.monitor.min_loss}; SOLVER.DIVERGENCE.ENABLED "
            "False turns this check off.)"
        )
