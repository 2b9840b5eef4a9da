"""What ATSS and GFL share (SquareAnchorDetector): training steps, eval, KD teacher and student."""

import pytest

pytest.importorskip("detectron2", reason="integration test: Detectron2 cannot be imported")

import torch  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.solver import build_optimizer  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

from d2kd.modeling.meta_arch import ATSS, FCOS, GFL  # noqa: E402

from tests.integration.common import (  # noqa: E402
    make_batch,
    tiny_cfg,
    tiny_dense_opts,
    tiny_shapes,
)

DETECTORS = {
    # class, loss keys, the box losses that are positive when the images have positives
    "ATSS": (ATSS, {"loss_atss_cls", "loss_atss_box", "loss_atss_ctr"}, ["loss_atss_box"]),
    "GFL": (
        GFL,
        {"loss_gfl_cls", "loss_gfl_bbox", "loss_gfl_dfl"},
        ["loss_gfl_bbox", "loss_gfl_dfl"],
    ),
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_shapes(str(tmp_path_factory.mktemp("shapes")), n=4)


@pytest.mark.parametrize("arch", sorted(DETECTORS))
def test_two_training_iterations_then_eval(arch, data):
    _, loss_keys, box_keys = DETECTORS[arch]
    cfg = tiny_cfg(f"shapes/{arch.lower()}_R18.yaml", tiny_dense_opts(arch))
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    optimizer = build_optimizer(cfg, model)
    batch = make_batch(cfg, data[:2])
    with EventStorage(0) as storage:
        for _ in range(2):
            losses = model(batch)
            assert set(losses) == loss_keys
            assert all(torch.isfinite(v) for v in losses.values())
            assert all(losses[k] > 0 for k in box_keys)  # the images have positives
            optimizer.zero_grad()
            sum(losses.values()).backward()
            optimizer.step()
            storage.step()
        assert storage.history("num_pos_anchors").latest() > 0
    assert all(p.grad is not None for p in model.head.parameters())
    model.eval()
    model.test_score_thresh = 0.0  # two steps from scratch: scores may all be below 0.05
    with torch.no_grad():
        out = model(make_batch(cfg, data[2:4], is_train=False))
    assert len(out) == 2 and out[0]["instances"].has("pred_boxes")
    assert 0 < len(out[0]["instances"]) <= cfg.TEST.DETECTIONS_PER_IMAGE
    scores = out[0]["instances"].scores
    assert (scores >= 0).all() and (scores <= 1).all()


@pytest.mark.parametrize("arch", sorted(DETECTORS))
def test_teacher_and_student_with_feature_mse(arch, data):
    cls, loss_keys, _ = DETECTORS[arch]
    small = ["MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.RES2_OUT_CHANNELS", 64]
    cfg = tiny_cfg(
        "shapes/kd/mse_retinanet_R50_to_R18.yaml",
        [
            "MODEL.KD.STUDENT_META_ARCHITECTURE", arch,
            f"MODEL.{arch}.NUM_CLASSES", 4,
            "MODEL.KD.TEACHER.CONFIG_FILE", f"configs/shapes/{arch.lower()}_R50.yaml",
            "MODEL.KD.TEACHER.OPTS", ["MODEL.DEVICE", "cpu"] + small + tiny_dense_opts(arch),
            *tiny_dense_opts(arch),
        ],
    )  # fmt: skip
    model = build_model(cfg)
    assert isinstance(model.student, cls) and isinstance(model.teacher, cls)
    model.train()
    with EventStorage(0):
        losses = model(make_batch(cfg, data[:2]))
    assert loss_keys <= set(losses)
    assert sorted(k for k in losses if k.startswith("loss_kd_mse_")) == [
        f"loss_kd_mse_p{i}" for i in range(3, 8)
    ]
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert all(p.grad is None for p in model.teacher.parameters())


@pytest.mark.parametrize("arch,cls", [("ATSS", ATSS), ("GFL", GFL), ("FCOS", FCOS)])
def test_missing_head_feature_is_named(arch, cls):
    cfg = tiny_cfg(f"shapes/{arch.lower()}_R18.yaml", [f"MODEL.{arch}.IN_FEATURES", ["p3", "p9"]])
    with pytest.raises(KeyError, match=rf"MODEL\.{arch}\.IN_FEATURES.*\['p9'\]"):
        build_model(cfg)
