"""
Detectron2 LazyConfig (.py) teachers: a model-zoo name loads (its Python is the installed
detectron2 package's), with MODEL.KD.TEACHER.OPTS as key=value overrides; feature losses distil
from it, dense-head losses refuse it; a user's .py is refused (never run) without the opt-in.
"""

import pytest

pytest.importorskip("detectron2", reason="integration test: Detectron2 cannot be imported")

import torch  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402

from tests.integration.common import kd_step, tiny_cfg, tiny_shapes  # noqa: E402

ZOO_LAZY = "new_baselines/mask_rcnn_R_101_FPN_400ep_LSJ.py"
INPUT = ["INPUT.MIN_SIZE_TRAIN", (64,), "INPUT.MAX_SIZE_TRAIN", 64]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_shapes(str(tmp_path_factory.mktemp("shapes_lazy")), n=2)


def _cfg(teacher: str, loss: str = "FeatureMSELoss", opts=()):
    cfg = tiny_cfg("shapes/kd/mse_retinanet_R18long_to_R18.yaml")
    cfg.merge_from_list(["MODEL.FPN.OUT_CHANNELS", 32, "MODEL.RETINANET.NUM_CONVS", 1, *INPUT])
    cfg.MODEL.KD.TEACHER.CONFIG_FILE = teacher
    cfg.MODEL.KD.TEACHER.OPTS = list(opts)
    cfg.MODEL.KD.LOSSES, cfg.MODEL.KD.LOSS_WEIGHTS = [loss], [1.0]
    for node in ("FEATURE_MSE", "FGD", "PKD"):
        cfg.MODEL.KD[node].KEYS = ["p3", "p4", "p5", "p6"]  # levels both FPNs have
    return cfg


@pytest.mark.parametrize("loss,prefix", [("FeatureMSELoss", "mse"), ("PKDLoss", "pkd")])
def test_zoo_lazyconfig_teacher_distils_feature_losses(data, loss, prefix):
    torch.manual_seed(0)
    opts = ["model.backbone.bottom_up.stages.depth=50", "model.roi_heads.num_classes=4"]
    cfg = _cfg(ZOO_LAZY, loss, opts=opts)
    model = build_model(cfg)
    teacher = model.teacher
    assert type(teacher).__name__ == "GeneralizedRCNN"
    assert len(teacher.backbone.bottom_up.stages[2]) == 6  # R50 (R101 has 23): OPTS applied
    assert teacher.roi_heads.box_predictor.cls_score.out_features == 5
    for _ in range(2):
        losses = kd_step(cfg, model, data)
    terms = sorted(k for k in losses if k.startswith("loss_kd_"))
    assert terms and all(t.startswith(f"loss_kd_{prefix}_") for t in terms), terms
    assert all(losses[k] > 0 for k in terms)


def test_dense_head_loss_refuses_a_lazyconfig_two_stage_teacher():
    cfg = _cfg(ZOO_LAZY, "PGDLoss", ["model.backbone.bottom_up.stages.depth=50"])
    with pytest.raises(ValueError, match="two-stage"):
        build_model(cfg)


def test_lazyconfig_opts_must_be_key_value_and_name_no_callable(tmp_path):
    with pytest.raises(ValueError, match="key=value"):
        build_model(_cfg(ZOO_LAZY, opts=["MODEL.DEVICE", "cpu"]))
    marker = tmp_path / "MARKER"
    evil = f"model.evil={{_target_:subprocess.run,args:[touch,{marker}]}}"
    with pytest.raises(ValueError, match="_target_.*ALLOW_PYTHON_CONFIG"):
        build_model(_cfg(ZOO_LAZY, opts=[evil]))
    assert not marker.exists()


def test_users_python_config_needs_the_opt_in(tmp_path):
    marker = tmp_path / "MARKER"
    py = tmp_path / "teacher.py"
    py.write_text(
        f"open({str(marker)!r}, 'w').close()\n"
        "from detectron2.model_zoo import get_config\n"
        "model = get_config('common/models/retinanet.py').model\n"
        "model.num_classes = 4\n"
    )
    with pytest.raises(ValueError, match="would run its code.*ALLOW_PYTHON_CONFIG True"):
        build_model(_cfg(str(py)))
    assert not marker.exists()
    cfg = _cfg(str(py))
    cfg.MODEL.KD.TEACHER.ALLOW_PYTHON_CONFIG = True
    model = build_model(cfg)  # trusted now: it runs (and writes the marker)
    assert marker.exists() and type(model.teacher).__name__ == "RetinaNet"
