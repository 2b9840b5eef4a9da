"""ATSS from its yacs config on CPU: anchors, taps, training steps, eval, and as a KD
teacher/student."""

import pytest

pytest.importorskip("detectron2", reason="integration test: Detectron2 cannot be imported")

import math  # noqa: E402

import torch  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.structures import Boxes, Instances  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

from d2kd.modeling import dense_outputs  # noqa: E402
from d2kd.modeling.meta_arch.atss import ATSS, centerness_targets  # noqa: E402
from d2kd.modeling.recorder import TapRecorder  # noqa: E402

from tests.integration.common import (  # noqa: E402
    make_batch,
    tiny_cfg,
    tiny_dense_opts,
    tiny_shapes,
)

CFG = "shapes/atss_R18.yaml"
TINY = tiny_dense_opts("ATSS")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_shapes(str(tmp_path_factory.mktemp("shapes")), n=4)


@pytest.fixture(scope="module")
def model_and_cfg():
    cfg = tiny_cfg(CFG, TINY)
    torch.manual_seed(0)
    return build_model(cfg), cfg


def test_built_from_yacs_with_square_8x_stride_anchors(model_and_cfg):
    model, _ = model_and_cfg
    assert isinstance(model, ATSS) and model.num_classes == 4
    assert model.kd_head_output_dims == [4, 4, 1]
    assert model.box2box_transform.weights == (10.0, 10.0, 5.0, 5.0)
    feats = [torch.zeros(1, 1, 16 // 2**i, 16 // 2**i) for i in range(5)]
    anchors = model.anchor_generator(feats)
    # Offset 0: the first anchor of P3 (stride 8) is centred on (0, 0) with side 64.
    assert anchors[0].tensor[0].tolist() == [-32.0, -32.0, 32.0, 32.0]
    assert anchors[0].tensor[1].tolist() == [-24.0, -32.0, 40.0, 32.0]
    assert anchors[4].tensor[0].tolist() == [-512.0, -512.0, 512.0, 512.0]  # P7, stride 128
    assert [len(a) for a in anchors] == [256, 64, 16, 4, 1]  # one anchor per location


def test_head_towers_are_retinanet_style_for_taps(model_and_cfg):
    model, _ = model_and_cfg
    for tower in (model.head.cls_subnet, model.head.bbox_subnet):
        assert [type(m).__name__ for m in tower[:3]] == ["Conv2d", "GroupNorm", "ReLU"]
        assert tower[1].num_groups == 32
    assert len(model.head.scales) == 5


def test_centerness_targets_by_hand():
    # Centre (5, 5) in [0, 0, 10, 20]: l = r = 5, t = 5, b = 15 -> sqrt(1 * 5 / 15).
    out = centerness_targets(torch.tensor([[0.0, 0, 10, 10]]), torch.tensor([[0.0, 0, 10, 20]]))
    assert out.item() == pytest.approx(math.sqrt(1 / 3), abs=1e-6)


def test_label_anchors_format_and_background(model_and_cfg):
    model, _ = model_and_cfg
    anchors = [Boxes(torch.tensor([[-32.0, -32, 32, 32], [24, -32, 88, 32], [40, 40, 104, 104]]))]
    inst = Instances((128, 128), gt_boxes=Boxes(torch.tensor([[-4.0, -4, 20, 20]])))
    inst.gt_classes = torch.tensor([2])
    empty = Instances(
        (128, 128), gt_boxes=Boxes(torch.zeros(0, 4)), gt_classes=torch.zeros(0).long()
    )
    # IoUs a = 576 / 4096, 0, 0. topk 9 (clipped to 3): threshold (1/3 + sqrt(1/3)) a < a, so the
    # first anchor (centre (0, 0) inside the GT) is positive.
    labels, boxes = model.label_anchors(anchors, [inst, empty])
    assert labels[0].tolist() == [2, 4, 4]
    assert boxes[0][0].tolist() == [-4.0, -4.0, 20.0, 20.0]
    assert labels[1].tolist() == [4, 4, 4] and boxes[1].shape == (3, 4)
    # topk 2 keeps IoUs [a, 0]: threshold (1/2 + sqrt(1/2)) a > a, so nothing is positive.
    model.topk = 2
    try:
        labels, _ = model.label_anchors(anchors, [inst])
    finally:
        model.topk = 9
    assert labels[0].tolist() == [4, 4, 4]


def test_losses_by_hand(model_and_cfg):
    model, _ = model_and_cfg
    # Anchor 0 (side 64, centre (8, 0)) is a positive of class 1 with GT (0, -16, 32, 32); anchor 1
    # is background. All outputs 0: scores 0.5, deltas 0 (the box is the anchor itself).
    anchors = [Boxes(torch.tensor([[-24.0, -32, 40, 32], [40.0, 40, 104, 104]]))]
    logits, deltas, ctr_logits = (
        [torch.zeros(1, 2, 4)],
        [torch.zeros(1, 2, 4)],
        [torch.zeros(1, 2, 1)],
    )
    labels, gt_boxes = [torch.tensor([1, 4])], [torch.tensor([[0.0, -16, 32, 32], [0, 0, 0, 0]])]
    with EventStorage(0):
        losses = model.losses(anchors, logits, labels, deltas, gt_boxes, ctr_logits)
    ln2 = math.log(2.0)
    # Focal at p = 0.5: 0.25 * 0.25 * ln 2 for the one positive class, 0.75 * 0.25 * ln 2 for
    # the 7 negatives; one positive -> normaliser 1.
    assert losses["loss_atss_cls"].item() == pytest.approx((0.0625 + 7 * 0.1875) * ln2, rel=1e-5)
    # Centerness target: l, t, r, b = 8, 16, 24, 32 -> sqrt(8/24 * 16/32) = sqrt(1/6).
    ctr = math.sqrt(1 / 6)
    # GIoU of the anchor with the GT: IoU 1536 / 4096, the anchor encloses both -> GIoU = IoU;
    # weighted by ctr, / max(sum of ctr, 1) = 1, x loss weight 2.
    assert losses["loss_atss_box"].item() == pytest.approx(2 * ctr * (1 - 0.375), rel=1e-5)
    # BCE at logit 0 is ln 2 whatever the target.
    assert losses["loss_atss_ctr"].item() == pytest.approx(ln2, rel=1e-5)


def test_empty_images_and_recorded_taps(model_and_cfg, data):
    model, cfg = model_and_cfg
    model.train()
    batch = make_batch(cfg, data[:2])
    batch[1]["instances"] = batch[1]["instances"][:0]
    rec = TapRecorder(model, ["head", "head.cls_subnet.2", "anchor_generator", "label_anchors()"])
    with EventStorage(0), rec:
        losses = model(batch)
    rec.close()
    assert all(torch.isfinite(v) for v in losses.values())
    labels, _ = rec.get("label_anchors()")
    assert (labels[1] == model.num_classes).all() and (labels[0] < model.num_classes).any()
    assert len(rec.get_all("head.cls_subnet.2")) == 5  # once per level
    flat = dense_outputs(model, rec.get("head"), rec.get("anchor_generator"))
    assert flat.logits.shape == (2, flat.anchors.shape[0], 4)
    assert flat.box_reg.shape[-1] == 4 and flat.extras[0].shape[-1] == 1
    assert flat.strides == [8, 16, 32, 64, 128]


@pytest.mark.parametrize(
    "path", ["Base-ATSS.yaml", "shapes/atss_R50.yaml", "quick_schedules/atss_instant_test.yaml"]
)
def test_atss_configs_merge(path):
    cfg = tiny_cfg(path)
    cfg.freeze()
    assert cfg.MODEL.META_ARCHITECTURE == "ATSS"
    assert cfg.MODEL.ATSS.ANCHOR_SCALE == 8.0 and cfg.MODEL.ATSS.TOPK == 9
