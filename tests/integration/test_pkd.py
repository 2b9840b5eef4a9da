"""PKDLoss inside DistillDetector on CPU: terms per level, zero at teacher == student, adapter,
composition with CrossKD, configuration errors."""

import pytest

pytest.importorskip("detectron2", reason="integration test: Detectron2 cannot be imported")

import torch  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402

from d2kd.methods.pkd.terms import pkd_loss  # noqa: E402
from d2kd.modeling.adapters import Conv1x1, Identity  # noqa: E402

from tests.integration.common import (  # noqa: E402
    REPO,
    make_batch,
    step_with_record,
    tiny_cfg,
    tiny_shapes,
    train_step,
)


def _small(channels=32):
    return [
        "MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.RES2_OUT_CHANNELS", 64,
        "MODEL.RESNETS.NORM", "FrozenBN", "MODEL.FPN.OUT_CHANNELS", channels,
        "MODEL.GFL.NUM_CONVS", 2, "INPUT.MIN_SIZE_TRAIN", (64,), "INPUT.MAX_SIZE_TRAIN", 64,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_shapes(str(tmp_path_factory.mktemp("shapes")), n=4)


def _model(config="shapes/kd/pkd_gfl_R50_to_R18.yaml", opts=(), channels=32, same=False):
    t_opts = ["MODEL.DEVICE", "cpu"] + _small()
    cfg = tiny_cfg(config, ["MODEL.KD.TEACHER.OPTS", t_opts, *_small(channels), *opts])
    if same:
        cfg.MODEL.KD.TEACHER.CONFIG_FILE = f"{REPO}/configs/shapes/gfl_R18.yaml"
    torch.manual_seed(0)
    model = build_model(cfg)
    if same:
        model.teacher.load_state_dict(model.student.state_dict())
    return cfg, model


_step, _record = train_step, step_with_record


def test_one_weighted_term_per_level_matching_the_math(data):
    cfg, model = _model()
    losses, record = _record(model, make_batch(cfg, data[:2]))
    keys = ["p3", "p4", "p5", "p6", "p7"]
    assert {k for k in losses if k.startswith("loss_kd_")} == {f"loss_kd_pkd_{k}" for k in keys}
    s, t = record.student_one("backbone"), record.teacher_one("backbone")
    for k in keys:
        expected = 6.0 * pkd_loss(s[k], t[k])  # LOSS_WEIGHTS [6.0]
        assert torch.allclose(losses[f"loss_kd_pkd_{k}"], expected)
    model.student.zero_grad(set_to_none=True)
    sum(v for k, v in losses.items() if k.startswith("loss_kd_")).backward()
    assert all(p.grad is None for p in model.teacher.parameters())
    assert model.student.head.cls_score.weight.grad is None  # PKD acts on the FPN only
    assert model.student.backbone.bottom_up.stem.conv1.weight.grad.abs().sum() > 0


def test_zero_when_the_student_is_the_teacher(data):
    cfg, model = _model(same=True)
    losses = _step(model, make_batch(cfg, data[:2]))
    assert all(losses[f"loss_kd_pkd_{k}"].abs() < 1e-5 for k in ("p3", "p5", "p7"))


def test_adapter_when_channels_differ(data):
    cfg, model = _model(channels=64)
    loss = model.losses["PKDLoss"]
    assert isinstance(loss.adapters["p3"], Conv1x1) and loss.adapters["p3"].in_channels == 64
    losses = _step(model, make_batch(cfg, data[:2]))
    sum(v for k, v in losses.items() if k.startswith("loss_kd_")).backward()
    assert loss.adapters["p3"].weight.grad.abs().sum() > 0
    assert isinstance(_model()[1].losses["PKDLoss"].adapters["p3"], Identity)
    with pytest.raises(ValueError, match="Identity adapter"):
        _model(opts=["MODEL.KD.PKD.ADAPTER", "Identity"], channels=64)


def test_keys_are_checked():
    with pytest.raises(ValueError, match="p2"):
        _model(opts=["MODEL.KD.PKD.KEYS", ["p2", "p3"]])
    with pytest.raises(ValueError, match="MODEL.KD.PKD.KEYS is empty"):
        _model(opts=["MODEL.KD.PKD.KEYS", []])


def test_composes_with_crosskd(data):
    cfg, model = _model(
        "shapes/kd/crosskd_pkd_gfl_R50_to_R18.yaml", ["MODEL.KD.CROSSKD.CROSS_BLOCK", 2]
    )
    losses = _step(model, make_batch(cfg, data[:2]))
    kd = {k for k in losses if k.startswith("loss_kd_")}
    assert {"loss_kd_crosskd_cls", "loss_kd_crosskd_reg", "loss_kd_pkd_p3", "loss_kd_pkd_p7"} <= kd
    assert cfg.MODEL.KD.LOSS_WEIGHTS == [1.0, 6.0]
