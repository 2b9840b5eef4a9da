"""tools/visualize_pgw.py with a random teacher on a generated shapes image."""

import pytest

pytest.importorskip("detectron2", reason="integration test: Detectron2 cannot be imported")

import importlib.util  # noqa: E402
import os  # noqa: E402

import cv2  # noqa: E402

from tests.integration.common import REPO, config_path, tiny_shapes  # noqa: E402


def _tool():
    spec = importlib.util.spec_from_file_location(
        "visualize_pgw", os.path.join(REPO, "tools", "visualize_pgw.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_visualize_pgw_writes_one_png_per_level(tmp_path):
    record = tiny_shapes(str(tmp_path / "shapes"), n=1)[0]
    boxes = []
    for ann in record["annotations"]:  # COCO xywh -> xyxy + class
        x, y, w, h = ann["bbox"]
        boxes += ["--box", str(x), str(y), str(x + w), str(y + h), str(ann["category_id"])]
    out = tmp_path / "vis"
    argv = ["--config-file", config_path("shapes/retinanet_R18.yaml"), "--allow-random-init"]
    argv += ["--image", record["file_name"], *boxes, "--output", str(out)]
    argv += ["MODEL.FPN.OUT_CHANNELS", "64"]
    tool = _tool()
    paths = tool.visualize(tool.parse_args(argv))
    names = sorted(os.path.basename(p) for p in paths)
    assert names == ["gt.png"] + [f"pgw_cls_p{i}.png" for i in range(3, 8)]
    for p in paths:
        img = cv2.imread(p)
        assert img is not None and img.shape == (128, 128, 3)
    with pytest.raises(ValueError, match="--weights"):
        tool.visualize(tool.parse_args([a for a in argv if a != "--allow-random-init"]))
