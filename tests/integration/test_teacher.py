"""Teacher loading, freezing, input handling and weight inheritance."""

import pytest

pytest.importorskip("detectron2", reason="integration test: Detectron2 cannot be imported")

import torch  # noqa: E402
from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

from d2kd.modeling.inherit import inherit_teacher_weights  # noqa: E402

from tests.integration.common import make_batch, tiny_cfg, tiny_shapes  # noqa: E402

KD_CFG = "shapes/kd/mse_retinanet_R50_to_R18.yaml"
R18 = ["MODEL.DEVICE", "cpu", "MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.RES2_OUT_CHANNELS", 64]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_shapes(str(tmp_path_factory.mktemp("shapes")), n=2)


def _save(model, path):
    DetectionCheckpointer(model, save_dir=str(path.parent)).save(path.stem)
    return str(path)


def test_teacher_checkpoint_round_trip_and_mismatch_errors(tmp_path):
    teacher_cfg = tiny_cfg("shapes/retinanet_R18.yaml")
    good = _save(build_model(teacher_cfg), tmp_path / "teacher_r18.pth")
    cfg = tiny_cfg(KD_CFG, ["MODEL.KD.TEACHER.OPTS", R18, "MODEL.KD.TEACHER.WEIGHTS", good])
    model = build_model(cfg)  # all keys match
    ref = torch.load(good, weights_only=False)["model"]
    name = "head.cls_score.weight"
    assert torch.equal(model.teacher.state_dict()[name], ref[name])

    # An R18 checkpoint for the R50 teacher config: names and shapes differ; both are reported.
    cfg = tiny_cfg(KD_CFG, ["MODEL.KD.TEACHER.WEIGHTS", good])
    with pytest.raises(ValueError, match="does not match the teacher config.*(missing|shape)"):
        build_model(cfg)

    # A checkpoint with 5 classes for a 4-class teacher: shape mismatch named by key.
    five = _save(
        build_model(tiny_cfg("shapes/retinanet_R18.yaml", ["MODEL.RETINANET.NUM_CLASSES", 5])),
        tmp_path / "five.pth",
    )
    cfg = tiny_cfg(KD_CFG, ["MODEL.KD.TEACHER.OPTS", R18, "MODEL.KD.TEACHER.WEIGHTS", five])
    with pytest.raises(ValueError, match="head.cls_score"):
        build_model(cfg)


def test_teacher_stays_frozen_in_eval_after_train(data):
    cfg = tiny_cfg(KD_CFG, ["MODEL.KD.TEACHER.OPTS", R18])
    model = build_model(cfg)
    model.train()
    model.train(True)
    assert not model.teacher.training
    assert all(not m.training for m in model.teacher.modules())
    gn = model.teacher.backbone.fpn_lateral3.norm
    before = gn.weight.clone()
    with EventStorage(0):
        sum(model(make_batch(cfg, data)).values()).backward()
    assert torch.equal(gn.weight, before) and gn.weight.grad is None


def test_teacher_gets_its_own_input_format(data):
    opts = R18 + [
        "INPUT.FORMAT",
        "RGB",
        "MODEL.PIXEL_MEAN",
        [1.0, 2.0, 3.0],
        "MODEL.PIXEL_STD",
        [1.0, 1.0, 1.0],
    ]
    cfg = tiny_cfg(KD_CFG, ["MODEL.KD.TEACHER.OPTS", opts])
    model = build_model(cfg)
    seen = {}
    model.teacher.backbone.register_forward_pre_hook(lambda m, i: seen.update(t=i[0]))
    model.student.backbone.register_forward_pre_hook(lambda m, i: seen.update(s=i[0]))
    batch = make_batch(cfg, data)
    with EventStorage(0):
        model(batch)
    img = batch[0]["image"].float()  # BGR, the student's format
    h, w = img.shape[1:]
    expected_t = img.flip(0) - torch.tensor([1.0, 2.0, 3.0]).view(3, 1, 1)
    assert torch.allclose(seen["t"][0, :, :h, :w], expected_t)
    assert seen["t"].shape == seen["s"].shape


def test_padding_mismatch_is_refused():
    # Detectron2's FPNs pad to the stride of their last input (32 here) on both sides; a teacher
    # whose backbone pads differently cannot share the student's padded batch.
    model = build_model(tiny_cfg(KD_CFG, ["MODEL.KD.TEACHER.OPTS", R18]))
    model._check_padding()
    model.teacher.backbone._size_divisibility = 64
    with pytest.raises(ValueError, match="pad images differently"):
        model._check_padding()


def test_feature_keys_and_strides_are_checked():
    cfg = tiny_cfg(KD_CFG, ["MODEL.KD.TEACHER.OPTS", R18, "MODEL.KD.FEATURE_MSE.KEYS", ["p2"]])
    with pytest.raises(ValueError, match="has no features .'p2'.; it has .'p3'"):
        build_model(cfg)


def test_inherit_copies_neck_and_head_only():
    student = build_model(tiny_cfg("shapes/retinanet_R18.yaml"))
    teacher = build_model(tiny_cfg("shapes/retinanet_R50.yaml"))
    copied, skipped = inherit_teacher_weights(student, teacher)
    s, t = student.state_dict(), teacher.state_dict()
    assert "head.cls_score.weight" in copied and torch.equal(
        s["head.cls_score.weight"], t["head.cls_score.weight"]
    )
    assert not any(k.startswith("backbone.bottom_up.") for k in copied)
    # FPN laterals read backbone channels of different widths (R18 vs R50): skipped, not copied.
    assert "backbone.fpn_lateral3.weight" in [name for name, _, _ in skipped]
    assert "backbone.fpn_output3.weight" in copied
