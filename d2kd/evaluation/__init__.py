from .build import EVALUATOR_BUILDERS, build_evaluator, warn_on_nan_metrics
from .crowdhuman_evaluator import CrowdHumanEvaluator

__all__ = ["build_evaluator", "EVALUATOR_BUILDERS", "CrowdHumanEvaluator", "warn_on_nan_metrics"]
