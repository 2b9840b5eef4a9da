"""Pick the evaluator of a dataset from its metadata's ``evaluator_type``."""

import logging
import os

from detectron2.data import MetadataCatalog
from detectron2.evaluation import COCOEvaluator, DatasetEvaluator, PascalVOCDetectionEvaluator

from .crowdhuman_evaluator import CrowdHumanEvaluator

__all__ = ["build_evaluator", "EVALUATOR_BUILDERS"]

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
