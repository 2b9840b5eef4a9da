"""GFL from its yacs config on CPU: decoding, taps, training steps, eval, and as a KD
teacher/student."""

import pytest

pytest.importorskip("detectron2", reason="integration test: Detectron2 cannot be imported")

import math  # noqa: E402

import torch  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.structures import Boxes  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

from d2kd.modeling import decode_boxes, dense_outputs  # noqa: E402
from d2kd.modeling.meta_arch.gfl import GFL  # noqa: E402
from d2kd.modeling.recorder import TapRecorder  # noqa: E402

from tests.integration.common import (  # noqa: E402
    make_batch,
    tiny_cfg,
    tiny_dense_opts,
    tiny_shapes,
)

CFG = "shapes/gfl_R18.yaml"
LN2 = math.log(2.0)
TINY = tiny_dense_opts("GFL")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_shapes(str(tmp_path_factory.mktemp("shapes")), n=4)


@pytest.fixture(scope="module")
def model_and_cfg():
    cfg = tiny_cfg(CFG, TINY)
    torch.manual_seed(0)
    return build_model(cfg), cfg


def test_built_from_yacs(model_and_cfg):
    model, _ = model_and_cfg
    assert isinstance(model, GFL) and model.num_classes == 4 and model.reg_max == 16
    assert model.kd_head_output_dims == [4, 68]
    assert model.head.bbox_pred.out_channels == 68 and len(model.head.scales) == 5
    for tower in (model.head.cls_subnet, model.head.bbox_subnet):
        assert [type(m).__name__ for m in tower[:3]] == ["Conv2d", "GroupNorm", "ReLU"]
    feats = [torch.zeros(1, 1, 8 // 2**i or 1, 8 // 2**i or 1) for i in range(5)]
    anchors = model.anchor_generator(feats)
    assert anchors[0].tensor[0].tolist() == [-32.0, -32.0, 32.0, 32.0]  # offset 0, 8 x stride
    assert anchors[1].tensor[1].tolist() == [-48.0, -64.0, 80.0, 64.0]  # P4: centre (16, 0)


def test_kd_decode_boxes_by_hand(model_and_cfg):
    model, _ = model_and_cfg
    # A P3 anchor centred (8, 0) and a P5 anchor centred (32, 32); all mass on bins 1, 2, 3, 4.
    anchors = torch.tensor([[-24.0, -32, 40, 32], [-96.0, -96, 160, 160]])
    logits = torch.full((1, 2, 4, 17), -40.0)
    for side, k in enumerate([1, 2, 3, 4]):
        logits[..., side, k] = 0.0
    boxes = model.kd_decode_boxes(logits.reshape(1, 2, 68), anchors)
    # ltrb (1, 2, 3, 4) strides: stride 8 -> (8-8, 0-16, 8+24, 0+32); stride 32 -> 32 -/+ (32, 64,
    # 96, 128).
    expected = torch.tensor([[[0.0, -16, 32, 32], [0, -32, 128, 160]]])
    assert torch.allclose(boxes, expected, atol=1e-3)
    assert torch.allclose(
        decode_boxes(model, logits.reshape(1, 2, 68), anchors), expected, atol=1e-3
    )


def test_losses_by_hand(model_and_cfg):
    model, _ = model_and_cfg
    # Anchor 0 (P3, stride 8, centre (8, 0)) is a positive of class 1 with GT (0, -16, 32, 32),
    # i.e. (0, -2, 4, 4) in strides; anchor 1 is background. All logits 0: scores 0.5, uniform
    # distributions, so every side decodes to 8 strides: box (-7, -8, 9, 8) in strides.
    anchors = [Boxes(torch.tensor([[-24.0, -32, 40, 32], [40.0, 40, 104, 104]]))]
    labels = [torch.tensor([1, 4])]
    gt_boxes = [torch.tensor([[0.0, -16, 32, 32], [0, 0, 0, 0]])]
    with EventStorage(0):
        losses = model.losses(
            anchors, [torch.zeros(1, 2, 4)], labels, [torch.zeros(1, 2, 68)], gt_boxes
        )
    # IoU = (4 * 6) / 256; the box contains the GT, so GIoU = IoU.
    iou = 24 / 256
    # QFL: BCE at logit 0 is ln 2 for any target; factors (iou - 0.5)^2 once, 0.5^2 seven times;
    # one positive -> normaliser 1.
    assert losses["loss_gfl_cls"].item() == pytest.approx(
        ((0.5 - iou) ** 2 + 7 * 0.25) * LN2, rel=1e-5
    )
    # GIoU x weight 0.5 (max score), / max(sum of weights, 1) = 1, x loss weight 2.
    assert losses["loss_gfl_bbox"].item() == pytest.approx(2 * 0.5 * (1 - iou), rel=1e-5)
    # DFL: integer targets 1, 2, 3, 4 -> ln 17 per side; mean over sides x 0.5 x 0.25.
    assert losses["loss_gfl_dfl"].item() == pytest.approx(0.25 * 0.5 * math.log(17), rel=1e-5)


def test_empty_image_taps_and_post_scale_outputs(model_and_cfg, data):
    model, cfg = model_and_cfg
    model.train()
    batch = make_batch(cfg, data[:2])
    batch[1]["instances"] = batch[1]["instances"][:0]
    taps = ["head", "head.bbox_subnet.2", "head.bbox_pred", "anchor_generator", "label_anchors()"]
    rec = TapRecorder(model, taps)
    with torch.no_grad():
        model.head.scales[0].scale.fill_(2.0)
    try:
        with EventStorage(0), rec:
            losses = model(batch)
    finally:
        rec.close()
        with torch.no_grad():
            model.head.scales[0].scale.fill_(1.0)
    assert all(torch.isfinite(v) for v in losses.values())
    labels, _ = rec.get("label_anchors()")
    assert (labels[1] == model.num_classes).all() and (labels[0] < model.num_classes).any()
    # The head returns the regression logits after the per-level scale (x2 on P3 here).
    _, bbox_reg = rec.get("head")
    assert torch.allclose(bbox_reg[0], 2.0 * rec.get_all("head.bbox_pred")[0])
    flat = dense_outputs(model, rec.get("head"), rec.get("anchor_generator"))
    assert flat.box_reg.shape == (2, flat.anchors.shape[0], 68) and flat.extras == []


@pytest.mark.parametrize(
    "path", ["Base-GFL.yaml", "shapes/gfl_R50.yaml", "quick_schedules/gfl_instant_test.yaml"]
)
def test_gfl_configs_merge(path):
    cfg = tiny_cfg(path)
    cfg.freeze()
    assert cfg.MODEL.META_ARCHITECTURE == "GFL"
    assert cfg.MODEL.GFL.REG_MAX == 16 and cfg.MODEL.GFL.DFL_LOSS_WEIGHT == 0.25
