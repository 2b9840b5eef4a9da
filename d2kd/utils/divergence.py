"""
Detecting a diverging run from its loss terms (pure Python; the training hook is
:class:`d2kd.engine.DivergenceHook`).

A term *explodes* when it is non-finite, or when it exceeds ``factor`` x the median of its last
``window`` values (once ``min_history`` values exist) and ``min_loss``. Gradient clipping keeps
an exploding run finite, so the ratio test is what catches it. To say which terms went first, each
term's first iteration above ``sqrt(factor)`` x its median (its *rise*) is remembered until it
falls back.
"""

import math
import statistics
from collections import deque
from dataclasses import dataclass, field
from typing import Deque, Dict, List, Optional, Tuple

__all__ = ["Divergence", "DivergenceMonitor", "is_kd_term"]


def is_kd_term(name: str) -> bool:
    """Distillation terms are named ``loss_kd_*``; every other term is a detection term."""
    return name.startswith("loss_kd_")


@dataclass
class Divergence:
    """What the monitor found at ``iteration``: exploded terms (name, value, running median)."""

    iteration: int
    terms: List[Tuple[str, float, Optional[float]]]
    first_iteration: int
    first_terms: List[str] = field(default_factory=list)

    @property
    def first_group(self) -> str:
        """'distillation', 'detection' or 'distillation and detection' (whichever rose first)."""
        kd = [is_kd_term(n) for n in self.first_terms]
        if all(kd):
            return "distillation"
        if not any(kd):
            return "detection"
        return "distillation and detection"

    def describe(self) -> str:
        parts = []
        for name, value, median in self.terms:
            if median is None or not math.isfinite(value):
                parts.append(f"{name} = {value:.4g}")
            else:
                parts.append(f"{name} = {value:.4g} ({value / max(median, 1e-30):.3g}x its median)")
        return (
            f"training diverged at iteration {self.iteration}: {', '.join(parts)}. The "
            f"{self.first_group} terms exploded first ({', '.join(self.first_terms)}, rising since "
            f"iteration {self.first_iteration})"
        )


class DivergenceMonitor:
    """Feed it each iteration's loss terms; it returns a :class:`Divergence` when the run diverges."""

    def __init__(
        self, factor: float = 100.0, window: int = 100, min_history: int = 10, min_loss: float = 1.0
    ):
        if factor <= 1:
            raise ValueError(f"SOLVER.DIVERGENCE.FACTOR must be > 1, got {factor}")
        if window < 1 or min_history < 1 or min_history > window:
            raise ValueError(
                f"SOLVER.DIVERGENCE: need 1 <= MIN_HISTORY <= WINDOW, got {min_history}, {window}"
            )
        self.factor, self.window, self.min_history, self.min_loss = (
            factor,
            window,
            min_history,
            min_loss,
        )
        self.early_factor = math.sqrt(factor)
        self._history: Dict[str, Deque[float]] = {}
        self._rise: Dict[str, int] = {}  # term -> first iteration of its current rise
        self.max_ratio: Dict[str, float] = {}  # the largest value / median seen, per term

    def _median(self, name: str) -> Optional[float]:
        hist = self._history.get(name)
        if not hist or len(hist) < self.min_history:
            return None
        return statistics.median(hist)

    def update(self, iteration: int, losses: Dict[str, float]) -> Optional[Divergence]:
        """Check ``losses`` (term -> value) of ``iteration`` against the history, then record them."""
        exploded = []
        for name, value in losses.items():
            median = self._median(name)
            if not math.isfinite(value):
                self._rise.setdefault(name, iteration)
                exploded.append((name, value, median))
                continue
            if median is None:
                continue
            ratio = value / max(median, 1e-12)
            self.max_ratio[name] = max(self.max_ratio.get(name, 0.0), ratio)
            if ratio > self.early_factor and value > self.min_loss:
                self._rise.setdefault(name, iteration)
            else:
                self._rise.pop(name, None)
            if ratio > self.factor and value > self.min_loss:
                exploded.append((name, value, median))
        if exploded:
            first = min(self._rise.values())  # every exploded term is rising too
            first_terms = sorted(n for n, it in self._rise.items() if it == first)
            return Divergence(iteration, exploded, first, first_terms)
        for name, value in losses.items():
            self._history.setdefault(name, deque(maxlen=self.window)).append(value)
        return None
