"""Run metadata written next to the checkpoints, so that a result can be traced and reproduced."""

import json
import os
import subprocess

import torch

__all__ = ["run_info", "write_run_info", "update_run_info"]


def _git_commit(path: str) -> str:
    try:
        out = subprocess.run(
            ["git", "-C", path, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _teacher_weights(cfg) -> str:
    from d2kd.modeling.teacher import teacher_weights_path

    return teacher_weights_path(cfg)  # the zoo URL under MODEL.KD.TEACHER.WEIGHTS_FROM_ZOO


def run_info(cfg) -> dict:
    """What a user needs to compare two runs: teacher, schedule, batch, lr, framework versions."""
    import detectron2

    import d2kd

    kd = cfg.MODEL.KD
    distill = cfg.MODEL.META_ARCHITECTURE == "DistillDetector"
    return {
        "meta_architecture": cfg.MODEL.META_ARCHITECTURE,
        "student_meta_architecture": kd.STUDENT_META_ARCHITECTURE if distill else None,
        "teacher_config": kd.TEACHER.CONFIG_FILE if distill else None,
        "teacher_weights": _teacher_weights(cfg) if distill else None,
        "losses": dict(zip(kd.LOSSES, kd.LOSS_WEIGHTS)) if distill else {},
        "ims_per_batch": cfg.SOLVER.IMS_PER_BATCH,
        "base_lr": cfg.SOLVER.BASE_LR,
        "max_iter": cfg.SOLVER.MAX_ITER,
        "steps": list(cfg.SOLVER.STEPS),
        "amp": cfg.SOLVER.AMP.ENABLED,
        "datasets": {"train": list(cfg.DATASETS.TRAIN), "test": list(cfg.DATASETS.TEST)},
        "versions": {
            "d2kd": d2kd.__version__,
            "d2kd_commit": _git_commit(os.path.dirname(os.path.dirname(d2kd.__file__))),
            "detectron2": detectron2.__version__,
            "detectron2_commit": _git_commit(os.path.dirname(os.path.dirname(detectron2.__file__))),
            "torch": torch.__version__,
        },
    }


def write_run_info(cfg, path: str) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(run_info(cfg), f, indent=2)


def update_run_info(path: str, entries: dict) -> None:
    """Add ``entries`` to the run_info.json at ``path`` (written by write_run_info; created with
    these entries alone when absent)."""
    info = {}
    if os.path.isfile(path):
        with open(path) as f:
            info = json.load(f)
    info.update(entries)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(info, f, indent=2)
