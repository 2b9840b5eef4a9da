"""Every YAML under configs/ merges over d2kd's defaults; the defaults are what the code expects."""

import glob
import os

import pytest

pytest.importorskip("detectron2", reason="integration test: Detectron2 cannot be imported")

from detectron2.config import get_cfg  # noqa: E402

from d2kd.config import add_d2kd_config, get_d2kd_cfg  # noqa: E402
from d2kd.modeling.teacher import resolve_config_path  # noqa: E402

from tests.integration.common import REPO  # noqa: E402

CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "**", "*.yaml"), recursive=True))


def test_there_are_configs():
    assert len(CONFIGS) >= 8


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.relpath(p, REPO))
def test_every_config_merges(path):
    cfg = get_d2kd_cfg()
    cfg.merge_from_file(path)
    cfg.freeze()
    if cfg.MODEL.META_ARCHITECTURE == "DistillDetector":
        kd = cfg.MODEL.KD
        assert len(kd.LOSSES) == len(kd.LOSS_WEIGHTS)
        if os.path.basename(path).startswith("Base-"):
            return  # bases leave the teacher to their leaves
        teacher = get_d2kd_cfg()
        teacher.merge_from_file(resolve_config_path(kd.TEACHER.CONFIG_FILE))
        teacher.merge_from_list(list(kd.TEACHER.OPTS))
        assert teacher.MODEL.META_ARCHITECTURE != "DistillDetector"


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
