"""The dataset check (d2kd/data/check.py, tools/check_dataset.py) on COCO jsons the tests write."""

import json
import os

import pytest

pytest.importorskip("detectron2", reason="integration test: Detectron2 cannot be imported")

import numpy as np  # noqa: E402
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.data.datasets import register_coco_instances  # noqa: E402
from detectron2.structures import BoxMode  # noqa: E402
from PIL import Image  # noqa: E402

from d2kd.data.check import DatasetCheckError, check_dataset, check_datasets  # noqa: E402

from tools import check_dataset as check_tool  # noqa: E402

CATEGORIES = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]


def _image(root, name, w, h):
    Image.fromarray(np.zeros((h, w, 3), dtype=np.uint8)).save(os.path.join(root, name))


def write_coco(root, bad: bool) -> str:
    """A 4-image COCO json under ``root``; with ``bad`` one case of each problem kind."""
    os.makedirs(root, exist_ok=True)
    images = [
        {"id": 1, "file_name": "1.png", "width": 32, "height": 32},
        {"id": 2, "file_name": "2.png", "width": 32, "height": 32},
        {"id": 3, "file_name": "3.png", "width": 32, "height": 32},
        {"id": 4, "file_name": "4.png", "width": 32, "height": 32},
    ]
    for im in images:
        _image(root, im["file_name"], 32, 32)
    anns = [
        {"id": 10, "image_id": 1, "category_id": 1, "bbox": [2, 2, 10, 10], "iscrowd": 0},
        {"id": 11, "image_id": 2, "category_id": 2, "bbox": [4, 4, 8, 12], "iscrowd": 0},
        {"id": 12, "image_id": 3, "category_id": 1, "bbox": [0, 0, 32, 32], "iscrowd": 0},
        {"id": 13, "image_id": 4, "category_id": 2, "bbox": [20, 20, 12.5, 12], "iscrowd": 0},
    ]
    if bad:
        anns += [
            {"id": 21, "image_id": 1, "category_id": 1, "bbox": [20, 5, -6, 8], "iscrowd": 0},
            {"id": 22, "image_id": 1, "category_id": 1, "bbox": [40, 40, 5, 5], "iscrowd": 0},
            {"id": 23, "image_id": 1, "category_id": 1, "iscrowd": 0},
            {"id": 24, "image_id": 1, "category_id": 7, "bbox": [1, 1, 5, 5], "iscrowd": 0},
            {"id": 25, "image_id": 1, "category_id": 2, "bbox": [25, 25, 20, 5], "iscrowd": 0},
            {"id": 26, "image_id": 9, "category_id": 2, "bbox": [1, 1, 5, 5], "iscrowd": 0},
        ]
        os.remove(os.path.join(root, "2.png"))  # missing image
        _image(root, "3.png", 40, 30)  # recorded 32x32
        images.append({"id": 5, "file_name": "5.png", "width": 32, "height": 32})
        _image(root, "5.png", 32, 32)  # an image without annotations (a warning)
    path = os.path.join(root, "ann.json")
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": anns, "categories": CATEGORIES}, f)
    return path


def register(name, root, bad):
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    register_coco_instances(name, {}, write_coco(root, bad), root)
    return name


def test_each_bad_case_is_named_with_its_ids(tmp_path):
    name = register("check_bad", str(tmp_path / "bad"), bad=True)
    report = check_dataset(name)
    found = {(p.kind, p.image_id, p.annotation_id) for p in report.problems}
    assert found == {
        ("nonpositive_size", 1, 21),
        ("outside_image", 1, 22),
        ("missing_bbox", 1, 23),
        ("unknown_category", 1, 24),
        ("partly_outside", 1, 25),
        ("unknown_image", 9, 26),
        ("missing_image", 2, None),
        ("size_mismatch", 3, None),
        ("empty_image", 5, None),
    }
    assert report.counts()["missing_bbox"] == 1 and len(report.errors) == 7
    assert len(report.warnings) == 2  # partly outside and the empty image are tolerated
    text = report.summary()
    assert "ann.json: image 1, annotation 23" in text and "40x30" in text
    # Valid boxes are counted per class (13 ends 0.5 px past the border: within the 1 px tolerance).
    assert report.class_counts == {"a": 2, "b": 3}
    with pytest.raises(DatasetCheckError, match="missing_bbox"):
        check_datasets([name], output_dir=str(tmp_path / "out"))
    saved = json.load(open(tmp_path / "out" / f"{name}.json"))
    assert len(saved["problems"]) == 9 and os.path.getsize(tmp_path / "out" / f"{name}.png") > 0


def test_clean_set_passes_and_histograms_are_written(tmp_path):
    name = register("check_clean", str(tmp_path / "clean"), bad=False)
    (report,) = check_datasets([name], output_dir=str(tmp_path / "out"))
    assert report.problems == [] and report.num_images == 4 and report.num_annotations == 4
    assert report.class_counts == {"a": 2, "b": 2}
    hist = dict(report.size_histogram())
    assert hist["8-16"] == 3 and hist["32-64"] == 1 and sum(hist.values()) == 4
    assert os.path.isfile(tmp_path / "out" / f"{name}.png")


def test_tolerance_and_registered_dicts(tmp_path):
    """Datasets without a json are checked on their dicts (any bbox_mode, index as annotation
    id)."""
    root = str(tmp_path)
    _image(root, "a.png", 20, 10)
    name = "check_dicts"
    dicts = [
        {
            "file_name": os.path.join(root, "a.png"),
            "image_id": "a",
            "height": 10,
            "width": 20,
            "annotations": [
                {"bbox": [2, 2, 22, 8], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0},
                {"bbox": [5, 5, 1, 8], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0},
                {"bbox": [1, 1, 2, 2], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 3},
            ],
        }
    ]
    DatasetCatalog.register(name, lambda: dicts)
    MetadataCatalog.get(name).set(thing_classes=["x"])
    found = {(p.kind, p.annotation_id) for p in check_dataset(name).problems}
    assert found == {
        ("partly_outside", "#0"),
        ("nonpositive_size", "#1"),
        ("unknown_category", "#2"),
    }
    # With a 2 px tolerance the box 2 px past the right border is fine.
    found = {(p.kind, p.annotation_id) for p in check_dataset(name, tolerance=2.0).problems}
    assert ("partly_outside", "#0") not in found


def test_command_line_tool(tmp_path, capsys):
    bad = write_coco(str(tmp_path / "bad"), bad=True)
    clean = write_coco(str(tmp_path / "clean"), bad=False)
    argv = ["--coco", "tool_clean", clean, str(tmp_path / "clean"), "tool_clean"]
    assert check_tool.main(argv + ["--output", str(tmp_path / "o")]) == 0
    assert os.path.isfile(tmp_path / "o" / "tool_clean.png")
    assert check_tool.main(["--coco", "tool_bad", bad, str(tmp_path / "bad"), "tool_bad"]) == 1


# ----------------------------------------------------------------------------- truncated images
def _noisy(root, name, fmt):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    path = os.path.join(root, name)
    Image.fromarray(arr).save(path, fmt)
    return path


def _truncate(path):
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) * 2 // 3])


def test_truncated_images_of_every_format_are_unreadable(tmp_path):
    """A truncated JPEG or BMP passed the header-only check and killed training at iteration 0
    with Pillow's 'image file is truncated', naming no file (issue 21)."""
    from d2kd.config import get_d2kd_cfg
    from d2kd.data import ImageReadError, build_train_mapper

    root = str(tmp_path)
    formats = {"jpg": "JPEG", "png": "PNG", "bmp": "BMP", "webp": "WEBP"}
    images, anns = [], []
    for k, (ext, fmt) in enumerate(sorted(formats.items())):
        for whole in (True, False):
            image_id = 2 * k + (1 if whole else 2)
            name = f"{'ok' if whole else 'cut'}.{ext}"
            path = _noisy(root, name, fmt)
            if not whole:
                _truncate(path)
            images.append({"id": image_id, "file_name": name, "width": 64, "height": 48})
            anns.append({"id": image_id, "image_id": image_id, "category_id": 1,
                         "bbox": [2, 2, 10, 10], "iscrowd": 0})  # fmt: skip
    with open(os.path.join(root, "ok.jpg"), "ab") as f:
        f.write(b"appended by a camera")  # bytes after the end marker: a whole JPEG still
    json_file = os.path.join(root, "ann.json")
    with open(json_file, "w") as f:
        json.dump({"images": images, "annotations": anns, "categories": CATEGORIES}, f)
    register_coco_instances("trunc_check", {}, json_file, root)
    report = check_dataset("trunc_check")
    unreadable = sorted(os.path.basename(p.message.split()[2]) for p in report.errors)
    assert [p.kind for p in report.errors] == ["unreadable_image"] * 4
    assert unreadable == ["cut.bmp", "cut.jpg", "cut.png", "cut.webp"]

    mapper = build_train_mapper(get_d2kd_cfg())
    record = {"file_name": os.path.join(root, "cut.jpg"), "image_id": 42, "height": 48,
              "width": 64, "annotations": []}  # fmt: skip
    with pytest.raises(ImageReadError, match=r"cut.jpg \(image id 42\) cannot be read.*truncated"):
        mapper(record)
    assert mapper({**record, "file_name": os.path.join(root, "ok.jpg")})["image"].shape[-1] > 0
