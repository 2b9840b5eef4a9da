"""DistillDetector end to end on CPU: a training step, the frozen teacher, eval = student."""

import pytest

pytest.importorskip("detectron2", reason="integration test: Detectron2 cannot be imported")

import torch  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.solver import build_optimizer  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

from tests.integration.common import make_batch, tiny_cfg, tiny_shapes  # noqa: E402

KD_CFG = "shapes/kd/mse_retinanet_R50_to_R18.yaml"
SMALL = ["MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.RES2_OUT_CHANNELS", 64]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_shapes(str(tmp_path_factory.mktemp("shapes")), n=4)


def _model(opts=()):
    cfg = tiny_cfg(KD_CFG, ["MODEL.KD.TEACHER.OPTS", ["MODEL.DEVICE", "cpu"] + SMALL, *opts])
    return cfg, build_model(cfg)


def test_train_step_student_and_kd_losses(data):
    cfg, model = _model()
    model.train()
    with EventStorage(0) as storage:
        losses = model(make_batch(cfg, data[:2]))
        assert {"loss_cls", "loss_box_reg"} <= set(losses)
        kd = [k for k in losses if k.startswith("loss_kd_mse_")]
        assert sorted(kd) == [f"loss_kd_mse_p{i}" for i in range(3, 8)]
        assert all(torch.isfinite(v) for v in losses.values())
        sum(losses.values()).backward()
        assert "kd/ratio_to_task" in storage.latest()
    assert all(p.grad is None for p in model.teacher.parameters())
    assert all(p.grad is not None for p in model.student.head.parameters())


def test_teacher_frozen_outside_tree_and_in_eval(data):
    cfg, model = _model()
    model.train()
    assert not model.teacher.training
    assert all(not p.requires_grad for p in model.teacher.parameters())
    assert not any(k.startswith("teacher") for k in model.state_dict())
    assert len(build_optimizer(cfg, model).param_groups) > 0
    opt_params = {id(p) for g in build_optimizer(cfg, model).param_groups for p in g["params"]}
    assert not any(id(p) in opt_params for p in model.teacher.parameters())


def test_eval_runs_the_student_alone(data):
    cfg, model = _model()
    model.eval()
    batch = make_batch(cfg, data[:2], is_train=False)
    with torch.no_grad():
        out = model(batch)
        ref = model.student(batch)
    assert len(out) == 2
    assert torch.equal(out[0]["instances"].pred_boxes.tensor, ref[0]["instances"].pred_boxes.tensor)


def test_images_without_annotations_stay_finite(data):
    cfg, model = _model()
    batch = make_batch(cfg, data[:2])
    for x in batch:
        x["instances"] = x["instances"][:0]
    model.train()
    with EventStorage(0):
        losses = model(batch)
    assert all(torch.isfinite(v) for v in losses.values())


def test_bad_inputs_raise_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="TEACHER.WEIGHTS"):
        _model(["MODEL.KD.TEACHER.WEIGHTS", str(tmp_path / "missing.pth")])
    with pytest.raises(FileNotFoundError, match="CONFIG_FILE"):
        _model(["MODEL.KD.TEACHER.CONFIG_FILE", str(tmp_path / "nope.yaml")])
    with pytest.raises(KeyError, match="unknown distillation loss"):
        _model(["MODEL.KD.LOSSES", ["NoSuchLoss"]])
    with pytest.raises(ValueError, match="LOSS_WEIGHTS"):
        _model(["MODEL.KD.LOSS_WEIGHTS", [1.0, 2.0]])
    with pytest.raises(KeyError, match="not a sub-module"):
        _model(["MODEL.KD.FEATURE_MSE.STUDENT_MODULE", "backbone.nope"])
    cfg = tiny_cfg(
        KD_CFG, ["MODEL.KD.TEACHER.ALLOW_RANDOM_INIT", False, "MODEL.KD.TEACHER.WEIGHTS", ""]
    )
    with pytest.raises(ValueError, match="WEIGHTS is empty"):
        build_model(cfg)


def test_autocast_teacher_and_fp32_kd_losses(data):
    # SOLVER.AMP wraps the whole forward in autocast (bf16 stands in for fp16 on the CPU): the
    # teacher runs in low precision, the distillation terms are still computed in fp32.
    cfg, model = _model()
    model.train()
    with EventStorage(0), torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(make_batch(cfg, data[:2]))
    kd = {k: v for k, v in losses.items() if k.startswith("loss_kd_")}
    assert kd and all(v.dtype == torch.float32 and torch.isfinite(v) for v in kd.values())


def test_warmup_and_stop_schedule(data):
    cfg, model = _model(["MODEL.KD.WARMUP_ITERS", 4, "MODEL.KD.STOP_ITER", 10])
    model.train()
    batch = make_batch(cfg, data[:2])
    weighted = {}
    for it in (0, 1, 5):  # a 4-iteration linear warm-up: 1/4, 2/4, then the full weight
        with EventStorage(it):
            weighted[it] = model(batch)["loss_kd_mse_p3"]
    assert torch.allclose(weighted[0] * 4, weighted[5]) and torch.allclose(
        weighted[1] * 2, weighted[5]
    )
    with EventStorage(10):
        stopped = model(batch)
    assert not any(k.startswith("loss_kd_mse") for k in stopped)
