"""Pick the evaluator of a dataset from its metadata's ``evaluator_type``."""

import logging
import os

from detectron2.data import MetadataCatalog
from detectron2.evaluation import COCOEvaluator, DatasetEvaluator, PascalVOCDetectionEvaluator

from .crowdhuman_evaluator import CrowdHumanEvaluator

__all__ = ["build_evaluator", "EVALUATOR_BUILDERS", "warn_on_nan_metrics"]

# CrowdHuman val has up to hundreds of people per image; the literature keeps 300-500 detections.
_CROWDHUMAN_MIN_DETECTIONS = 300


def _coco(cfg, dataset_name, output_folder):
    return COCOEvaluator(dataset_name, tasks=("bbox",), output_dir=output_folder)


def _voc(cfg, dataset_name, output_folder):
    return PascalVOCDetectionEvaluator(dataset_name)


def _crowdhuman(cfg, dataset_name, output_folder):
    if cfg.TEST.DETECTIONS_PER_IMAGE < _CROWDHUMAN_MIN_DETECTIONS:
        logging.getLogger(__name__).warning(
            f"TEST.DETECTIONS_PER_IMAGE={cfg.TEST.DETECTIONS_PER_IMAGE} truncates crowded images "
            "of "
            f'"{dataset_name}": CrowdHuman results in the literature keep 500 (configs/crowdhuman/)'
        )
    return CrowdHumanEvaluator(dataset_name, output_dir=output_folder)


# evaluator_type -> builder(cfg, dataset_name, output_folder). Datasets registered without an
# evaluator_type are evaluated as COCO.
EVALUATOR_BUILDERS = {"coco": _coco, "pascal_voc": _voc, "crowdhuman": _crowdhuman}


def build_evaluator(cfg, dataset_name: str, output_folder: str = None) -> DatasetEvaluator:
    """The evaluator for ``dataset_name``, writing under ``output_folder`` (default
    OUTPUT_DIR/inference)."""
    if output_folder is None:
        output_folder = os.path.join(cfg.OUTPUT_DIR, "inference")
    kind = getattr(MetadataCatalog.get(dataset_name), "evaluator_type", "coco")
    if kind not in EVALUATOR_BUILDERS:
        raise KeyError(
            f'dataset "{dataset_name}" has evaluator_type "{kind}"; d2kd knows '
            f"{sorted(EVALUATOR_BUILDERS)}"
        )
    return EVALUATOR_BUILDERS[kind](cfg, dataset_name, output_folder)


def warn_on_nan_metrics(results, dataset_names=()) -> list:
    """
    Warn loudly when evaluation gave NaN metrics (no valid ground truth in the test set, or no
    detection matched anything), instead of letting bare ``nan`` pass as a result.

    Args:
        results: ``{dataset: {task: {metric: value}}}`` or ``{task: {metric: value}}`` (one set).
    Returns:
        the "dataset/task/metric" names that are NaN.
    """
    import math

    flat = {}

    def walk(prefix, node):
        for k, v in node.items():
            if isinstance(v, dict):
                walk(f"{prefix}{k}/", v)
            elif isinstance(v, float) and math.isnan(v):
                flat[f"{prefix}{k}"] = v

    walk("", results or {})
    if flat:
        logging.getLogger(__name__).warning(
            f"!! Evaluation{' of ' + ', '.join(dataset_names) if dataset_names else ''} gave NaN "
            f"for {sorted(flat)}: these are not measurements. Usual causes: a test set without any "
            "valid ground-truth box (check it with tools/check_dataset.py), or a model that made "
            "no detection at all (untrained)"
        )
    return sorted(flat)
