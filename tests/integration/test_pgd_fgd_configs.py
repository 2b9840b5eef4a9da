"""Every PGD/FGD config merges, names registered losses and an existing teacher config."""

import glob
import os

import pytest
import torch

pytest.importorskip("detectron2", reason="integration test: Detectron2 cannot be imported")

from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402

from d2kd.config import get_d2kd_cfg  # noqa: E402
from d2kd.modeling.losses import DISTILL_LOSS_REGISTRY  # noqa: E402
from d2kd.modeling.teacher import resolve_config_path  # noqa: E402

from tests.integration.common import REPO, config_path  # noqa: E402

KD_CONFIGS = sorted(
    glob.glob(config_path("pgd/pgd_*.yaml"))
    + glob.glob(config_path("fgd/fgd_*.yaml"))
    + glob.glob(config_path("shapes/kd/pgd_*.yaml"))
    + glob.glob(config_path("shapes/kd/fgd_*.yaml"))
)


def _merge(path):
    cfg = get_d2kd_cfg()
    cfg.merge_from_file(path)
    return cfg


@pytest.mark.parametrize("path", KD_CONFIGS, ids=[os.path.relpath(p, REPO) for p in KD_CONFIGS])
def test_kd_config_merges_and_names_its_parts(path):
    cfg = _merge(path)
    kd = cfg.MODEL.KD
    assert cfg.MODEL.META_ARCHITECTURE == "DistillDetector"
    assert all(name in DISTILL_LOSS_REGISTRY for name in kd.LOSSES)
    assert len(kd.LOSSES) == len(kd.LOSS_WEIGHTS)
    teacher = _merge(resolve_config_path(kd.TEACHER.CONFIG_FILE))
    two_stage = "GeneralizedRCNN" in (kd.STUDENT_META_ARCHITECTURE, teacher.MODEL.META_ARCHITECTURE)
    if teacher.MODEL.META_ARCHITECTURE != kd.STUDENT_META_ARCHITECTURE:
        # Across architectures (Faster R-CNN -> RetinaNet): FGD on the levels both FPNs share.
        assert not kd.INHERIT.ENABLED and kd.LOSSES == ["FGDLoss"]
        assert list(kd.FGD.KEYS) == ["p3", "p4", "p5"]
        return
    assert kd.INHERIT.ENABLED, "PGD and FGD configs inherit the teacher's neck and head"
    if two_stage:  # FGD's two-stage levels: P2-P5
        assert kd.LOSSES == ["FGDLoss"] and list(kd.FGD.KEYS) == ["p2", "p3", "p4", "p5"]
    else:
        assert len(kd.PGD.LEVEL_WEIGHTS) == len(kd.FGD.KEYS) == 5


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


def test_torchvision_mobilenet_v2_checkpoint_loads_by_suffix(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    cfg = get_d2kd_cfg()
    cfg.merge_from_file(config_path("shapes/fcos_R18.yaml"))
    cfg.merge_from_list(
        ["MODEL.BACKBONE.NAME", "build_mobilenetv2_fpn_backbone", "MODEL.DEVICE", "cpu"]
    )
    model = build_model(cfg)
    reference = torchvision.models.mobilenet_v2(weights=None).state_dict()
    path = str(tmp_path / "mobilenet_v2.pth")
    torch.save(reference, path)
    DetectionCheckpointer(model).load(path + "?matching_heuristics=True")
    loaded = model.backbone.bottom_up.state_dict()
    for key in ("features.0.0.weight", "features.7.conv.1.0.weight", "features.18.1.running_var"):
        assert torch.equal(loaded[key], reference[key]), key
