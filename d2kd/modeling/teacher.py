"""
Building, loading, freezing and running the teacher.

The teacher is a stock detector built from its own config file. It is frozen (``requires_grad``
False), always in eval mode, run under ``torch.no_grad()``, and kept *outside* the distillation
model's module tree (see :class:`DistillDetector`), so it is never in the optimizer, never
wrapped by DDP and never written into the student's checkpoints.
"""

import logging
import os
from typing import Any, Dict, List, Tuple

import torch
from detectron2.config import CfgNode
from detectron2.modeling import build_model
from detectron2.modeling.meta_arch.dense_detector import DenseDetector
from detectron2.structures import ImageList
from torch import nn

from ..utils.checkpoint import DEFAULT_DOWNLOAD_TIMEOUT, describe_incompatible
from .foreign_weights import ConvertingCheckpointer, check_weights_format

__all__ = [
    "resolve_config_path",
    "zoo_config_path",
    "zoo_weights_url",
    "teacher_weights_path",
    "load_teacher_cfg",
    "load_lazy_teacher_cfg",
    "lazy_config_of",
    "build_teacher",
    "load_teacher_weights",
    "freeze",
    "teacher_run_mode",
    "run_teacher",
]

logger = logging.getLogger(__name__)


def resolve_config_path(path: str, setting: str = "MODEL.KD.TEACHER.CONFIG_FILE") -> str:
    """
    ``path`` as given, else relative to the d2kd checkout (so ``configs/...`` works anywhere), else
    a Detectron2 model-zoo config name (``COCO-Detection/faster_rcnn_R_101_FPN_3x.yaml``, shipped
    inside the detectron2 package, so this works offline).
    """
    if os.path.isfile(path):
        return path
    repo_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    candidate = os.path.join(repo_root, path)
    if not os.path.isabs(path) and os.path.isfile(candidate):
        return candidate
    zoo = zoo_config_path(path)
    if zoo:
        return zoo
    raise FileNotFoundError(
        f"{setting}: no such file: {path} (looked for it as given, under {repo_root} and in "
        "Detectron2's model zoo)"
    )


def zoo_config_path(name: str) -> str:
    """The file of Detectron2 model-zoo config ``name`` (.yaml, or LazyConfig .py) inside the
    package, or "" if none."""
    if os.path.isabs(name) or not name.endswith((".yaml", ".py")):
        return ""
    try:
        from detectron2 import model_zoo

        return model_zoo.get_config_file(name)
    except RuntimeError:  # "<name> not available in Model Zoo!"
        return ""


def zoo_weights_url(cfg: CfgNode) -> str:
    """
    The URL of the trained model-zoo weights of ``MODEL.KD.TEACHER.CONFIG_FILE``, for
    ``MODEL.KD.TEACHER.WEIGHTS_FROM_ZOO`` (resolved only, nothing is downloaded here).
    """
    from detectron2 import model_zoo

    kd = cfg.MODEL.KD.TEACHER
    if kd.WEIGHTS:
        raise ValueError(
            f"MODEL.KD.TEACHER.WEIGHTS_FROM_ZOO is set but MODEL.KD.TEACHER.WEIGHTS is "
            f'"{kd.WEIGHTS}" too: set one of them (WEIGHTS "" to take the zoo\'s weights)'
        )
    if not zoo_config_path(kd.CONFIG_FILE):
        raise ValueError(
            f"MODEL.KD.TEACHER.WEIGHTS_FROM_ZOO needs MODEL.KD.TEACHER.CONFIG_FILE to be a "
            "Detectron2 model-zoo config name "
            f'(e.g. "COCO-Detection/retinanet_R_101_FPN_3x.yaml"), '
            f'got "{kd.CONFIG_FILE}"'
        )
    try:
        return model_zoo.get_checkpoint_url(kd.CONFIG_FILE)
    except RuntimeError as e:
        raise ValueError(
            f"MODEL.KD.TEACHER.WEIGHTS_FROM_ZOO: the model zoo has no trained weights for "
            f"{kd.CONFIG_FILE} ({e})"
        ) from None


def teacher_weights_path(cfg: CfgNode) -> str:
    """``MODEL.KD.TEACHER.WEIGHTS``, or the zoo URL under ``WEIGHTS_FROM_ZOO`` ("" for none)."""
    kd = cfg.MODEL.KD.TEACHER
    return zoo_weights_url(cfg) if kd.WEIGHTS_FROM_ZOO else kd.WEIGHTS


def load_teacher_cfg(cfg: CfgNode) -> CfgNode:
    """The teacher's config: d2kd defaults + ``KD.TEACHER.CONFIG_FILE`` + ``KD.TEACHER.OPTS``."""
    from d2kd.config import load_config_file

    path = cfg.MODEL.KD.TEACHER.CONFIG_FILE
    if not path:
        raise ValueError(
            "MODEL.KD.TEACHER.CONFIG_FILE is empty: a distillation config must name the teacher's "
            "config file"
        )
    path = resolve_config_path(path)
    if path.endswith(".py"):
        return load_lazy_teacher_cfg(cfg, path)
    tcfg = load_config_file(path)  # safe YAML only, _BASE_ chain included
    tcfg.merge_from_list(list(cfg.MODEL.KD.TEACHER.OPTS))
    if tcfg.MODEL.META_ARCHITECTURE == "DistillDetector":
        raise ValueError(
            f"teacher config {path} is itself a DistillDetector; point at the teacher's own config"
        )
    tcfg.MODEL.DEVICE = cfg.MODEL.DEVICE  # the teacher lives on each rank's own device
    tcfg.MODEL.WEIGHTS = ""  # loaded strictly by load_teacher_weights
    return tcfg


def _inside_installed_model_zoo(path: str) -> bool:
    """Whether ``path`` is one of the configs shipped inside the installed detectron2 package."""
    from detectron2 import model_zoo

    zoo = os.path.realpath(os.path.join(os.path.dirname(model_zoo.__file__), "configs"))
    return os.path.realpath(path).startswith(zoo + os.sep)


_LAZY_KEY = "_d2kd_lazy_config"


def lazy_config_of(tcfg: CfgNode):
    """The LazyConfig (omegaconf) a teacher config came from, or None for a yacs config."""
    return tcfg.__dict__.get(_LAZY_KEY)


def load_lazy_teacher_cfg(cfg: CfgNode, path: str) -> CfgNode:
    """
    A teacher from a Detectron2 LazyConfig ``.py`` (``path`` resolved): its ``model`` with
    ``MODEL.KD.TEACHER.OPTS`` as LazyConfig overrides (``key=value``). Loading a ``.py`` runs it:
    only the model zoo's files (inside the installed detectron2 package) are loaded unless
    ``MODEL.KD.TEACHER.ALLOW_PYTHON_CONFIG``; the refusal comes before anything is read.

    Returns:
        a yacs config holding what d2kd reads of a teacher config (``MODEL.META_ARCHITECTURE``:
        the model's class name, ``INPUT.FORMAT``, ``MODEL.DEVICE``); :func:`lazy_config_of`
        gives the LazyConfig itself.
    """
    from d2kd.config import get_d2kd_cfg

    kd = cfg.MODEL.KD.TEACHER
    if not kd.ALLOW_PYTHON_CONFIG and not _inside_installed_model_zoo(path):
        raise ValueError(
            f"MODEL.KD.TEACHER.CONFIG_FILE: {path} is a Python (LazyConfig) file, and loading it "
            "would run its code. d2kd loads .py configs only from Detectron2's model zoo (inside "
            "the installed detectron2 package); for a file you trust as your own code, set "
            "MODEL.KD.TEACHER.ALLOW_PYTHON_CONFIG True"
        )
    opts = [str(o) for o in kd.OPTS]
    bad = [o for o in opts if "=" not in o]
    if bad:
        raise ValueError(
            f"MODEL.KD.TEACHER.OPTS: a LazyConfig teacher ({path}) takes key=value overrides "
            f"(e.g. model.backbone.bottom_up.stages.depth=50); got {bad}"
        )
    callables = [o for o in opts if "_target_" in o]
    if callables and not kd.ALLOW_PYTHON_CONFIG:
        raise ValueError(
            f"MODEL.KD.TEACHER.OPTS: {callables} name a callable (_target_), which instantiating "
            "the teacher would call: refused, like a .py file of your own, unless "
            "MODEL.KD.TEACHER.ALLOW_PYTHON_CONFIG True"
        )
    from detectron2.config import LazyConfig

    lazy = LazyConfig.apply_overrides(LazyConfig.load(path), opts)
    if "model" not in lazy:
        raise ValueError(f"MODEL.KD.TEACHER.CONFIG_FILE: LazyConfig {path} defines no 'model'")
    tcfg = get_d2kd_cfg()
    target = lazy.model.get("_target_", "")
    tcfg.MODEL.META_ARCHITECTURE = getattr(target, "__name__", str(target).rsplit(".", 1)[-1])
    tcfg.INPUT.FORMAT = lazy.model.get("input_format", tcfg.INPUT.FORMAT)
    tcfg.MODEL.DEVICE = cfg.MODEL.DEVICE
    tcfg.MODEL.WEIGHTS = ""
    tcfg.__dict__[_LAZY_KEY] = lazy
    return tcfg


def _build_teacher_model(tcfg: CfgNode) -> nn.Module:
    lazy = lazy_config_of(tcfg)
    if lazy is None:
        return build_model(tcfg)
    from detectron2.config import instantiate

    return instantiate(lazy.model).to(torch.device(tcfg.MODEL.DEVICE))


SETTING = "MODEL.KD.TEACHER.WEIGHTS"


def _refuse_distillation_checkpoint(path: str, incompatible) -> None:
    unexpected = list(incompatible.unexpected_keys) if incompatible is not None else []
    if unexpected and any(k.startswith("student.") for k in unexpected):
        raise ValueError(
            f"{SETTING}: {path} is a d2kd distillation checkpoint "
            "(its keys start with 'student.'), "
            "not a detector's own checkpoint. Write the student's weights first, then use that "
            f"file as the teacher: python tools/extract_student.py {path} teacher.pth"
        )


def load_teacher_weights(
    teacher: nn.Module,
    path: str,
    weights_format: str = "auto",
    tcfg: CfgNode = None,
    download_timeout: float = DEFAULT_DOWNLOAD_TIMEOUT,
) -> None:
    """
    Load ``path`` (any form Detectron2's checkpointer takes: local path, ``detectron2://``,
    ``https://``, another PathManager prefix) into ``teacher``, strictly and without executing
    code from the file. A checkpoint of another framework (``weights_format`` "auto": recognised
    by its contents; or a format name) is converted onto ``teacher`` (built from ``tcfg``) first.

    Raises:
        FileNotFoundError / OSError: the file does not exist or cannot be fetched.
        UnsafeCheckpointError / BrokenCheckpointError: see :mod:`d2kd.utils.safe_load`.
        ValueError: some keys are missing, unexpected or of the wrong shape, or source keys of a
            converted file are unmapped (all are named); an unknown format (the known ones
            listed).
    """
    checkpointer = ConvertingCheckpointer(
        teacher,
        setting=SETTING,
        weights_format=weights_format,
        cfg=tcfg,
        download_timeout=download_timeout,
    )
    checkpointer.load(path)  # checks existence first
    incompatible = checkpointer.incompatible
    if incompatible is None:
        raise ValueError(f"{SETTING}: teacher checkpoint {path} holds no model weights")
    _refuse_distillation_checkpoint(path, incompatible)
    problems = describe_incompatible(incompatible)
    if checkpointer.unmapped:
        problems.insert(
            0,
            f"source keys the {checkpointer.converted_from} converter does not map "
            f"{checkpointer.unmapped}",
        )
    if checkpointer.converted_from:
        path = f"{path} (converted from {checkpointer.converted_from})"
    if problems:
        raise ValueError(
            f"{SETTING}: teacher checkpoint {path} does not match the teacher config: "
            + "; ".join(problems)
        )
    logger.info(f"Loaded teacher weights from {path} (all keys matched)")


def freeze(model: nn.Module) -> nn.Module:
    """Turn off gradients and put ``model`` (norm layers included) in eval mode."""
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def build_teacher(cfg: CfgNode) -> Tuple[nn.Module, CfgNode]:
    """
    Build the frozen teacher described by ``cfg.MODEL.KD.TEACHER``.

    Returns:
        (teacher, teacher_cfg)
    """
    tcfg = load_teacher_cfg(cfg)
    teacher = _build_teacher_model(tcfg)
    kd = cfg.MODEL.KD.TEACHER
    check_weights_format(kd.WEIGHTS_FORMAT)  # also when no weights are loaded
    if kd.LOAD_WEIGHTS:
        weights = teacher_weights_path(cfg)
        if weights:
            load_teacher_weights(
                teacher, weights, kd.WEIGHTS_FORMAT, tcfg, cfg.MODEL.DOWNLOAD_TIMEOUT
            )
        elif not kd.ALLOW_RANDOM_INIT:
            raise ValueError(
                "MODEL.KD.TEACHER.WEIGHTS is empty: distilling from a randomly initialised teacher "
                "is almost certainly a mistake (name the weights, set "
                "MODEL.KD.TEACHER.WEIGHTS_FROM_ZOO True for a model-zoo CONFIG_FILE, or set "
                "MODEL.KD.TEACHER.ALLOW_RANDOM_INIT True to allow it)"
            )
        else:
            logger.warning(
                "The teacher is randomly initialised (MODEL.KD.TEACHER.ALLOW_RANDOM_INIT)"
            )
    return freeze(teacher), tcfg


def teacher_run_mode(teacher: nn.Module, mode: str) -> str:
    """Resolve ``MODEL.KD.TEACHER.RUN`` ("auto" picks by the teacher's type)."""
    valid = ("auto", "dense", "backbone", "distill")
    if mode not in valid:
        raise ValueError(f'MODEL.KD.TEACHER.RUN = "{mode}" is not one of {valid}')
    if mode == "auto":
        if hasattr(teacher, "forward_distill"):
            return "distill"
        return "dense" if isinstance(teacher, DenseDetector) else "backbone"
    if mode == "dense" and not isinstance(teacher, DenseDetector):
        raise ValueError(
            f'MODEL.KD.TEACHER.RUN "dense" needs a DenseDetector, got {type(teacher).__name__}'
        )
    if mode == "distill" and not hasattr(teacher, "forward_distill"):
        raise ValueError(
            f'MODEL.KD.TEACHER.RUN "distill": {type(teacher).__name__} has no forward_distill'
        )
    return mode


def flip_channels_if_needed(
    batched_inputs: List[Dict[str, Any]], src: str, dst: str
) -> List[Dict[str, Any]]:
    """Inputs come in the student's ``INPUT.FORMAT``; give the teacher its own (RGB <-> BGR)."""
    if src == dst:
        return batched_inputs
    return [dict(x, image=x["image"].flip(0)) for x in batched_inputs]


def run_teacher(
    teacher: nn.Module, mode: str, batched_inputs: List[Dict[str, Any]]
) -> Tuple[ImageList, Any]:
    """
    Run the teacher on a batch, without gradients; recorders attached to it see every tap.

    Args:
        mode: a resolved run mode (see :func:`teacher_run_mode`).
        batched_inputs: inputs already in the teacher's input format.
    Returns:
        (images, output): the teacher's padded ImageList and what the run returned:
        "dense" -> (features list, head predictions, anchors); "backbone" -> feature dict;
        "distill" -> ``teacher.forward_distill(batched_inputs)``.
    """
    with torch.no_grad():
        if mode == "distill":
            return teacher.forward_distill(batched_inputs)
        images = teacher.preprocess_image(batched_inputs)
        features = teacher.backbone(images.tensor)
        if mode == "backbone":
            return images, features
        features = [features[f] for f in teacher.head_in_features]
        predictions = teacher.head(features)
        anchors = teacher.anchor_generator(features)
        return images, (features, predictions, anchors)
