"""BCKDLoss inside DistillDetector on CPU: RetinaNet and FCOS steps, zero at teacher == student."""

import pytest

pytest.importorskip("detectron2", reason="integration test: Detectron2 cannot be imported")

import torch  # noqa: E402
from detectron2.modeling import META_ARCH_REGISTRY, build_model  # noqa: E402
from detectron2.structures import Boxes, Instances  # noqa: E402

from d2kd.modeling.dense_outputs import decode_boxes  # noqa: E402
from d2kd.modeling.losses.dense_pair import gather_dense_pair  # noqa: E402

from tests.integration.common import (  # noqa: E402
    make_batch,
    step_with_record,
    tiny_cfg,
    tiny_shapes,
    train_step,
)

# Tiny models for CPU speed (both sides): R18, 32 FPN channels, one conv per head tower.
SMALL = [
    "MODEL.RESNETS.DEPTH",
    18,
    "MODEL.RESNETS.RES2_OUT_CHANNELS",
    64,
    "MODEL.FPN.OUT_CHANNELS",
    32,
]
SMALL += ["MODEL.RETINANET.NUM_CONVS", 1, "MODEL.FCOS.NUM_CONVS", 1]
FROZEN = ["MODEL.RESNETS.NORM", "FrozenBN"]  # teacher (eval) and student (train) norms agree
CONFIGS = {
    "RetinaNet": "shapes/kd/bckd_retinanet_R50_to_R18.yaml",
    "FCOS": "shapes/kd/bckd_fcos_R50_to_R18.yaml",
}
TERMS = {"loss_kd_bckd_cls", "loss_kd_bckd_loc"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_shapes(str(tmp_path_factory.mktemp("shapes")), n=4)


def _model(arch, opts=(), teacher_opts=()):
    t_opts = ["MODEL.DEVICE", "cpu"] + SMALL + list(teacher_opts)
    cfg = tiny_cfg(CONFIGS[arch], ["MODEL.KD.TEACHER.OPTS", t_opts, *SMALL[4:], *opts])
    return cfg, build_model(cfg)


_step = train_step


def _record(model, batch):
    """Run one step and return the DistillRecord the losses saw."""
    return step_with_record(model, batch)[1]


@pytest.mark.parametrize("arch", ["RetinaNet", "FCOS"])
def test_train_step_gives_both_terms_with_gradients_into_the_student(arch, data):
    cfg, model = _model(arch)
    losses = _step(model, make_batch(cfg, data[:2]))
    assert TERMS <= set(losses)
    assert all(torch.isfinite(losses[k]) and losses[k] > 0 for k in TERMS)
    model.student.zero_grad()
    (losses["loss_kd_bckd_cls"] + losses["loss_kd_bckd_loc"]).backward()
    head = model.student.head
    assert head.cls_score.weight.grad.abs().sum() > 0
    assert (
        head.bbox_pred.weight.grad.abs().sum() > 0
    )  # the localization term reaches the regression
    assert all(p.grad is None for p in model.teacher.parameters())


@pytest.mark.parametrize("arch", ["RetinaNet", "FCOS"])
def test_kd_is_exactly_zero_when_the_teacher_is_the_student(arch, data):
    student_cfg = (
        "configs/shapes/retinanet_R18.yaml"
        if arch == "RetinaNet"
        else "configs/shapes/fcos_R18.yaml"
    )
    # Exact parity: an unfolded fp32 teacher (folding changes the teacher's rounding).
    unfolded = ["MODEL.KD.TEACHER.PRECISION", "fp32", "MODEL.KD.TEACHER.FOLD_NORMS", False]
    cfg, model = _model(
        arch, ["MODEL.KD.TEACHER.CONFIG_FILE", student_cfg, *FROZEN, *unfolded], FROZEN
    )
    batch = make_batch(cfg, data[:2])
    before = _step(model, batch)
    assert before["loss_kd_bckd_cls"] > 0  # independent random initialisations differ
    model.teacher.load_state_dict(model.student.state_dict())
    after = _step(model, batch)
    assert after["loss_kd_bckd_cls"].item() == 0.0
    assert after["loss_kd_bckd_loc"].item() == 0.0


def test_images_without_annotations_stay_finite(data):
    cfg, model = _model("RetinaNet")
    batch = make_batch(cfg, data[:2])
    for x in batch:
        x["instances"] = x["instances"][:0]
    losses = _step(model, batch)
    assert all(torch.isfinite(losses[k]) for k in TERMS)


def test_options_change_the_terms_as_documented(data):
    cfg, model = _model("RetinaNet")
    batch = make_batch(cfg, data[:2])
    for x in batch:  # small objects only, so that P6/P7 get no positives
        wh = x["instances"].gt_boxes.tensor[:, 2:] - x["instances"].gt_boxes.tensor[:, :2]
        x["instances"] = x["instances"][wh.max(dim=1).values < 24]
    assert sum(len(x["instances"]) for x in batch) > 0
    record = _record(model, batch)
    loss = model.losses["BCKDLoss"]
    ref = loss(record)
    loss.loc_loss = "iou"
    iou = loss(record)
    assert iou["loss_kd_bckd_cls"] == ref["loss_kd_bckd_cls"]
    assert iou["loss_kd_bckd_loc"] != ref["loss_kd_bckd_loc"]
    loss.loc_loss, loss.level_gate = "giou", True
    gated = loss(record)
    assert gated["loss_kd_bckd_cls"] < ref["loss_kd_bckd_cls"]
    loss.level_gate, loss.ignore_padding = False, False
    assert loss(record)["loss_kd_bckd_cls"] >= ref["loss_kd_bckd_cls"]


def test_box_decoding_uses_each_heads_coder():
    _, model = _model("RetinaNet")
    anchors = torch.tensor([[0.0, 0, 32, 16], [8, 8, 24, 24]])
    deltas = torch.zeros(1, 2, 4)
    assert torch.allclose(decode_boxes(model.student, deltas, anchors)[0], anchors)
    deltas[0, 1] = torch.tensor([0.5, 0.0, 0.0, 0.0])  # dx: shift by half the width (16 px)
    assert torch.allclose(
        decode_boxes(model.student, deltas, anchors)[0, 1], torch.tensor([16.0, 8, 32, 24])
    )
    _, fcos = _model("FCOS")
    points = torch.tensor([[0.0, 0, 8, 8]])  # a stride-8 point at (4, 4)
    ltrb = torch.tensor([[[1.0, 2, 3, 4]]])  # in strides
    assert torch.allclose(
        decode_boxes(fcos.student, ltrb, points)[0, 0], torch.tensor([-4.0, -12, 28, 36])
    )


def test_build_time_errors_name_the_key():
    with pytest.raises(ValueError, match="classes"):
        _model("RetinaNet", teacher_opts=["MODEL.RETINANET.NUM_CLASSES", 5])
    with pytest.raises(ValueError, match="anchors per location"):
        _model("RetinaNet", teacher_opts=["MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS", [[1.0]]])
    with pytest.raises(ValueError, match="strides"):
        _model("FCOS", teacher_opts=["MODEL.FCOS.IN_FEATURES", ["p3", "p4", "p5", "p6"]])
    with pytest.raises(ValueError, match="LOC_LOSS"):
        _model("RetinaNet", ["MODEL.KD.BCKD.LOC_LOSS", "l1"])
    with pytest.raises(ValueError, match='RUN must be "dense"'):
        _model("RetinaNet", ["MODEL.KD.TEACHER.RUN", "backbone"])
    assert "FCOS" in META_ARCH_REGISTRY


def _image(h, w):
    inst = Instances((h, w), gt_boxes=Boxes(torch.tensor([[20.0, 20, 90, 90]])))
    inst.gt_classes = torch.tensor([1])
    return {"image": torch.zeros(3, h, w, dtype=torch.uint8), "instances": inst}


def test_priors_of_an_image_smaller_than_its_batch_cover_its_own_padded_extent():
    # A 200 x 300 image batched with a 256 x 352 one: as the official valid flags (on the image's
    # own size padded to 32, 224 x 320), it keeps 1,496 locations x 9 anchors, not the 1,293 of
    # its unpadded size; the larger image keeps all of its priors.
    _, model = _model("RetinaNet")
    pair = gather_dense_pair(_record(model, [_image(200, 300), _image(256, 352)]), model.student,
                             model.teacher)  # fmt: skip
    assert int(pair.prior_weights[0].sum()) == 1496 * 9
    assert bool((pair.prior_weights[1] == 1).all())
