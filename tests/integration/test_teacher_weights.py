"""Loading the teacher's checkpoint: strict, with every problem named."""

import pytest

pytest.importorskip("detectron2", reason="integration test: Detectron2 cannot be imported")

import torch  # noqa: E402
from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402

from d2kd.modeling.teacher import load_teacher_weights  # noqa: E402

from tests.integration.common import tiny_cfg  # noqa: E402


def _detector():
    return build_model(tiny_cfg("shapes/retinanet_R18.yaml"))


def test_loads_a_saved_detector_exactly(tmp_path):
    src = _detector()
    DetectionCheckpointer(src, save_dir=str(tmp_path)).save("teacher")
    dst = _detector()
    assert not torch.equal(dst.head.cls_score.weight, src.head.cls_score.weight)
    load_teacher_weights(dst, str(tmp_path / "teacher.pth"))
    for (name, a), b in zip(src.state_dict().items(), dst.state_dict().values()):
        assert torch.equal(a, b), name


def test_missing_and_unexpected_keys_are_named(tmp_path):
    state = _detector().state_dict()
    state["head.extra.weight"] = torch.zeros(1)
    del state["head.cls_score.bias"]
    torch.save({"model": state}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"missing keys \['head.cls_score.bias'\].*head.extra"):
        load_teacher_weights(_detector(), str(tmp_path / "bad.pth"))
