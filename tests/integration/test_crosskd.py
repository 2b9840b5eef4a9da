"""CrossKDLoss inside DistillDetector on CPU, four detectors: terms, zero when the student is the
teacher, gradient routing, hold taps, in-place detection, normalisers and prior weights."""

import math
import types

import pytest

pytest.importorskip("detectron2", reason="integration test: Detectron2 cannot be imported")

import torch  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.structures import Boxes, Instances, pairwise_iou  # noqa: E402
from torch import nn  # noqa: E402

from d2kd.modeling.adapters import Conv1x1  # noqa: E402
from d2kd.modeling.dense_outputs import DenseOutputs  # noqa: E402
from d2kd.modeling.losses.dense_pair import gather_dense_pair  # noqa: E402

from tests.integration.common import (  # noqa: E402
    REPO,
    make_batch,
    step_with_record,
    tiny_cfg,
    tiny_shapes,
    train_step,
)

NODES = {"RetinaNet": "RETINANET", "FCOS": "FCOS", "ATSS": "ATSS", "GFL": "GFL"}
CONFIGS = {a: f"shapes/kd/crosskd_{a.lower()}_R50_to_R18.yaml" for a in NODES}
STUDENT_CONFIGS = {a: f"configs/shapes/{a.lower()}_R18.yaml" for a in NODES}


def _small(node, channels=32):
    return [
        "MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.RES2_OUT_CHANNELS", 64,
        "MODEL.RESNETS.NORM", "FrozenBN",  # teacher (eval) and student (train) norms agree
        "MODEL.FPN.OUT_CHANNELS", channels, f"MODEL.{node}.NUM_CONVS", 3,
        "INPUT.MIN_SIZE_TRAIN", (64,), "INPUT.MAX_SIZE_TRAIN", 64,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_shapes(str(tmp_path_factory.mktemp("shapes")), n=4)


def _model(arch, opts=(), teacher_opts=(), same_teacher=False, student_channels=32):
    node = NODES[arch]
    t_opts = ["MODEL.DEVICE", "cpu"] + _small(node) + list(teacher_opts)
    cfg = tiny_cfg(
        CONFIGS[arch],
        ["MODEL.KD.TEACHER.OPTS", t_opts, *_small(node, student_channels), *opts],
    )
    if same_teacher:
        cfg.MODEL.KD.TEACHER.CONFIG_FILE = f"{REPO}/{STUDENT_CONFIGS[arch]}"
    torch.manual_seed(0)
    model = build_model(cfg)
    if same_teacher:
        model.teacher.load_state_dict(model.student.state_dict())
    return cfg, model


_step = train_step


def _kd(losses):
    return {k: v for k, v in losses.items() if k.startswith("loss_kd_")}


EXPECTED_TERMS = {
    "RetinaNet": {"loss_kd_crosskd_cls", "loss_kd_crosskd_reg"},
    "FCOS": {"loss_kd_crosskd_cls", "loss_kd_crosskd_reg"},
    "ATSS": {"loss_kd_crosskd_cls", "loss_kd_crosskd_reg", "loss_kd_crosskd_ctr"},
    "GFL": {"loss_kd_crosskd_cls", "loss_kd_crosskd_reg"},
}


@pytest.mark.parametrize("arch", list(NODES))
def test_step_gives_finite_positive_terms(arch, data):
    cfg, model = _model(arch, ["MODEL.KD.CROSSKD.CROSS_BLOCK", 2])
    kd = _kd(_step(model, make_batch(cfg, data[:2])))
    assert set(kd) == EXPECTED_TERMS[arch]
    assert all(torch.isfinite(v) and v > 0 for v in kd.values())


@pytest.mark.parametrize("arch", list(NODES))
@pytest.mark.parametrize("post_relu", [False, True])
def test_every_term_is_zero_when_the_student_is_the_teacher(arch, post_relu, data):
    opts = ["MODEL.KD.CROSSKD.CROSS_BLOCK", 2, "MODEL.KD.CROSSKD.EMULATE_POST_RELU_HOLD", post_relu]
    cfg, model = _model(arch, opts, same_teacher=True)
    kd = _kd(_step(model, make_batch(cfg, data[:2])))
    assert kd["loss_kd_crosskd_cls"].abs() < 1e-5
    assert kd["loss_kd_crosskd_reg"].abs() < 1e-5
    if arch == "ATSS":
        # The centerness term is the teacher's binary entropy there (not 0), with zero gradient.
        loss = model.losses["CrossKDLoss"]
        assert kd["loss_kd_crosskd_ctr"] > 0.1
        params = [p for p in model.student.parameters() if p.requires_grad]
        grads = torch.autograd.grad(kd["loss_kd_crosskd_ctr"], params, allow_unused=True)
        assert max(float(g.abs().max()) for g in grads if g is not None) < 1e-4
        assert loss.ctr_weight == 1.0


def _grad_norm(module):
    grads = [p.grad.abs().sum() for p in module.parameters() if p.grad is not None]
    return float(sum(grads)) if grads else 0.0


@pytest.mark.parametrize("arch", ["RetinaNet", "GFL", "ATSS"])
def test_gradient_routing_of_the_kd_terms(arch, data):
    k = 2
    cfg, model = _model(arch, ["MODEL.KD.CROSSKD.CROSS_BLOCK", k])
    kd = _kd(_step(model, make_batch(cfg, data[:2])))
    model.student.zero_grad(set_to_none=True)
    sum(kd.values()).backward()
    assert all(p.grad is None for p in model.teacher.parameters())
    head = model.student.head
    per_block = len(head.cls_subnet) // 3
    for tower in (head.cls_subnet, head.bbox_subnet):
        assert _grad_norm(tower[: per_block * k]) > 0  # blocks 1..k
        assert _grad_norm(tower[per_block * k :]) == 0  # blocks k+1..
    predictors = [head.cls_score, head.bbox_pred] + [
        getattr(head, n) for n in ("scales", "centerness", "ctrness") if hasattr(head, n)
    ]
    assert all(_grad_norm(m) == 0 for m in predictors)
    assert _grad_norm(model.student.backbone.bottom_up) > 0
    fpn = [m for n, m in model.student.backbone.named_children() if n != "bottom_up"]
    assert sum(_grad_norm(m) for m in fpn) > 0


def test_detection_losses_alone_train_the_predictors(data):
    cfg, model = _model("GFL", ["MODEL.KD.CROSSKD.CROSS_BLOCK", 2])
    losses = _step(model, make_batch(cfg, data[:2]))
    det = sum(v for k, v in losses.items() if not k.startswith("loss_kd_"))
    det.backward()
    assert (
        _grad_norm(model.student.head.cls_score) > 0 and _grad_norm(model.student.head.scales) > 0
    )


def test_teacher_outputs_are_untouched_by_the_kd_step(data):
    cfg, model = _model("ATSS", ["MODEL.KD.CROSSKD.CROSS_BLOCK", 2])
    batch = make_batch(cfg, data[:2])
    losses, record = step_with_record(model, batch)
    kd = _kd(losses)
    before = [x.clone() for outs in record.teacher_one("head") for x in outs]
    holds = [x.clone() for x in record.teacher_all("head.cls_subnet.4")]
    sum(kd.values()).backward()
    after = [x for outs in record.teacher_one("head") for x in outs]
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    assert all(torch.equal(a, b) for a, b in zip(holds, record.teacher_all("head.cls_subnet.4")))
    record.check_unmodified("student", "head.cls_subnet.4")
    record.check_unmodified("teacher", "head.cls_subnet.4")


def test_hold_taps_default_and_emulation():
    _, model = _model("GFL", ["MODEL.KD.CROSSKD.CROSS_BLOCK", 3])
    loss = model.losses["CrossKDLoss"]
    assert loss.s_holds == ("head.cls_subnet.7", "head.bbox_subnet.7")
    _, model = _model(
        "GFL", ["MODEL.KD.CROSSKD.CROSS_BLOCK", 3, "MODEL.KD.CROSSKD.EMULATE_POST_RELU_HOLD", True]
    )
    loss = model.losses["CrossKDLoss"]
    assert loss.s_holds == ("head.cls_subnet.8", "head.bbox_subnet.8")
    assert loss.t_holds == loss.s_holds
    _, model = _model("FCOS", ["MODEL.KD.CROSSKD.CROSS_BLOCK", 0])
    assert model.losses["CrossKDLoss"].s_holds == ("head:input", "head:input")


def test_post_relu_hold_reads_the_relu_output(data):
    """The emulation aligns ReLU(z) of both sides; the default z. They give different losses."""
    values = []
    for post in (False, True):
        opts = ["MODEL.KD.CROSSKD.CROSS_BLOCK", 2, "MODEL.KD.CROSSKD.EMULATE_POST_RELU_HOLD", post]
        cfg, model = _model("GFL", opts)
        values.append(float(_kd(_step(model, make_batch(cfg, data[:2])))["loss_kd_crosskd_cls"]))
    assert values[0] != pytest.approx(values[1], rel=1e-4)


def test_cross_point_zero_runs_the_whole_teacher_head(data):
    cfg, model = _model("FCOS", ["MODEL.KD.CROSSKD.CROSS_BLOCK", 0])
    kd = _kd(_step(model, make_batch(cfg, data[:2])))
    model.student.zero_grad(set_to_none=True)
    sum(kd.values()).backward()
    assert _grad_norm(model.student.head) == 0  # the whole student head is bypassed
    assert _grad_norm(model.student.backbone) > 0


def test_in_place_change_of_a_recorded_hold_is_detected(data):
    cfg, model = _model("GFL", ["MODEL.KD.CROSSKD.CROSS_BLOCK", 2])
    # The official code's aliasing: the block's activation works in place on the held tensor.
    model.student.head.cls_subnet[5] = nn.ReLU(inplace=True)
    with pytest.raises(RuntimeError, match="head.cls_subnet.4.*modified in place"):
        _step(model, make_batch(cfg, data[:2]))


def test_adapter_when_tower_widths_differ(data):
    cfg, model = _model("GFL", ["MODEL.KD.CROSSKD.CROSS_BLOCK", 1], student_channels=64)
    loss = model.losses["CrossKDLoss"]
    assert isinstance(loss.adapters["cls"], Conv1x1) and loss.adapters["cls"].in_channels == 64
    kd = _kd(_step(model, make_batch(cfg, data[:2])))
    sum(kd.values()).backward()
    assert loss.adapters["cls"].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="Identity adapter"):
        _model("GFL", ["MODEL.KD.CROSSKD.ADAPTER", "Identity"], student_channels=64)


def test_batchnorm_teacher_head_is_refused():
    with pytest.raises(ValueError, match="BatchNorm"):
        _model("RetinaNet", teacher_opts=["MODEL.RETINANET.NORM", "BN"])


def test_cross_block_beyond_the_tower_is_refused():
    with pytest.raises(ValueError, match="CROSS_BLOCK 4"):
        _model("GFL", ["MODEL.KD.CROSSKD.CROSS_BLOCK", 4])


def test_auto_settings_follow_the_detector():
    expected = {
        "RetinaNet": ("giou", "pos_per_gpu"),
        "FCOS": ("iou_log", "centerness"),
        "ATSS": ("giou", "pos"),
        "GFL": ("kl", "pos"),
    }
    for arch, (reg, norm) in expected.items():
        opts = ["MODEL.KD.CROSSKD.REG_LOSS", "auto", "MODEL.KD.CROSSKD.NORMALIZER", "auto"]
        loss = _model(arch, opts)[1].losses["CrossKDLoss"]
        assert (loss.reg_loss, loss.normalizer) == (reg, norm)


def _fake_pair(labels, num_classes=4, prior_weights=None):
    labels = torch.tensor(labels)
    pw = torch.ones(labels.shape) if prior_weights is None else torch.tensor(prior_weights)
    return types.SimpleNamespace(
        gt_labels=labels,
        prior_weights=pw,
        positives=lambda: (labels >= 0) & (labels < num_classes),
    )


def test_per_gpu_normaliser_counts_each_image_at_least_once():
    loss = _model("RetinaNet")[1].losses["CrossKDLoss"]
    assert loss.normalizer == "pos_per_gpu"
    # Three images, positives (label < 4) only on the first: Z = #pos + (B - 1) = 3 + 2.
    pair = _fake_pair([[0, 1, 2, 4, -1], [4, 4, -1, 4, 4], [4, 4, 4, 4, 4]])
    assert float(loss._normalizer(pair, None)) == 5.0


def test_ignore_band_and_padding_get_no_kd():
    cfg, model = _model("RetinaNet")
    loss = model.losses["CrossKDLoss"]
    pair = _fake_pair([[0, -1, 4, 4]], prior_weights=[[1.0, 1.0, 1.0, 0.0]])
    assert loss._prior_weights(pair).tolist() == [[1.0, 0.0, 1.0, 0.0]]
    loss.include_ignored = True
    assert loss._prior_weights(pair).tolist() == [[1.0, 1.0, 1.0, 0.0]]


def test_fcos_centerness_normaliser(data):
    """D_ctr = sum of the positives' centerness targets (here: recomputed from the assignment)."""
    cfg, model = _model("FCOS")
    _, record = step_with_record(model, make_batch(cfg, data[:2]))
    loss = model.losses["CrossKDLoss"]
    pair = gather_dense_pair(record, model.student, model.teacher)
    labels, boxes = record.student_one("label_anchors()")
    anchors = torch.cat([a.tensor for a in record.student_one("anchor_generator")])
    ctr = torch.cat(
        [
            model.student.compute_ctrness_targets(record.student_one("anchor_generator"), [b])[0][
                (lab >= 0) & (lab < 4)
            ]
            for lab, b in zip(labels, boxes)
        ]
    )
    assert anchors.shape[0] == pair.gt_labels.shape[1]
    assert ctr.numel() > 0
    assert float(loss._normalizer(pair, record)) == pytest.approx(float(ctr.sum()), rel=1e-5)


def _image(width, height, boxes):
    """A dataset dict of a random ``height`` x ``width`` image with class-0 ``boxes`` (xyxy)."""
    gen = torch.Generator().manual_seed(width)
    inst = Instances((height, width))
    inst.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
    inst.gt_classes = torch.zeros(len(boxes), dtype=torch.long)
    image = torch.randint(0, 256, (3, height, width), generator=gen).to(torch.uint8)
    return {"image": image, "height": height, "width": width, "instances": inst}


def _official_per_gpu_count(model, record, valid):
    """mmdet's RetinaNet assignment (MaxIoU 0.5/0.4, every anchor at a box's best IoU positive)
    over each image's *valid* anchors only; Z = sum_images max(#pos, 1)."""
    anchors = Boxes(torch.cat([a.tensor for a in record.student_one("anchor_generator")]))
    z = 0
    for inst, ok in zip(record.gt_instances, valid):
        iou = pairwise_iou(inst.gt_boxes, anchors)[:, ok]  # (G, V)
        pos = iou.max(dim=0).values >= 0.5
        pos |= (iou == iou.max(dim=1, keepdim=True).values).any(dim=0)
        z += max(int(pos.sum()), 1)
    return z


def test_retinanet_positive_count_excludes_anchors_on_batch_padding():
    """Issue 21: an 8x16 box at the right edge of a 96-px image in a 160-px batch. Detectron2
    also matches the anchor centred on the padding column x = 96 (IoU 0.5 with the box, as the
    valid one at x = 88), so the count was Z = 24 against the official 23 (every term 4.2% low)."""
    cfg, model = _model("RetinaNet", ["MODEL.KD.CROSSKD.CROSS_BLOCK", 2])
    batch = [
        _image(96, 64, [[88, 24, 96, 40]]),
        _image(160, 64, [[40, 16, 72, 48], [104, 16, 136, 48]]),
    ]
    losses, record = step_with_record(model, batch)
    loss = model.losses["CrossKDLoss"]
    pair = gather_dense_pair(record, model.student, model.teacher)
    valid = pair.prior_weights > 0
    assert int((pair.positives() & ~valid).sum()) == 1  # the anchor on the padding
    assert _official_per_gpu_count(model, record, valid) == 23
    assert float(loss._normalizer(pair, record)) == 23.0
    # The terms are their sums over this count (the sums themselves agree with the official code).
    loss._normalizer = lambda *a: torch.tensor(1.0)
    sums = loss(record)
    for name in ("loss_kd_crosskd_cls", "loss_kd_crosskd_reg"):
        assert float(losses[name]) == pytest.approx(float(sums[name]) / 23.0, rel=1e-5)


def _one_prior(box_reg, anchor=(0.0, 0.0, 64.0, 64.0)):
    """DenseOutputs of one image with one prior (no classes needed by the regression term)."""
    return DenseOutputs(
        logits=torch.zeros(1, 1, 4),
        box_reg=box_reg.view(1, 1, 4),
        extras=[],
        anchors=torch.tensor([anchor]),
        level_sizes=[1],
        level_shapes=[(1, 1)],
        strides=[8],
        num_anchors=1,
    )


@pytest.mark.parametrize("arch", ["RetinaNet", "ATSS"])
def test_box_decoding_clamps_tiny_widths_and_heights_as_the_official_coder(arch):
    """Issue 21: mmdet's coder clamps |dw|, |dh| to ln(1000/16) (no box under 1/62.5 of its
    anchor), Detectron2's from above only. Teacher box 0.64 x 0.64 and cross box 0.8 x 64 on a
    64 x 64 anchor: officially both widths (and the teacher's height) become 64 / 62.5 = 1.024,
    so IoU = GIoU = 1 / 62.5 and 1 - GIoU = 0.984 (0.992 without the lower clamp)."""
    _, model = _model(arch)
    loss = model.losses["CrossKDLoss"]
    assert loss.reg_loss == "giou"
    weights = torch.tensor(model.student.box2box_transform.weights, dtype=torch.float32)
    teacher = torch.tensor([0.0, 0.0, math.log(1 / 100), math.log(1 / 100)]) * weights
    cross = torch.tensor([0.0, 0.0, math.log(1 / 80), 0.0]) * weights
    cross.requires_grad_(True)
    value = loss._reg(_one_prior(cross), _one_prior(teacher), torch.ones(1, 1), 1.0)
    assert float(value) == pytest.approx(1 - 1 / 62.5, rel=1e-5)
    value.backward()
    assert float(cross.grad[2]) == 0.0 and float(cross.grad[3]) != 0.0  # dw clamped, dh not
