"""
Two-stage models (Detectron2's GeneralizedRCNN, Faster R-CNN) as teacher and as student for the
losses that need only FPN features and ground truth; the dense-head losses refuse them by name.
The teacher is a model-zoo config made tiny (R18, 32-channel FPN, small RPN/ROI batches).
"""

import pytest

pytest.importorskip("detectron2", reason="integration test: Detectron2 cannot be imported")

import torch  # noqa: E402
from detectron2 import model_zoo  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

from d2kd.config import get_d2kd_cfg  # noqa: E402
from d2kd.modeling.checks import two_stage_losses  # noqa: E402

from tests.integration.common import make_batch, tiny_cfg, tiny_shapes  # noqa: E402

ZOO_FASTER_RCNN = "COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"
INPUT = ["INPUT.MIN_SIZE_TRAIN", (64,), "INPUT.MAX_SIZE_TRAIN", 64]
RCNN_TINY = [
    "MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.RES2_OUT_CHANNELS", 64, "MODEL.FPN.OUT_CHANNELS", 32,
    "MODEL.ROI_BOX_HEAD.FC_DIM", 32, "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 32,
    "MODEL.ROI_HEADS.NUM_CLASSES", 4, "MODEL.RPN.BATCH_SIZE_PER_IMAGE", 32,
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN", 200, "MODEL.RPN.POST_NMS_TOPK_TRAIN", 50,
    "MODEL.DEVICE", "cpu", *INPUT,
]  # fmt: skip
NODES = {"FeatureMSELoss": "FEATURE_MSE", "FGDLoss": "FGD", "PKDLoss": "PKD"}
# The losses that declare DistillLoss.TWO_STAGE: each is run below with two-stage models.
TWO_STAGE = two_stage_losses()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_shapes(str(tmp_path_factory.mktemp("shapes2")), n=4)


def _cfg(student: str, loss: str):
    """A zoo Faster R-CNN teacher; a shapes RetinaNet R18 or a zoo Faster R-CNN student."""
    if student == "retinanet":
        cfg = tiny_cfg("shapes/kd/mse_retinanet_R18long_to_R18.yaml")
        cfg.merge_from_list(["MODEL.FPN.OUT_CHANNELS", 32, "MODEL.RETINANET.NUM_CONVS", 1, *INPUT])
        keys = ["p3", "p4", "p5", "p6"]  # the levels both FPNs have, at the same strides
    else:
        cfg = get_d2kd_cfg()
        cfg.merge_from_file(model_zoo.get_config_file(ZOO_FASTER_RCNN))
        cfg.merge_from_list(RCNN_TINY)
        cfg.MODEL.META_ARCHITECTURE, cfg.MODEL.WEIGHTS = "DistillDetector", ""
        cfg.MODEL.KD.STUDENT_META_ARCHITECTURE = "GeneralizedRCNN"
        cfg.MODEL.KD.TEACHER.ALLOW_RANDOM_INIT = True
        keys = ["p2", "p3", "p4", "p5"]  # FGD's two-stage levels (P6 is max-pooled P5)
    cfg.MODEL.KD.TEACHER.CONFIG_FILE = ZOO_FASTER_RCNN  # a model-zoo name
    cfg.MODEL.KD.TEACHER.OPTS = RCNN_TINY
    cfg.MODEL.KD.TEACHER.RUN = "auto"
    cfg.MODEL.KD.LOSSES, cfg.MODEL.KD.LOSS_WEIGHTS = [loss], [1.0]
    if loss in NODES:
        cfg.MODEL.KD[NODES[loss]].KEYS = keys
    if loss == "FGDLoss":  # FGD's two-stage row (spec 3.7)
        cfg.merge_from_list(["MODEL.KD.FGD.ALPHA", 5e-5, "MODEL.KD.FGD.BETA", 2.5e-5])
        cfg.merge_from_list(["MODEL.KD.FGD.GAMMA", 5e-5, "MODEL.KD.FGD.LAMBDA", 5e-7])
    return cfg


@pytest.mark.parametrize("loss", TWO_STAGE)
@pytest.mark.parametrize("student", ["retinanet", "faster_rcnn"])
def test_two_stage_teacher_distils(data, student, loss):
    cfg = _cfg(student, loss)
    model = build_model(cfg)
    assert type(model.teacher).__name__ == "GeneralizedRCNN"
    expected = "RetinaNet" if student == "retinanet" else "GeneralizedRCNN"
    assert type(model.student).__name__ == expected
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-4)
    before = model.student.backbone.fpn_output3.weight.detach().clone()
    model.train()
    kd_keys = []
    for it in range(3):
        with EventStorage(it):
            losses = model(make_batch(cfg, data[2 * (it % 2) : 2 * (it % 2) + 2]))
        assert all(torch.isfinite(v) for v in losses.values()), losses
        kd_keys = sorted(k for k in losses if k.startswith("loss_kd_"))
        assert kd_keys and all(losses[k] > 0 for k in kd_keys if "_bg_" not in k)
        opt.zero_grad()
        sum(losses.values()).backward()
        # Random FrozenBN backbones (the zoo's) give huge features: clip as the configs do.
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
    assert all(p.grad is None for p in model.teacher.parameters())
    assert not torch.equal(before, model.student.backbone.fpn_output3.weight)
    level = "p2" if student == "faster_rcnn" else "p3"
    assert any(k.endswith(f"_{level}") for k in kd_keys)


def test_the_two_stage_losses_come_from_their_flag():
    """Issue 21: the refusal below listed FeatureMSELoss and FGDLoss by hand and omitted PKD."""
    assert TWO_STAGE == ["FGDLoss", "FeatureMSELoss", "PKDLoss"]


@pytest.mark.parametrize("student", ["retinanet", "faster_rcnn"])
def test_dense_head_losses_refuse_a_two_stage_model(student):
    with pytest.raises(
        ValueError, match=r"PGDLoss reads a dense.*GeneralizedRCNN \(a two-stage"
    ) as e:
        build_model(_cfg(student, "PGDLoss"))
    assert "ground truth (FGDLoss, FeatureMSELoss, PKDLoss)" in str(e.value)
    for loss in ("BCKDLoss",):  # the logit losses name what a two-stage model lacks too
        with pytest.raises(
            ValueError, match=rf"{loss} reads a dense.*GeneralizedRCNN \(a two-stage"
        ):
            build_model(_cfg(student, loss))
