"""Training hooks for distillation."""

import logging
import os
from typing import Dict

import torch
from detectron2.engine import HookBase
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm
from torch.nn.parallel import DistributedDataParallel

__all__ = [
    "TeacherEvalHook",
    "CalibrationRecordHook",
    "LossNormalizerHook",
    "loss_normalizers",
    "unwrap_model",
]

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


def loss_normalizers(model: torch.nn.Module) -> Dict[str, float]:
    """{module name: its ``loss_normalizer``}: the running mean of foreground counts that
    Detectron2's dense heads (RetinaNet, FCOS) keep as a plain attribute, outside the state dict,
    so a checkpoint alone would restart it (RetinaNet from 100) and change the next losses.
    Names are those of the model inside DDP, if any."""
    return {
        name: float(m.loss_normalizer)
        for name, m in unwrap_model(model).named_modules()
        if isinstance(getattr(m, "loss_normalizer", None), (int, float))
    }


class LossNormalizerHook(HookBase):
    """
    Stateful hook that carries the dense heads' :func:`loss_normalizers` in the trainer's part of
    every checkpoint (``trainer.hooks.LossNormalizerHook``), so that ``--resume`` goes on with the
    running foreground count the interrupted run had, not with the head's initial value (on the
    same batch, the resumed losses then equal an uninterrupted run's; train_net's data order after
    a resume is Detectron2's, tools/demo.py's resume points also restore it). Stock Detectron2
    does not save the count.
    A model without such a head saves nothing. Under DDP each rank keeps its own count (Detectron2
    does not all-reduce it); the checkpoint holds rank 0's, which every rank gets back.
    """

    def state_dict(self):
        normalizers = loss_normalizers(self.trainer.model)
        return {"loss_normalizers": normalizers} if normalizers else {}

    def load_state_dict(self, state_dict):
        modules = dict(unwrap_model(self.trainer.model).named_modules())
        saved = state_dict.get("loss_normalizers", {})
        # A head sets the attribute at its first training step, so a fresh model has none yet.
        unknown = sorted(n for n in saved if n not in modules)
        if unknown:
            logger.warning(
                f"The checkpoint holds the loss_normalizer of modules {unknown}, which this model "
                "does not have: not restored (a checkpoint of another architecture?)"
            )
        for name, value in saved.items():
            if name not in unknown:
                modules[name].loss_normalizer = float(value)
        if saved:
            logger.info(f"Restored the heads' loss_normalizer from the checkpoint: {saved}")
