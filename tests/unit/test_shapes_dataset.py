"""The synthetic shapes generator: deterministic, valid COCO, importable without Detectron2."""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from d2kd.data.shapes import SHAPE_CLASSES, ensure_shapes_dataset, generate_split

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _load(path):
    with open(path) as f:
        return json.load(f)


def _iou(a, b):
    """a, b: COCO [x, y, w, h]."""
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def test_same_seed_same_files_other_seed_other_files(tmp_path):
    import cv2

    a = generate_split(str(tmp_path / "a"), "train", 6, seed=3)
    b = generate_split(str(tmp_path / "b"), "train", 6, seed=3)
    c = generate_split(str(tmp_path / "c"), "train", 6, seed=4)
    assert _load(a)["annotations"] == _load(b)["annotations"]
    assert _load(a)["annotations"] != _load(c)["annotations"]
    for name in ("000000.png", "000005.png"):
        ia = cv2.imread(str(tmp_path / "a" / "train" / name))
        ib = cv2.imread(str(tmp_path / "b" / "train" / name))
        assert ia.shape == (128, 128, 3) and np.array_equal(ia, ib)


def test_splits_differ_and_each_image_has_its_own_generator(tmp_path):
    train = _load(generate_split(str(tmp_path), "train", 4, seed=0))
    val = _load(generate_split(str(tmp_path), "val", 4, seed=0))
    assert train["annotations"] != val["annotations"]
    # Image i depends only on (seed, split, i): a longer split starts with the same images.
    longer = _load(generate_split(str(tmp_path / "long"), "train", 6, seed=0))
    first4 = [a for a in longer["annotations"] if a["image_id"] <= 4]
    assert [a["bbox"] for a in first4] == [a["bbox"] for a in train["annotations"]]


def test_loads_with_pycocotools_and_annotations_are_sane(tmp_path):
    coco_api = pytest.importorskip("pycocotools.coco", reason="pycocotools is not installed")
    n = 24
    coco = coco_api.COCO(generate_split(str(tmp_path), "val", n, seed=0))
    assert sorted(coco.getImgIds()) == list(range(1, n + 1))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == SHAPE_CLASSES
    anns = coco.loadAnns(coco.getAnnIds())
    assert len(anns) > 2 * n  # several objects per image on average
    for a in anns:
        x, y, w, h = a["bbox"]
        assert 0 <= x and 0 <= y and x + w <= 128 and y + h <= 128 and w > 0 and h > 0
        assert a["area"] == pytest.approx(w * h) and a["iscrowd"] == 0
    assert {a["category_id"] for a in anns} == {1, 2, 3, 4}
    sides = [max(a["bbox"][2:]) for a in anns]
    assert min(sides) < 16 and max(sides) > 48  # small to large objects
    overlaps = [
        _iou(p["bbox"], q["bbox"])
        for i in coco.getImgIds()
        for j, p in enumerate(coco.loadAnns(coco.getAnnIds(imgIds=i)))
        for q in coco.loadAnns(coco.getAnnIds(imgIds=i))[j + 1 :]
    ]
    assert any(v > 0 for v in overlaps)  # some objects overlap


def test_boxes_are_tight_around_the_drawn_shape(monkeypatch):
    # On a black background, an image holding one object: its box must enclose exactly the
    # pixels that were painted (within 1 px: anti-aliased edges are painted faintly).
    import d2kd.data.shapes as shapes

    monkeypatch.setattr(
        shapes, "_background", lambda rng, height, width: np.zeros((height, width, 3), np.uint8)
    )
    checked = 0
    for i in range(40):
        img, objects = shapes.draw_image(np.random.default_rng([0, 0, i]), 128)
        if len(objects) != 1:
            continue
        ys, xs = np.nonzero(img.max(axis=2) > 0)
        painted = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        assert np.allclose(objects[0]["bbox"], painted, atol=1.0), (i, objects[0], painted)
        checked += 1
    assert checked >= 3


def test_ensure_does_not_rewrite_an_existing_split(tmp_path):
    path = ensure_shapes_dataset(str(tmp_path), "val", 3)
    mtime = os.path.getmtime(path)
    assert ensure_shapes_dataset(str(tmp_path), "val", 3) == path
    assert os.path.getmtime(path) == mtime and len(_load(path)["images"]) == 3


def test_prepare_shapes_cli_writes_both_splits(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location(
        "prepare_shapes", os.path.join(REPO, "datasets", "prepare_shapes.py")
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = mod.main(
        ["--root", str(tmp_path), "--seed", "1", "--train-images", "3", "--val-images", "2"]
    )
    assert {k: len(_load(v)["images"]) for k, v in out.items()} == {"train": 3, "val": 2}
    assert "train: 3 images" in capsys.readouterr().out


def test_generator_imports_without_detectron2():
    code = (
        "import sys; sys.modules['detectron2'] = None\n"  # any import of detectron2 now fails
        "from d2kd.data import generate_split\n"
        "from d2kd.data.shapes import draw_image\n"
        "print('ok')"
    )
    env = dict(os.environ, PYTHONPATH=REPO)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_shapes_wide_is_deterministic_non_square_with_varied_sizes_and_smaller_objects(tmp_path):
    wide = _load(generate_split(str(tmp_path / "w"), "train", 16, seed=0, variant="shapes_wide"))
    again = _load(generate_split(str(tmp_path / "w2"), "train", 16, seed=0, variant="shapes_wide"))
    assert wide == again
    sizes = {(im["height"], im["width"]) for im in wide["images"]}
    assert len(sizes) == 16 and all(h != w for h, w in sizes)  # varied: batches get padding
    assert all(96 <= h <= 192 and 128 <= w <= 320 for h, w in sizes)
    ratios = [w / h for h, w in sizes]
    assert min(ratios) < 1.2 and max(ratios) > 2.0
    import cv2

    first = wide["images"][0]
    img = cv2.imread(str(tmp_path / "w" / "train" / first["file_name"]))
    assert img.shape == (first["height"], first["width"], 3)
    for a in wide["annotations"]:
        im = wide["images"][a["image_id"] - 1]
        x, y, w, h = a["bbox"]
        assert 0 <= x and x + w <= im["width"] and 0 <= y and y + h <= im["height"]
    square = _load(generate_split(str(tmp_path / "s"), "train", 16, seed=0))
    side = [max(a["bbox"][2:]) for a in wide["annotations"]]
    assert max(side) <= 50 and np.median(side) < np.median(
        [max(a["bbox"][2:]) for a in square["annotations"]]
    )
    assert len(wide["annotations"]) / 16 > len(square["annotations"]) / 16  # more objects


def test_unknown_variant_is_named():
    with pytest.raises(KeyError, match="shapes_wide"):
        generate_split("/nonexistent", "train", 1, variant="shapez")


_RACER = """
import importlib.util, os, sys, time
spec = importlib.util.spec_from_file_location("shapes", {path!r})  # the module alone: fast
shapes = importlib.util.module_from_spec(spec)
spec.loader.exec_module(shapes)
original = shapes.generate_split
def counting(*args, **kwargs):
    print("GENERATED", flush=True)
    return original(*args, **kwargs)
shapes.generate_split = counting
while not os.path.exists({go!r}):
    time.sleep(0.01)
print(shapes.ensure_shapes_dataset({root!r}, "train", 60), flush=True)
"""


def test_processes_started_together_generate_once_and_all_read_a_whole_json(tmp_path):
    # Six stages of a comparison started at once each generated the dataset into one shared
    # ".tmp" json, and some read the interleaved result (JSONDecodeError).
    root, go = str(tmp_path / "shapes"), str(tmp_path / "go")
    path = os.path.join(REPO, "d2kd", "data", "shapes.py")
    code = _RACER.format(path=path, go=go, root=root)
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    open(go, "w").close()
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, outs
    assert sum(o.count("GENERATED") for o in outs) == 1, outs
    generate_split(str(tmp_path / "ref"), "train", 60)
    assert _load(os.path.join(root, "annotations", "instances_train.json")) == _load(
        str(tmp_path / "ref" / "annotations" / "instances_train.json")
    )
    assert not [f for f in os.listdir(os.path.join(root, "annotations")) if f.endswith(".tmp")]
