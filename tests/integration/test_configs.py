"""Every YAML under configs/ merges over d2kd's defaults and names registered losses and an existing
teacher config of the student's architecture; the defaults are what the code expects."""

import glob
import os

import pytest

pytest.importorskip("detectron2", reason="integration test: Detectron2 cannot be imported")

from detectron2.config import get_cfg  # noqa: E402

from d2kd.config import add_d2kd_config, get_d2kd_cfg, load_config_file  # noqa: E402
from d2kd.modeling.losses import DISTILL_LOSS_REGISTRY  # noqa: E402
from d2kd.modeling.teacher import resolve_config_path  # noqa: E402

from tests.integration.common import REPO, config_path  # noqa: E402

CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "**", "*.yaml"), recursive=True))


def _same_detector(teacher_arch: str, student_arch: str) -> bool:
    """The teacher's meta-architecture is the student's or a subclass of it (e.g.
    ``D2KDRetinaNet``, RetinaNet with mmdet's test-time box clipping)."""
    from detectron2.modeling import META_ARCH_REGISTRY

    import d2kd.modeling  # noqa: F401  (registers d2kd's meta-architectures)

    return issubclass(META_ARCH_REGISTRY.get(teacher_arch), META_ARCH_REGISTRY.get(student_arch))


def _merge(path):
    return load_config_file(path)  # safe YAML: no repository config needs a !!python tag


def test_there_are_configs():
    assert len(CONFIGS) >= 80


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.relpath(p, REPO))
def test_every_config_merges(path):
    cfg = _merge(path)
    cfg.freeze()
    if cfg.MODEL.META_ARCHITECTURE != "DistillDetector":
        return
    kd = cfg.MODEL.KD
    assert kd.LOSSES and len(kd.LOSSES) == len(kd.LOSS_WEIGHTS)
    assert all(name in DISTILL_LOSS_REGISTRY for name in kd.LOSSES), kd.LOSSES
    if os.path.basename(path).startswith("Base-"):
        if {"PGDLoss", "FGDLoss"} & set(kd.LOSSES):
            assert kd.INHERIT.ENABLED, "PGD and FGD configs inherit the teacher's neck and head"
        return  # bases leave the teacher to their leaves
    teacher_file = resolve_config_path(kd.TEACHER.CONFIG_FILE)  # a model-zoo name too
    assert os.path.isfile(teacher_file), teacher_file
    teacher = _merge(teacher_file)
    teacher.merge_from_list(list(kd.TEACHER.OPTS))
    arch = teacher.MODEL.META_ARCHITECTURE
    if _same_detector(arch, kd.STUDENT_META_ARCHITECTURE):
        arch = kd.STUDENT_META_ARCHITECTURE  # a variant (mmdet's test-time clipping) of it
    if arch != kd.STUDENT_META_ARCHITECTURE:
        # Across architectures (Faster R-CNN -> RetinaNet): FGD on the levels both FPNs share.
        assert not kd.INHERIT.ENABLED and kd.LOSSES == ["FGDLoss"]
        assert list(kd.FGD.KEYS) == ["p3", "p4", "p5"]
        return
    if {"PGDLoss", "FGDLoss"} & set(kd.LOSSES):
        assert kd.INHERIT.ENABLED, "PGD and FGD configs inherit the teacher's neck and head"
        if arch == "GeneralizedRCNN":  # FGD's two-stage levels: P2-P5
            assert kd.LOSSES == ["FGDLoss"] and list(kd.FGD.KEYS) == ["p2", "p3", "p4", "p5"]
        else:
            assert len(kd.PGD.LEVEL_WEIGHTS) == len(kd.FGD.KEYS) == 5


def test_add_config_does_not_touch_detectron2_defaults():
    cfg = get_cfg()
    add_d2kd_config(cfg)
    assert "KD" in cfg.MODEL and "FCOS" in cfg.MODEL and "ATSS" in cfg.MODEL
    assert "KD" not in get_cfg().MODEL  # Detectron2's global defaults are unchanged


def test_kd_defaults():
    kd = get_d2kd_cfg().MODEL.KD
    assert kd.LOSSES == [] and kd.LOSS_WEIGHTS == []
    assert kd.TEACHER.LOAD_WEIGHTS and not kd.TEACHER.ALLOW_RANDOM_INIT
    assert kd.TEACHER.RUN == "auto" and kd.STOP_ITER == -1


def test_pgd_coco_configs_carry_the_rescaled_reference_weights():
    fcos = _merge(config_path("pgd/pgd_fcos_R101_to_R50_1x.yaml")).MODEL.KD.PGD
    atss = _merge(config_path("pgd/pgd_atss_R101_to_R50_1x.yaml")).MODEL.KD.PGD
    # Reference alpha/beta x 4 images per GPU (batch-mixing calibration), gamma/delta as is.
    assert (fcos.ALPHA, fcos.BETA, fcos.GAMMA, fcos.DELTA, fcos.TOPK) == (
        0.16,
        0.08,
        0.064,
        0.0008,
        30,
    )
    assert (atss.ALPHA, atss.BETA, atss.GAMMA, atss.TOPK) == (0.32, 0.16, 0.128, 9)


SHAPES = [p for p in CONFIGS if os.sep + "shapes" + os.sep in p]


def test_a_killed_shapes_run_keeps_an_intermediate_checkpoint():
    """--resume is useful only with a checkpoint before model_final (issue 21: the period was
    100000 for runs of 600-1000 iterations)."""
    assert len(SHAPES) > 20
    for path in SHAPES:
        solver = _merge(path).SOLVER
        assert solver.CHECKPOINT_PERIOD <= solver.MAX_ITER // 2, os.path.relpath(path, REPO)
