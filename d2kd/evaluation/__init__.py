from .build import EVALUATOR_BUILDERS, build_evaluator
from .crowdhuman_evaluator import CrowdHumanEvaluator

__all__ = ["build_evaluator", "EVALUATOR_BUILDERS", "CrowdHumanEvaluator"]
