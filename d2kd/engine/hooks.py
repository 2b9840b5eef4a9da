"""Training hooks for distillation."""

import logging
import os

from detectron2.engine import HookBase
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm
from torch.nn.parallel import DistributedDataParallel

__all__ = ["TeacherEvalHook", "CalibrationRecordHook", "unwrap_model"]

logger = logging.getLogger(__name__)


def unwrap_model(model):
    """The model inside DDP, if any."""
    return model.module if isinstance(model, DistributedDataParallel) else model


class TeacherEvalHook(HookBase):
    """
    Evaluate the teacher on each test dataset before training and log its metrics as
    ``teacher/<task>/<metric>``: a teacher that was never loaded shows up here as AP ~ 0 (the most
    common reason users report that distillation "does not work").
    """

    def __init__(self, cfg, build_test_loader, build_evaluator):
        """
        Args:
            build_test_loader: ``fn(cfg, dataset_name)``; build_evaluator: ``fn(cfg,
            dataset_name)``.
        """
        self.cfg = cfg.clone()
        self._loader = build_test_loader
        self._evaluator = build_evaluator

    def before_train(self):
        teacher = unwrap_model(self.trainer.model).teacher
        flat = {}
        for name in self.cfg.DATASETS.TEST:
            results = inference_on_dataset(
                teacher, self._loader(self.cfg, name), self._evaluator(self.cfg, name)
            )
            if comm.is_main_process():
                ap = {t: m.get("AP") for t, m in results.items() if isinstance(m, dict)}
                logger.info(f"Teacher AP on {name}: {ap} (MODEL.KD.TEACHER.EVAL_AT_START)")
                print_csv_format(results)
            for task, metrics in results.items():
                flat.update({f"teacher/{name}/{task}/{k}": v for k, v in metrics.items()})
        if comm.is_main_process():
            self.trainer.storage.put_scalars(**flat, smoothing_hint=False)
        self.results = flat


class CalibrationRecordHook(HookBase):
    """
    Once ``MODEL.KD.CALIBRATE`` has frozen its scales (or a resumed checkpoint brought them back),
    add what it measured and set to ``OUTPUT_DIR/run_info.json`` as ``"kd_calibration"``.
    """

    def __init__(self, cfg):
        self.path = os.path.join(cfg.OUTPUT_DIR, "run_info.json")
        self._written = False

    def after_step(self):
        if self._written:
            return
        calibrator = getattr(unwrap_model(self.trainer.model), "calibrator", None)
        if calibrator is None or not calibrator.done:
            return
        self._written = True
        if comm.is_main_process():
            from .run_info import update_run_info

            update_run_info(self.path, {"kd_calibration": calibrator.report()})
