"""
Evaluation. ``crowdhuman_metrics`` and ``bipartite_matching`` (CrowdHuman's AP / MR^-2 / JI, the
CrowdDet toolkit's way) need only NumPy, so they import (and their unit tests run) where
Detectron2 is absent; the evaluators need Detectron2.
"""

__all__ = []

try:
    import detectron2  # noqa: F401
except ImportError:  # pragma: no cover - exercised only where Detectron2 is absent
    pass
else:
    from .build import EVALUATOR_BUILDERS, build_evaluator, warn_on_nan_metrics
    from .crowdhuman_evaluator import CrowdHumanEvaluator

    __all__ += [
        "build_evaluator",
        "EVALUATOR_BUILDERS",
        "CrowdHumanEvaluator",
        "warn_on_nan_metrics",
    ]
