#!/usr/bin/env python
"""
Train or evaluate a detector, or distil one into another, with d2kd.

    python train_net.py --config-file configs/shapes/retinanet_R18.yaml
    python train_net.py --config-file configs/shapes/kd/mse_retinanet_R50_to_R18.yaml --num-gpus 8
    python train_net.py --config-file CONFIG --eval-only MODEL.WEIGHTS output/model_final.pth

The usual Detectron2 flags apply (--resume, --num-machines, --machine-rank, --dist-url).
"""

import logging
import os
import weakref

import detectron2.utils.comm as comm
import torch
from detectron2.data import build_detection_train_loader
from detectron2.engine import (
    AMPTrainer,
    DefaultTrainer,
    SimpleTrainer,
    TrainerBase,
    default_argument_parser,
    default_setup,
)
from detectron2.evaluation import verify_results
from detectron2.utils.logger import setup_logger

import d2kd  # noqa: F401  (registers d2kd's models and datasets)
from d2kd.config import load_config_file
from d2kd.data import build_train_mapper
from d2kd.engine import (
    CalibrationRecordHook,
    DivergenceHook,
    LossNormalizerHook,
    TeacherEvalHook,
    check_eval_only_weights,
    check_num_classes,
    check_resumed_teacher,
    check_training_data,
    create_ddp_model,
    launch,
    setup_d2kd_logger,
    write_run_info,
)
from d2kd.evaluation import build_evaluator, warn_on_nan_metrics
from d2kd.solver import build_optimizer
from d2kd.utils.checkpoint import SafeCheckpointer


class Trainer(DefaultTrainer):
    """
    DefaultTrainer whose evaluator follows the dataset, and which can evaluate the teacher first.

    ``__init__`` is DefaultTrainer's with two changes: DDP gets ``device_ids`` only for a CUDA
    model (so ``--num-gpus N`` also runs on CPU, with gloo), and checkpoints are read by
    :class:`SafeCheckpointer` (no code execution from ``MODEL.WEIGHTS`` or ``--resume``'s file).
    """

    def __init__(self, cfg):
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = create_ddp_model(model, broadcast_buffers=False)
        self._trainer = (AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer)(
            model, data_loader, optimizer
        )
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = SafeCheckpointer(
            model,
            cfg.OUTPUT_DIR,
            setting="MODEL.WEIGHTS",
            download_timeout=cfg.MODEL.DOWNLOAD_TIMEOUT,
            trainer=weakref.proxy(self),
        )
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return build_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_optimizer(cfg, model)  # AdamW / lr multipliers / full-model clip by config

    @classmethod
    def build_train_loader(cls, cfg):
        return build_detection_train_loader(cfg, mapper=build_train_mapper(cfg))

    def build_hooks(self):
        # The dense heads' loss_normalizer goes into checkpoints, so --resume goes on with it.
        hooks = super().build_hooks() + [LossNormalizerHook()]
        kd = self.cfg.MODEL.KD
        if self.cfg.MODEL.META_ARCHITECTURE == "DistillDetector" and kd.TEACHER.EVAL_AT_START:
            hooks.insert(0, TeacherEvalHook(self.cfg, self.build_test_loader, self.build_evaluator))
        if self.cfg.MODEL.META_ARCHITECTURE == "DistillDetector" and kd.CALIBRATE.ENABLED:
            hooks.append(CalibrationRecordHook(self.cfg))  # scales -> run_info.json
        if self.cfg.SOLVER.DIVERGENCE.ENABLED:
            hooks.insert(0, DivergenceHook(self.cfg))  # stops a run whose losses explode
        return hooks

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        results = super().test(cfg, model, evaluators)
        warn_on_nan_metrics(results, cfg.DATASETS.TEST)
        return results


def load_cfg(config_file: str, opts=(), eval_only: bool = False):
    """The (unfrozen) config of ``config_file`` + ``opts``, on the CPU where no GPU is present."""
    cfg = load_config_file(config_file)  # safe YAML only: a !!python tag is refused
    cfg.merge_from_list(list(opts))
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logging.getLogger("d2kd").warning("No GPU found: MODEL.DEVICE falls back to cpu")
        cfg.MODEL.DEVICE = "cpu"
    if eval_only:
        # Only the student runs at test time: the teacher's weights are not needed.
        cfg.MODEL.KD.TEACHER.LOAD_WEIGHTS = False
    return cfg


def setup(args):
    cfg = load_cfg(args.config_file, args.opts, args.eval_only)
    cfg.freeze()
    default_setup(cfg, args)
    setup_d2kd_logger(cfg)  # d2kd's messages to the console and OUTPUT_DIR/log.txt
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        check_eval_only_weights(cfg, args.resume)  # a random model's metrics are no result
        model = Trainer.build_model(cfg)
        SafeCheckpointer(
            model,
            save_dir=cfg.OUTPUT_DIR,
            setting="MODEL.WEIGHTS",
            download_timeout=cfg.MODEL.DOWNLOAD_TIMEOUT,
        ).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        res = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, res)
        return res

    check_training_data(cfg)  # stops before the first iteration on bad annotations
    if args.resume:  # the teacher file must be the one the run started with
        check_resumed_teacher(cfg, os.path.join(cfg.OUTPUT_DIR, "run_info.json"))
    trainer = Trainer(cfg)
    check_num_classes(cfg, trainer.model)
    trainer.resume_or_load(resume=args.resume)
    if comm.is_main_process():
        write_run_info(cfg, os.path.join(cfg.OUTPUT_DIR, "run_info.json"))
    return trainer.train()


def invoke_main() -> None:
    parser = default_argument_parser()
    # A port the OS picks on one machine (d2kd's launch), instead of Detectron2's fixed per-user
    # port, which a second job on the machine finds taken; several machines need --dist-url.
    parser.set_defaults(dist_url="auto")
    args = parser.parse_args()
    logging.getLogger(__name__).info("Command Line Args: %s", args)
    device = None  # the backend follows MODEL.DEVICE: gloo for a CPU run, even with CUDA present
    if args.num_gpus * args.num_machines > 1:
        device = load_cfg(args.config_file, args.opts).MODEL.DEVICE
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
        device=device,
    )


if __name__ == "__main__":
    invoke_main()  # pragma: no cover
