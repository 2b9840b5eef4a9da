"""
What ``train_net.py`` does at start-up besides Detectron2's ``default_setup``: attach d2kd's
logger, check the training sets, and check that the models predict the training set's classes.
"""

import logging
import os
from typing import List

from detectron2.data import MetadataCatalog
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..data.check import DatasetCheckError, check_datasets
from ..modeling.checks import model_num_classes, num_classes_key, reads_teacher_class_scores
from .hooks import unwrap_model

__all__ = [
    "setup_d2kd_logger",
    "check_training_data",
    "check_num_classes",
    "check_eval_only_weights",
]

logger = logging.getLogger(__name__)


def setup_d2kd_logger(cfg) -> logging.Logger:
    """
    Send ``d2kd.*`` messages where Detectron2's go: the console and ``OUTPUT_DIR/log.txt`` on
    rank 0 (``log.txt.rank<N>`` on the others), as ``default_setup`` does for ``detectron2``.
    """
    return setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="d2kd")


def check_training_data(cfg) -> None:
    """
    Run the dataset check (``DATASETS.CHECK``) on ``DATASETS.TRAIN`` on rank 0 and stop every
    rank with :class:`DatasetCheckError` when it finds errors. Writes the reports and histograms
    to ``OUTPUT_DIR/dataset_check/``.
    """
    c = cfg.DATASETS.CHECK
    if not c.ENABLED:
        logger.info("Dataset check skipped (DATASETS.CHECK.ENABLED False)")
        return
    error = None
    if comm.is_main_process():
        try:
            check_datasets(
                cfg.DATASETS.TRAIN,
                tolerance=c.OUTSIDE_TOLERANCE,
                check_images=c.IMAGES,
                output_dir=os.path.join(cfg.OUTPUT_DIR, "dataset_check"),
            )
        except DatasetCheckError as e:
            error = str(e)
    errors = [e for e in comm.all_gather(error) if e]
    if errors:
        raise DatasetCheckError(errors[0])


def check_eval_only_weights(cfg, resume: bool) -> None:
    """
    Refuse ``--eval-only`` without weights: an empty ``MODEL.WEIGHTS`` (and no checkpoint to
    resume from in ``OUTPUT_DIR`` under ``--resume``) would evaluate a randomly initialised
    model and report its meaningless metrics as a success.
    """
    if cfg.MODEL.WEIGHTS:
        return
    if resume and os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint")):
        return  # --resume loads the checkpoint OUTPUT_DIR/last_checkpoint names
    raise ValueError(
        "--eval-only with an empty MODEL.WEIGHTS would evaluate a randomly initialised model: "
        "name the checkpoint to evaluate (MODEL.WEIGHTS output/<run>/model_final.pth), or add "
        f"--resume to evaluate the last checkpoint in OUTPUT_DIR ({cfg.OUTPUT_DIR} has none)"
    )


def _dataset_classes(names) -> List[int]:
    return [len(MetadataCatalog.get(n).get("thing_classes", None) or []) or None for n in names]


def check_num_classes(cfg, model) -> None:
    """
    Raise a ValueError when the student (and, for losses that read class scores, the teacher)
    does not predict exactly the training set's classes (``thing_classes`` of every
    ``DATASETS.TRAIN``, known once the data loader has loaded them).
    """
    names = list(cfg.DATASETS.TRAIN)
    counts = {n: c for n, c in zip(names, _dataset_classes(names)) if c is not None}
    if not counts:
        logger.warning(f"Training sets {names} declare no thing_classes: class count not checked")
        return
    if len(set(counts.values())) > 1:
        raise ValueError(f"DATASETS.TRAIN sets have different class counts: {counts}")
    expected = next(iter(counts.values()))
    model = unwrap_model(model)
    models = [("model", model)]
    if cfg.MODEL.META_ARCHITECTURE == "DistillDetector":
        models = [("student", model.student)]
        readers = reads_teacher_class_scores(cfg)
        if readers:
            models.append((f"teacher (read by {readers})", model.teacher))
    for which, m in models:
        n = model_num_classes(m)
        if n is None:
            logger.warning(f"The {which} ({type(m).__name__}) has no num_classes: not checked")
        elif n != expected:
            raise ValueError(
                f"the {which} predicts {n} classes but the training data "
                f"({', '.join(counts)}) has {expected} (thing_classes "
                f"{list(MetadataCatalog.get(next(iter(counts))).thing_classes)}): "
                + _class_count_fix(cfg, which.split()[0], m, expected)
            )
    logger.info(f"Class count checked: {expected} classes in {names}")


def _class_count_fix(cfg, which: str, model, expected: int) -> str:
    """Where to set the class count of the "model", the "student" or the "teacher"."""
    key = f"{num_classes_key(model)} {expected}"
    if which == "teacher":
        t = cfg.MODEL.KD.TEACHER
        return (
            f"set {key} in the teacher's config (MODEL.KD.TEACHER.CONFIG_FILE "
            f"{t.CONFIG_FILE}) or add it to MODEL.KD.TEACHER.OPTS"
        )
    if which == "student":
        return (
            f"set {key} for the student in this config (the file given to --config-file or the "
            "command line; the student's keys are the config's own, MODEL.KD.TEACHER.OPTS "
            "changes only the teacher)"
        )
    return f"set {key} in the config"
