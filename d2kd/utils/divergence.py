"""
Detecting a diverging run from its loss terms (pure Python; the training hook is
:class:`d2kd.engine.DivergenceHook`).

Each term's *reference* is the lowest running median it has had (the median of its last
``window`` values, once ``min_history`` exist), floored at ``min_loss``. A term *explodes* when it
is non-finite or exceeds ``factor`` x its reference. The lowest running median is used rather than
the current one because gradient clipping makes an explosion gradual: a running median follows a
loss that doubles every few dozen iterations and never falls ``factor`` behind it, while the
lowest median stays where training was healthy. The ``min_loss`` floor keeps terms that start near
zero (a box loss before the first positive) from tripping it. To say which terms went first, each
term's first iteration above ``sqrt(factor)`` x its reference (its *rise*) is remembered until it
falls back.
"""

import math
import statistics
from collections import deque
from dataclasses import dataclass, field
from typing import Deque, Dict, List, Optional, Tuple

__all__ = ["Divergence", "DivergenceMonitor", "is_kd_term", "divergence_advice"]


def is_kd_term(name: str) -> bool:
    """Distillation terms are named ``loss_kd_*``; every other term is a detection term."""
    return name.startswith("loss_kd_")


@dataclass
class Divergence:
    """What the monitor found at ``iteration``: exploded terms (name, value, reference)."""

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
        for name, value, ref in self.terms:
            if ref is None or not math.isfinite(value):
                parts.append(f"{name} = {value:.4g}")
            else:
                parts.append(f"{name} = {value:.4g} ({value / ref:.3g}x its reference {ref:.3g})")
        return (
            f"training diverged at iteration {self.iteration}: {', '.join(parts)} (reference: the "
            "term's lowest running median, at least SOLVER.DIVERGENCE.MIN_LOSS). The "
            f"{self.first_group} terms exploded first ({', '.join(self.first_terms)}, rising since "
            f"iteration {self.first_iteration})"
        )


def divergence_advice(
    first_group: str,
    base_lr: float,
    warmup_iters: int,
    clip: Optional[Tuple[str, float]] = None,
    kd: Optional[Tuple[Dict[str, float], int]] = None,
) -> str:
    """
    What to change, following the group of terms that rose first (:attr:`Divergence.first_group`):
    the distillation terms alone point at the distillation weights; the detection terms alone, or
    both groups together, at the optimiser step (learning rate, warm-up, clipping) first.

    Args:
        first_group: "distillation", "detection" or "distillation and detection".
        base_lr, warmup_iters: SOLVER.BASE_LR and SOLVER.WARMUP_ITERS.
        clip: (CLIP_TYPE, CLIP_VALUE) when SOLVER.CLIP_GRADIENTS is enabled, else None.
        kd: (loss -> weight, MODEL.KD.WARMUP_ITERS) for a distillation run, else None.
    """
    step = (
        f"lower the learning rate SOLVER.BASE_LR (now {base_lr}) or lengthen "
        f"SOLVER.WARMUP_ITERS (now {warmup_iters})"
    )
    if clip is None:
        step += "; enable gradient clipping (SOLVER.CLIP_GRADIENTS.ENABLED True)"
    else:
        step += (
            f"; gradient clipping (SOLVER.CLIP_GRADIENTS, {clip[0]} {clip[1]}) keeps the steps "
            "finite but does not stop a too high learning rate"
        )
    if kd is None:
        return step[0].upper() + step[1:]
    weights = (
        f"lower MODEL.KD.LOSS_WEIGHTS (now {kd[0]}) or set MODEL.KD.WARMUP_ITERS (now {kd[1]})"
    )
    if first_group == "distillation":
        return (
            f"The distillation terms rose first: above all, {weights}. If that is not enough, "
            f"{step}"
        )
    if first_group == "detection":
        return (
            f"The detection terms rose first, not the distillation terms: {step}. "
            f"MODEL.KD.LOSS_WEIGHTS (now {kd[0]}) are not the first suspect"
        )
    return (
        "Detection and distillation terms rose together, which points at the optimiser step "
        f"rather than the distillation weights: first {step}; only then {weights}"
    )


class DivergenceMonitor:
    """Feed it each iteration's loss terms; it returns a :class:`Divergence` when the run
    diverges."""

    def __init__(
        self, factor: float = 100.0, window: int = 100, min_history: int = 2, min_loss: float = 1.0
    ):
        if factor <= 1:
            raise ValueError(f"SOLVER.DIVERGENCE.FACTOR must be > 1, got {factor}")
        if window < 1 or min_history < 1 or min_history > window:
            raise ValueError(
                f"SOLVER.DIVERGENCE: need 1 <= MIN_HISTORY <= WINDOW, got {min_history}, {window}"
            )
        self.factor, self.window, self.min_history = factor, window, min_history
        self.min_loss = min_loss
        self.early_factor = math.sqrt(factor)
        self._history: Dict[str, Deque[float]] = {}
        self._best: Dict[str, float] = {}  # term -> lowest running median so far
        self._rise: Dict[str, int] = {}  # term -> first iteration of its current rise
        # Per term, the largest value / reference seen (the margin a healthy run keeps).
        self.max_ratio: Dict[str, float] = {}

    def reference(self, name: str) -> Optional[float]:
        """max(lowest running median of ``name``, min_loss); None before min_history values."""
        best = self._best.get(name)
        return None if best is None else max(best, self.min_loss)

    def state_dict(self) -> Dict:
        """What the monitor has seen (plain lists and numbers, for a checkpoint), so that a resumed
        run compares its losses with the interrupted run's lowest running medians, as an
        uninterrupted run does (a fresh monitor would take the post-resume medians instead)."""
        return {
            "history": {k: list(v) for k, v in self._history.items()},
            "best": dict(self._best),
            "rise": dict(self._rise),
            "max_ratio": dict(self.max_ratio),
        }

    def load_state_dict(self, state: Dict) -> None:
        """Restore what :meth:`state_dict` returned (the window keeps its last ``window``
        values)."""
        self._history = {
            k: deque((float(x) for x in v), maxlen=self.window)
            for k, v in state.get("history", {}).items()
        }
        self._best = {k: float(v) for k, v in state.get("best", {}).items()}
        self._rise = {k: int(v) for k, v in state.get("rise", {}).items()}
        self.max_ratio = {k: float(v) for k, v in state.get("max_ratio", {}).items()}

    def _record(self, name: str, value: float) -> None:
        hist = self._history.setdefault(name, deque(maxlen=self.window))
        hist.append(value)
        if len(hist) >= self.min_history:
            median = statistics.median(hist)
            self._best[name] = min(self._best.get(name, median), median)

    def update(self, iteration: int, losses: Dict[str, float]) -> Optional[Divergence]:
        """Check ``losses`` (term -> value) of ``iteration`` against the history, then record
        them."""
        exploded = []
        for name, value in losses.items():
            ref = self.reference(name)
            if not math.isfinite(value):
                self._rise.setdefault(name, iteration)
                exploded.append((name, value, ref))
                continue
            if ref is None:
                continue
            ratio = value / ref
            self.max_ratio[name] = max(self.max_ratio.get(name, 0.0), ratio)
            if ratio > self.early_factor:
                self._rise.setdefault(name, iteration)
            else:
                self._rise.pop(name, None)
            if ratio > self.factor:
                exploded.append((name, value, ref))
        if exploded:
            first = min(self._rise.values())  # every exploded term is rising too
            first_terms = sorted(n for n, it in self._rise.items() if it == first)
            return Divergence(iteration, exploded, first, first_terms)
        for name, value in losses.items():
            self._record(name, value)
        return None
