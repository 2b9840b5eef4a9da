"""Each dense detector of d2kd's yacs configs trains a few steps on CPU and evaluates; the
MobileNetV2 backbone loads torchvision's checkpoint."""

import pytest

pytest.importorskip("detectron2", reason="integration test: Detectron2 cannot be imported")

import torch  # noqa: E402
from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

from d2kd.config import get_d2kd_cfg  # noqa: E402

from tests.integration.common import config_path, make_batch, tiny_cfg, tiny_shapes  # noqa: E402

DETECTORS = {
    "shapes/retinanet_R18.yaml": {"loss_cls", "loss_box_reg"},
    "shapes/fcos_R18.yaml": {"loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr"},
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_shapes(str(tmp_path_factory.mktemp("shapes")), n=4)


@pytest.mark.parametrize("config", sorted(DETECTORS))
def test_train_steps_and_eval(config, data):
    cfg = tiny_cfg(config, ["SOLVER.BASE_LR", 0.01])
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    batch = make_batch(cfg, data[:2])
    with EventStorage(0):
        for _ in range(3):
            losses = model(batch)
            assert set(losses) == DETECTORS[config]
            assert all(torch.isfinite(v) for v in losses.values())
            opt.zero_grad()
            sum(losses.values()).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        out = model(make_batch(cfg, data[2:], is_train=False))
    assert len(out) == 2 and out[0]["instances"].image_size == (128, 128)


def test_torchvision_mobilenet_v2_checkpoint_loads_by_suffix(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    cfg = get_d2kd_cfg()
    cfg.merge_from_file(config_path("shapes/fcos_R18.yaml"))
    cfg.merge_from_list(
        ["MODEL.BACKBONE.NAME", "build_mobilenetv2_fpn_backbone", "MODEL.DEVICE", "cpu"]
    )
    model = build_model(cfg)
    reference = torchvision.models.mobilenet_v2(weights=None).state_dict()
    path = str(tmp_path / "mobilenet_v2.pth")
    torch.save(reference, path)
    DetectionCheckpointer(model).load(path + "?matching_heuristics=True")
    loaded = model.backbone.bottom_up.state_dict()
    for key in ("features.0.0.weight", "features.7.conv.1.0.weight", "features.18.1.running_var"):
        assert torch.equal(loaded[key], reference[key]), key
