"""Run metadata written next to the checkpoints, so that a result can be traced and reproduced."""

import json
import logging
import os
import subprocess
from typing import Optional

import torch

from d2kd.utils.files import file_sha256

__all__ = [
    "run_info",
    "write_run_info",
    "update_run_info",
    "teacher_weights_sha256",
    "check_resumed_teacher",
]

logger = logging.getLogger(__name__)


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


def teacher_weights_sha256(cfg) -> Optional[str]:
    """sha256 of the local copy of the teacher's weights file (a URL's cached download); None
    when the config distils from no weights file."""
    from d2kd.utils.checkpoint import local_weights_path

    kd = cfg.MODEL.KD.TEACHER
    path = _teacher_weights(cfg) if cfg.MODEL.META_ARCHITECTURE == "DistillDetector" else ""
    if not (path and kd.LOAD_WEIGHTS):
        return None
    return file_sha256(
        local_weights_path(path, "MODEL.KD.TEACHER.WEIGHTS", cfg.MODEL.DOWNLOAD_TIMEOUT)
    )


def check_resumed_teacher(cfg, path: str) -> None:
    """
    On ``--resume``: compare the teacher weights' sha256 with the one the run's earlier
    ``run_info.json`` (``path``) recorded, on rank 0, and stop every rank alike. A different
    file raises ``ValueError`` naming the file, both checksums and
    ``MODEL.KD.TEACHER.ALLOW_CHANGED_WEIGHTS`` (which turns the error into a warning). Nothing
    is compared when either checksum is unknown (a run_info.json written before d2kd recorded it).
    """
    from detectron2.utils import comm

    error = None
    if comm.is_main_process():
        try:
            _compare_teacher(cfg, path)
        except ValueError as e:
            error = str(e)
    errors = [e for e in comm.all_gather(error) if e]
    if errors:
        raise ValueError(errors[0])


def _compare_teacher(cfg, path: str) -> None:
    if not os.path.isfile(os.path.join(os.path.dirname(path), "last_checkpoint")):
        return  # nothing to resume: a fresh run
    try:
        with open(path) as f:
            before = json.load(f).get("teacher_weights_sha256")
    except (OSError, ValueError):
        return
    now = teacher_weights_sha256(cfg)
    if not before or not now or before == now:
        return
    msg = (
        f"MODEL.KD.TEACHER.WEIGHTS: the teacher file {_teacher_weights(cfg)} changed since this "
        f"run started: sha256 {now} now, {before} in {path}. Resuming would distil the rest of "
        "the run from another teacher"
    )
    if not cfg.MODEL.KD.TEACHER.ALLOW_CHANGED_WEIGHTS:
        raise ValueError(
            f"{msg}; restore that file, train into a new OUTPUT_DIR, or set "
            "MODEL.KD.TEACHER.ALLOW_CHANGED_WEIGHTS True to resume anyway"
        )
    logger.warning(f"{msg} (allowed by MODEL.KD.TEACHER.ALLOW_CHANGED_WEIGHTS)")


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
        "teacher_weights_sha256": teacher_weights_sha256(cfg),
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
            **_library_versions(),
        },
    }


def _library_versions() -> dict:
    """Versions of the other libraries a stage's numbers depend on (image decoding and resizing,
    COCO evaluation, OpenCV, which draws the synthetic shapes images), the Python version, the CPU
    model and the instruction set PyTorch's CPU kernels use (``cpu_capability``, e.g. AVX2 or
    AVX512: two CPUs both named "AMD EPYC" may differ there, and kernels of different widths round
    differently): what ``tools/compare.py`` compares between the stages it pairs. A library that
    is not installed reads "absent"."""
    import platform
    from importlib import metadata

    out = {"python": platform.python_version(), "cpu": _cpu_model()}
    out["cpu_capability"] = _cpu_capability()
    for name in ("torchvision", "numpy", "pillow", "pycocotools"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    out["opencv"] = _opencv_version()
    return out


def _cpu_capability() -> str:
    """The SIMD level of PyTorch's CPU kernels ("AVX2", "AVX512", "DEFAULT", ...), or "unknown"
    on a PyTorch without ``torch.backends.cpu.get_cpu_capability``."""
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except AttributeError:
        return "unknown"


def _opencv_version() -> str:
    """``cv2.__version__``, whichever of the OpenCV wheels provides it, or "absent"."""
    try:
        import cv2
    except ImportError:
        return "absent"
    return str(getattr(cv2, "__version__", "unknown"))


def _cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else platform.processor()."""
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


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
