"""
Teachers from anywhere Detectron2 loads: URLs and ``detectron2://`` (served here by a PathManager
handler the test registers: no network), model-zoo config names, the zoo's trained weights.
"""

import pytest

pytest.importorskip("detectron2", reason="integration test: Detectron2 cannot be imported")

import torch  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402

from d2kd.modeling.teacher import zoo_weights_url  # noqa: E402

from tests.integration.common import ZOO_URL, tiny_cfg, zoo_mirror  # noqa: E402

KD = "shapes/kd/mse_retinanet_R18long_to_R18.yaml"
TINY = [
    "MODEL.FPN.OUT_CHANNELS", 32, "MODEL.RETINANET.NUM_CONVS", 1,
    "INPUT.MIN_SIZE_TRAIN", (64,), "INPUT.MAX_SIZE_TRAIN", 64,
]  # fmt: skip
ZOO_RETINANET = "COCO-Detection/retinanet_R_50_FPN_1x.yaml"
# A zoo RetinaNet made tiny (R18, 32-channel FPN, one tower conv, 4 classes) to build fast.
ZOO_TINY = [
    "MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.RES2_OUT_CHANNELS", 64, "MODEL.FPN.OUT_CHANNELS", 32,
    "MODEL.RETINANET.NUM_CONVS", 1, "MODEL.RETINANET.NUM_CLASSES", 4, "MODEL.DEVICE", "cpu",
]  # fmt: skip


@pytest.fixture
def mirror(tmp_path):
    """A handler for the Detectron2 model-zoo URL prefix (``detectron2://`` resolves to it)."""
    with zoo_mirror(str(tmp_path / "mirror")) as handler:
        yield handler


def _kd_cfg(teacher_config=None, teacher_opts=TINY, **kd):
    cfg = tiny_cfg(KD, [*TINY, "MODEL.KD.TEACHER.OPTS", ["MODEL.DEVICE", "cpu", *teacher_opts]])
    if teacher_config:
        cfg.MODEL.KD.TEACHER.CONFIG_FILE = teacher_config
    for k, v in kd.items():
        cfg.merge_from_list([f"MODEL.KD.{k}", v])
    return cfg


def _publish(model, mirror, name):
    """Write ``model``'s weights as ``name`` under the mirror (.pth, or a zoo-format .pkl)."""
    return mirror.publish(ZOO_URL + name, model.state_dict())


def _same_weights(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize(
    "url",
    [ZOO_URL + "teachers/t.pth", "detectron2://teachers/t.pth", ZOO_URL + "m/final.pkl"],
    ids=["https-pth", "detectron2-pth", "https-pkl"],
)
def test_teacher_weights_from_a_url(mirror, url):
    ref = build_model(_kd_cfg()).teacher
    _publish(ref, mirror, url.split("detectron2/")[-1].replace("detectron2://", ""))
    model = build_model(_kd_cfg(**{"TEACHER.WEIGHTS": url, "TEACHER.ALLOW_RANDOM_INIT": False}))
    assert _same_weights(ref, model.teacher)
    assert mirror.asked  # served by the handler, not the network


def test_missing_url_and_local_file_fail_at_build_naming_the_key(mirror, tmp_path):
    for path in (ZOO_URL + "absent.pth", str(tmp_path / "absent.pth")):
        with pytest.raises(FileNotFoundError, match="MODEL.KD.TEACHER.WEIGHTS: no such file"):
            build_model(_kd_cfg(**{"TEACHER.WEIGHTS": path}))


def test_a_zoo_config_name_builds_the_teacher():
    model = build_model(_kd_cfg(ZOO_RETINANET, ZOO_TINY))
    assert type(model.teacher).__name__ == "RetinaNet" and model.teacher.num_classes == 4
    assert len(model.teacher.backbone.bottom_up.res2) == 2  # R18 from the OPTS over the zoo file
    with pytest.raises(FileNotFoundError, match="CONFIG_FILE: no such file.*model zoo"):
        build_model(_kd_cfg("COCO-Detection/no_such_model.yaml"))


def test_weights_from_zoo_resolve_to_the_zoo_url_and_load(mirror):
    cfg = _kd_cfg(ZOO_RETINANET, ZOO_TINY, **{"TEACHER.WEIGHTS_FROM_ZOO": True})
    url = zoo_weights_url(cfg)
    assert url.startswith(ZOO_URL + "COCO-Detection/retinanet_R_50_FPN_1x/") and url.endswith(
        ".pkl"
    )
    ref = build_model(_kd_cfg(ZOO_RETINANET, ZOO_TINY)).teacher
    _publish(ref, mirror, url[len(ZOO_URL) :])
    cfg.MODEL.KD.TEACHER.ALLOW_RANDOM_INIT = False
    model = build_model(cfg)
    assert _same_weights(ref, model.teacher)
    assert url in mirror.asked

    both = _kd_cfg(ZOO_RETINANET, ZOO_TINY, **{"TEACHER.WEIGHTS_FROM_ZOO": True})
    both.MODEL.KD.TEACHER.WEIGHTS = "teacher.pth"
    with pytest.raises(ValueError, match="WEIGHTS_FROM_ZOO is set but MODEL.KD.TEACHER.WEIGHTS"):
        build_model(both)
    local = _kd_cfg(**{"TEACHER.WEIGHTS_FROM_ZOO": True})
    with pytest.raises(ValueError, match="needs MODEL.KD.TEACHER.CONFIG_FILE to be a Detectron2"):
        build_model(local)
