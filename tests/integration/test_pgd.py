"""PGD inside DistillDetector on CPU: training steps, PGW masks, zero-when-equal, reference flags,
MobileNetV2 student, tower taps, config errors."""

import pytest

pytest.importorskip("detectron2", reason="integration test: Detectron2 cannot be imported")

import torch  # noqa: E402

from d2kd.layers.box_ops import aligned_iou as box_iou  # noqa: E402
from d2kd.methods.pgd.loss import first_block_tap  # noqa: E402
from d2kd.methods.pgd.pgw import (  # noqa: E402
    points_inside_boxes,
    prediction_guided_weights,
    quality_score,
)
from d2kd.modeling.adapters import Conv1x1  # noqa: E402
from d2kd.modeling.dense_outputs import decode_boxes, dense_outputs  # noqa: E402
from d2kd.modeling.masks import pad_gt_instances  # noqa: E402
from d2kd.modeling.teacher import run_teacher  # noqa: E402

from tests.integration.common import (  # noqa: E402
    LEVELS,
    NARROW,
    check_images_without_objects,
    kd_keys,
    kd_step,
    make_batch,
    same_weights_model,
    small_kd_model,
    tiny_shapes,
)

PGD_TERMS = ["cls_fg", "cls_bg", "cls_att", "reg", "reg_att"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_shapes(str(tmp_path_factory.mktemp("shapes")), n=4)


@pytest.mark.parametrize("arch", ["retinanet", "fcos", "gfl"])
def test_pgd_train_step(data, arch):
    cfg, model = small_kd_model(f"shapes/kd/pgd_{arch}_R50_to_R18.yaml")
    losses = kd_step(cfg, model, data)
    assert kd_keys(losses, "pgd") == sorted(
        f"loss_kd_pgd_{t}_{lv}" for t in PGD_TERMS for lv in LEVELS
    )
    assert losses["loss_kd_pgd_cls_fg_p3"] > 0 and losses["loss_kd_pgd_reg_p3"] > 0
    assert model.student.head.cls_subnet[0].weight.grad is not None
    assert model.student.head.bbox_subnet[0].weight.grad is not None


def test_images_without_objects(data):
    check_images_without_objects(*small_kd_model("shapes/kd/pgd_retinanet_R50_to_R18.yaml"), data)


def test_pgd_terms_exactly_zero_when_teacher_equals_student(data):
    cfg, model = same_weights_model("shapes/kd/pgd_retinanet_R50_to_R18.yaml", "retinanet_R18.yaml")
    losses = kd_step(cfg, model, data)
    kd = {k: v.item() for k, v in losses.items() if k.startswith("loss_kd_pgd_")}
    assert len(kd) == 25 and all(v == 0.0 for v in kd.values()), kd


def _teacher_maps(model, batch):
    loss = model.losses["PGDLoss"]
    images, (_, predictions, anchors) = run_teacher(model.teacher, "dense", batch)
    gt = [x["instances"] for x in batch]
    return loss.mask_generator.compute(predictions, anchors, gt, images.image_sizes)


def test_pgw_masks_of_one_image_ignore_the_others(data):
    cfg, model = small_kd_model("shapes/kd/pgd_retinanet_R50_to_R18.yaml")
    batch = make_batch(cfg, data[:3])
    together = _teacher_maps(model, batch)
    alone = _teacher_maps(model, batch[1:2])
    for name in ("cls", "reg", "bg"):
        for lv_together, lv_alone in zip(together[name], alone[name]):
            assert lv_together.shape[0] == 3 and lv_together.shape[1] == 1
            assert torch.allclose(lv_together[1:2], lv_alone, atol=1e-6), name
    cls = torch.cat([m.flatten() for m in together["cls"]])
    assert cls.max() <= 1.0 and cls.min() >= 0.0 and (cls > 0).any()
    # Key regions lie inside objects: nowhere both key region and background.
    for fg, bg in zip(together["cls"], together["bg"]):
        assert not ((fg > 0) & (bg > 0)).any()


def test_pgw_generator_matches_a_dense_computation(data):
    """The generator scores only inside pairs; all-pairs quality must give the same maps."""
    cfg, model = small_kd_model("shapes/kd/pgd_retinanet_R50_to_R18.yaml")
    batch = make_batch(cfg, data[:2])
    teacher, gen = model.teacher, model.losses["PGDLoss"].mask_generator
    images, (_, predictions, anchors) = run_teacher(teacher, "dense", batch)
    out = dense_outputs(teacher, predictions, anchors)
    assert out.num_anchors == 9
    gt_list = [x["instances"] for x in batch]
    maps = gen.flat_maps(out, gt_list, images.image_sizes)
    centres = out.prior_centres()
    gt, classes, valid = pad_gt_instances(gt_list, centres.device)
    n, r, g = len(batch), len(centres), gt.shape[1]
    prob = out.logits.sigmoid().gather(2, classes[:, None].expand(n, r, g))
    iou = box_iou(decode_boxes(teacher, out.box_reg, out.anchors)[:, :, None], gt[:, None])
    inside = points_inside_boxes(centres[None, :, None], gt[:, None]) & valid[:, None]
    for name, xi in (("cls", 0.8), ("reg", 0.6)):
        ref = prediction_guided_weights(
            quality_score(prob, iou, xi) * inside, inside, centres, k=30
        )
        assert torch.allclose(maps[name], ref, atol=1e-6), name
        assert (maps[name] > 0).sum() <= 30 * valid.sum()  # at most K key priors per object


def test_fcos_teacher_boxes_are_decoded_in_pixels_with_each_levels_stride(data):
    cfg, model = small_kd_model("shapes/kd/pgd_fcos_R50_to_R18.yaml")
    teacher = model.teacher
    _, (_, predictions, anchors) = run_teacher(teacher, "dense", make_batch(cfg, data[:1]))
    logits, box_reg, ctr = predictions
    ones = [torch.ones_like(x) for x in box_reg]  # (l, t, r, b) = 1 stride unit everywhere
    out = dense_outputs(teacher, (logits, ones, ctr), anchors)
    boxes = decode_boxes(teacher, out.box_reg, out.anchors)[0]  # (R, 4)
    centres = (out.anchors[:, :2] + out.anchors[:, 2:]) / 2
    stride = out.prior_strides()[:, None]
    assert out.strides == [8, 16, 32, 64, 128]
    assert torch.allclose(boxes, torch.cat([centres - stride, centres + stride], dim=1))


def test_pgd_reference_flags_run(data):
    flags = [
        "MODEL.KD.PGD.EMULATE_TOPK_BEFORE_INSIDE", True,
        "MODEL.KD.PGD.EMULATE_AXIS_SWAP", True,
        "MODEL.KD.PGD.EMULATE_BATCH_MASK_MIXING", True,
        "MODEL.KD.PGD.EMULATE_COV_NOISE", True,
        "MODEL.KD.PGD.EMULATE_FCOS_PADDING", True,
    ]  # fmt: skip
    cfg, model = small_kd_model("shapes/kd/pgd_fcos_R50_to_R18.yaml", flags)
    losses = kd_step(cfg, model, data)
    assert len(kd_keys(losses, "pgd")) == 25


def test_mobilenetv2_student_pgd_uses_adapters(data):
    cfg, model = small_kd_model("shapes/kd/pgd_fcos_R50_to_MBv2.yaml", NARROW)
    assert type(model.student.backbone.bottom_up).__name__ == "MobileNetV2"
    losses = kd_step(cfg, model, data)
    pgd = model.losses["PGDLoss"]
    assert isinstance(pgd.cls_adapter, Conv1x1) and pgd.reg_adapter.weight.grad is not None
    assert len(kd_keys(losses, "pgd")) == 25


def test_tower_taps_follow_the_head_structure():
    _, model = small_kd_model("shapes/kd/pgd_retinanet_R50_to_R18.yaml")
    assert (
        first_block_tap(model.student, "head.cls_subnet") == "head.cls_subnet.2"
    )  # conv, GN, ReLU
    assert model.losses["PGDLoss"].reg_taps == ("head.bbox_subnet.2", "head.bbox_subnet.2")
    _, model = small_kd_model(
        "shapes/kd/pgd_retinanet_R50_to_R18.yaml", ["MODEL.RETINANET.NORM", ""]
    )
    assert model.losses["PGDLoss"].cls_taps[0] == "head.cls_subnet.1"  # conv, ReLU


def test_bad_pgd_configs_raise_clear_errors():
    with pytest.raises(ValueError, match="LEVEL_WEIGHTS"):
        small_kd_model(
            "shapes/kd/pgd_fcos_R50_to_R18.yaml", ["MODEL.KD.PGD.LEVEL_WEIGHTS", [1.0, 2.0]]
        )
    with pytest.raises(KeyError, match="unknown mask generator"):
        small_kd_model(
            "shapes/kd/pgd_fcos_R50_to_R18.yaml", ["MODEL.KD.PGD.MASK_GENERATOR", "Nope"]
        )


def test_atss_train_step(data):
    cfg, model = small_kd_model("shapes/kd/pgd_atss_R50_to_R18.yaml")
    losses = kd_step(cfg, model, data)
    assert len(kd_keys(losses, "pgd")) == len(PGD_TERMS) * len(LEVELS)
