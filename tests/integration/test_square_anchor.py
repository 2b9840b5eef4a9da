"""What ATSS and GFL share (SquareAnchorDetector): training steps, eval, KD teacher and student."""

import pytest

pytest.importorskip("detectron2", reason="integration test: Detectron2 cannot be imported")

import torch  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.solver import build_optimizer  # noqa: E402
from detectron2.structures import Boxes, Instances  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

from d2kd.modeling.meta_arch import ATSS, FCOS, GFL  # noqa: E402
from d2kd.modeling.recorder import TapRecorder  # noqa: E402

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


def _image(h, w, box):
    inst = Instances((h, w), gt_boxes=Boxes(torch.tensor([box])), gt_classes=torch.tensor([1]))
    return {"image": torch.zeros(3, h, w, dtype=torch.uint8), "instances": inst}


def _labels(model, batch):
    rec = TapRecorder(model, ["label_anchors()"])
    with EventStorage(0), rec:
        model(batch)
    rec.close()
    return rec.get("label_anchors()")[0]


@pytest.mark.parametrize("arch", sorted(DETECTORS))
def test_image_smaller_than_its_batch_is_labelled_as_alone(arch):
    # A 96 x 96 image whose tall object touches its right and bottom edges, batched with a
    # 224 x 288 one: ATSS candidates come from the image's own anchors only (mmdet's valid_flags),
    # so its labels on its own 12 x 12, 6 x 6, 3 x 3, 2 x 2, 1 x 1 grids are those it gets alone,
    # and the anchors on its batch padding are ignored (-1). Before the fix the padding anchors
    # closest to the object were candidates, which moved the ATSS thresholds (6 positives, 8 alone).
    cfg = tiny_cfg(f"shapes/{arch.lower()}_R18.yaml", tiny_dense_opts(arch))
    torch.manual_seed(0)
    model = build_model(cfg).train()
    small, big = _image(96, 96, [78.0, 0.0, 96.0, 96.0]), _image(224, 288, [8.0, 8.0, 60.0, 60.0])
    alone = _labels(model, [small])[0]
    batched = _labels(model, [small, big])[0]
    assert (alone != model.num_classes).sum() > 0  # the object has positives
    grids, start = [], 0
    for (ha, wa), (hb, wb) in zip(
        [(12, 12), (6, 6), (3, 3), (2, 2), (1, 1)], [(28, 36), (14, 18), (7, 9), (4, 5), (2, 3)]
    ):
        level = batched[start : start + hb * wb].view(hb, wb)
        grids.append(level[:ha, :wa].flatten())
        padding = torch.ones(hb, wb, dtype=torch.bool)
        padding[:ha, :wa] = False
        assert (level[padding] == -1).all()
        start += hb * wb
    assert start == len(batched)
    assert torch.equal(torch.cat(grids), alone)
    # The case discriminates: with every anchor a candidate the object's positives differ.
    feats = [torch.zeros(2, 1, h, w) for h, w in [(28, 36), (14, 18), (7, 9), (4, 5), (2, 3)]]
    gts = [small["instances"], big["instances"]]
    everything, _ = model.label_anchors(model.anchor_generator(feats), gts)
    assert not torch.equal(everything[0] == 1, batched == 1)
    # The same step's losses stay finite with ignored anchors in the batch.
    with EventStorage(0):
        losses = model([small, big])
    assert all(torch.isfinite(v) for v in losses.values())
