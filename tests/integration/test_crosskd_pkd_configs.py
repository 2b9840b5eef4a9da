"""Every CrossKD / PKD config merges, and carries the official per-detector settings (spec 2.9,
4)."""

import glob
import os

import pytest

pytest.importorskip("detectron2", reason="integration test: Detectron2 cannot be imported")

from d2kd.config import get_d2kd_cfg  # noqa: E402

from tests.integration.common import REPO  # noqa: E402

PATTERNS = ["crosskd/*.yaml", "pkd/*.yaml", "shapes/kd/crosskd_*.yaml", "shapes/kd/pkd_*.yaml"]
FILES = sorted(f for p in PATTERNS for f in glob.glob(os.path.join(REPO, "configs", p)))

# detector -> (k, cls weight, reg loss, reg weight, ctr weight, normaliser, PKD weight)
OFFICIAL = {
    "gfl": (3, 1.0, "kl", 1.0, 0.0, "pos", 6.0),
    "retinanet": (3, 1.0, "giou", 1.0, 0.0, "pos_per_gpu", 2.0),
    "fcos": (2, 0.4, "iou_log", 0.75, 0.0, "centerness", 2.0),
    "atss": (3, 1.0, "giou", 1.0, 1.0, "pos", 1.0),
}


def _load(path):
    cfg = get_d2kd_cfg()
    cfg.merge_from_file(path)
    return cfg


def _detector(path):
    name = os.path.basename(path)
    return next(d for d in OFFICIAL if f"_{d}_" in name)


@pytest.mark.parametrize("path", FILES, ids=[os.path.relpath(f, REPO) for f in FILES])
def test_config_merges_and_names_existing_teacher_config(path):
    cfg = _load(path)
    assert cfg.MODEL.META_ARCHITECTURE == "DistillDetector"
    assert os.path.isfile(os.path.join(REPO, cfg.MODEL.KD.TEACHER.CONFIG_FILE))
    assert len(cfg.MODEL.KD.LOSSES) == len(cfg.MODEL.KD.LOSS_WEIGHTS)
    assert not cfg.MODEL.KD.INHERIT.ENABLED  # neither method inherits teacher weights


CROSSKD = [f for f in FILES if "crosskd" in os.path.basename(f)]


@pytest.mark.parametrize("path", CROSSKD, ids=[os.path.relpath(f, REPO) for f in CROSSKD])
def test_crosskd_configs_carry_the_official_settings(path):
    cfg = _load(path)
    k, cls_w, reg, reg_w, ctr_w, norm, pkd_w = OFFICIAL[_detector(path)]
    c = cfg.MODEL.KD.CROSSKD
    assert (c.CROSS_BLOCK, c.CLS_WEIGHT, c.REG_LOSS, c.REG_WEIGHT) == (k, cls_w, reg, reg_w)
    assert (c.CTR_WEIGHT, c.NORMALIZER) == (ctr_w, norm)
    assert c.EMULATE_POST_RELU_HOLD == path.endswith("_posthold.yaml")
    if "pkd" in os.path.basename(path):
        assert cfg.MODEL.KD.LOSSES == ["CrossKDLoss", "PKDLoss"]
        assert cfg.MODEL.KD.LOSS_WEIGHTS == [1.0, pkd_w]
        assert list(cfg.MODEL.KD.PKD.KEYS) == ["p3", "p4", "p5", "p6", "p7"]
    else:
        assert cfg.MODEL.KD.LOSSES == ["CrossKDLoss"]


COCO = [f for f in CROSSKD if "/shapes/" not in f]


@pytest.mark.parametrize("path", COCO, ids=[os.path.relpath(f, REPO) for f in COCO])
def test_coco_schedules(path):
    cfg = _load(path)
    s = cfg.SOLVER
    assert (s.IMS_PER_BATCH, s.BASE_LR, s.WARMUP_ITERS) == (16, 0.01, 500)
    if "_2x" in path:
        assert (s.MAX_ITER, tuple(s.STEPS)) == (176000, (117300, 161200))
    else:
        assert (s.MAX_ITER, tuple(s.STEPS)) == (90000, (60000, 80000))
    if "fcos" in path:
        assert s.CLIP_GRADIENTS.ENABLED and s.CLIP_GRADIENTS.CLIP_VALUE == 35.0
        assert (s.BIAS_LR_FACTOR, s.WEIGHT_DECAY_BIAS, s.WARMUP_METHOD) == (2.0, 0.0, "constant")
        assert tuple(cfg.INPUT.MIN_SIZE_TRAIN) == (640, 800)
    else:
        assert not s.CLIP_GRADIENTS.ENABLED
        assert tuple(cfg.INPUT.MIN_SIZE_TRAIN) == (800,)
