"""CrowdHuman odgt loading and registration, and CrowdHumanEvaluator, on files the tests write."""

import json
import logging
import math
import os

import pytest

pytest.importorskip("detectron2", reason="integration test: Detectron2 cannot be imported")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.structures import Boxes, BoxMode, Instances  # noqa: E402
from detectron2.utils import comm  # noqa: E402

from d2kd.data import load_crowdhuman, read_odgt, register_crowdhuman  # noqa: E402
from d2kd.evaluation import CrowdHumanEvaluator, build_evaluator  # noqa: E402

from tests.integration.common import config_path, tiny_cfg  # noqa: E402

# Three images (ID, height, width, gtboxes); the IDs contain commas as CrowdHuman's do.
# Image "1,a" holds two valid persons, a "mask" region and a person with extra.ignore = 1 whose
# box equals the mask (both are ignore regions); "2,b" one person; "3,c" no box at all.
PERSON = {"tag": "person", "extra": {"box_id": 0, "occ": 0}, "hbox": [0, 0, 1, 1]}
GT = [
    (
        "1,a",
        100,
        100,
        [
            dict(PERSON, fbox=[0, 0, 10, 10]),
            dict(PERSON, fbox=[20, 0, 10, 10], vbox=[20, 0, 5, 5]),
            {"tag": "mask", "fbox": [50, 0, 40, 40]},
            {"tag": "person", "fbox": [50, 0, 40, 40], "extra": {"ignore": 1}},
        ],
    ),
    ("2,b", 100, 100, [{"tag": "person", "fbox": [0, 0, 20, 20]}]),
    ("3,c", 100, 100, []),
]
# Detections per image ((x1, y1, x2, y2), score): the case of tests/unit/test_crowdhuman_metrics.
DETS = {
    "1,a": [
        ([0, 0, 10, 10], 0.9),
        ([60, 0, 70, 10], 0.8),
        ([55, 5, 65, 15], 0.75),
        ([0, 50, 10, 60], 0.7),
        ([20, 0, 30, 10], 0.6),
    ],
    "2,b": [],
    "3,c": [([0, 0, 10, 10], 0.65)],
}


def _write_dataset(root, lines=None, sizes=None):
    """Write ``root/annotation_val.odgt`` and the images ``root/Images/<ID>.jpg``."""
    os.makedirs(os.path.join(root, "Images"), exist_ok=True)
    for i, (image_id, h, w, _) in enumerate(GT):
        h, w = sizes[i] if sizes else (h, w)
        cv2.imwrite(os.path.join(root, "Images", f"{image_id}.jpg"), np.zeros((h, w, 3), np.uint8))
    if lines is None:
        lines = [json.dumps({"ID": i, "gtboxes": b}) for i, _, _, b in GT]
    odgt = os.path.join(root, "annotation_val.odgt")
    with open(odgt, "w") as f:
        f.write("\n".join(lines) + "\n")
    return odgt


def test_load_odgt_as_dataset_dicts(tmp_path, caplog):
    root = str(tmp_path)
    lines = [json.dumps({"ID": i, "gtboxes": b}) for i, _, _, b in GT]
    # A degenerate box (w = 0) on line 2 is skipped and logged.
    lines[1] = json.dumps(
        {"ID": "2,b", "gtboxes": GT[1][3] + [{"tag": "person", "fbox": [5, 5, 0, 8]}]}
    )
    odgt = _write_dataset(root, lines, sizes=[(48, 64), (40, 30), (32, 32)])
    with caplog.at_level(logging.WARNING):
        dicts = load_crowdhuman(odgt, os.path.join(root, "Images"))
    assert "Skipped 1 boxes with non-positive width or height on 1 lines" in caplog.text
    assert [d["ID"] for d in dicts] == ["1,a", "2,b", "3,c"]
    assert [d["image_id"] for d in dicts] == [0, 1, 2]
    assert [(d["height"], d["width"]) for d in dicts] == [(48, 64), (40, 30), (32, 32)]
    assert dicts[0]["file_name"] == os.path.join(root, "Images", "1,a.jpg")
    annos = dicts[0]["annotations"]
    assert [a["bbox"] for a in annos] == [
        [0, 0, 10, 10],
        [20, 0, 10, 10],
        [50, 0, 40, 40],
        [50, 0, 40, 40],
    ]
    assert [a["iscrowd"] for a in annos] == [0, 0, 1, 1]  # "mask" tag, then extra.ignore
    assert all(a["category_id"] == 0 and a["bbox_mode"] == BoxMode.XYWH_ABS for a in annos)
    assert len(dicts[1]["annotations"]) == 1 and dicts[2]["annotations"] == []
    # Sizes are cached beside the odgt, in MMDetection's id_hw format, and read from there.
    cache = os.path.join(root, "id_hw_val.json")
    with open(cache) as f:
        assert json.load(f) == {"1,a": [48, 64], "2,b": [40, 30], "3,c": [32, 32]}
    with open(cache, "w") as f:
        json.dump({"1,a": [7, 9], "2,b": [40, 30], "3,c": [32, 32]}, f)
    assert load_crowdhuman(odgt, os.path.join(root, "Images"))[0]["height"] == 7


@pytest.mark.parametrize(
    "bad_line, error",
    [
        ('{"ID": "x", "gtboxes": [', r"annotation_val.odgt:2: not a JSON object"),
        ('{"gtboxes": []}', r'annotation_val.odgt:2: missing or empty string "ID"'),
        ('{"ID": "x"}', r'annotation_val.odgt:2: image x: missing "gtboxes"'),
        ('{"ID": "x", "gtboxes": [{"tag": "person"}]}', r'odgt:2: gtboxes\[0\] "fbox" must be 4'),
        (
            '{"ID": "x", "gtboxes": [{"tag": "person", "fbox": [0, 0, NaN, 1]}]}',
            r"odgt:2: gtboxes\[0\]",
        ),
        ('{"ID": "1,a", "gtboxes": []}', r"odgt:2: image ID 1,a already on line 1"),
    ],
)
def test_malformed_odgt_lines_name_file_and_line(tmp_path, bad_line, error):
    odgt = tmp_path / "annotation_val.odgt"
    odgt.write_text(json.dumps({"ID": "1,a", "gtboxes": []}) + "\n" + bad_line + "\n")
    with pytest.raises(ValueError, match=error):
        read_odgt(str(odgt))


def test_missing_image_names_file_and_line(tmp_path):
    odgt = _write_dataset(str(tmp_path))
    os.remove(os.path.join(tmp_path, "Images", "3,c.jpg"))
    with pytest.raises(
        FileNotFoundError, match=r"annotation_val.odgt:3: image .*3,c.jpg of ID 3,c"
    ):
        load_crowdhuman(odgt, os.path.join(tmp_path, "Images"))


def _outputs(image_id):
    dets = DETS[image_id]
    inst = Instances((100, 100))
    inst.pred_boxes = Boxes(torch.tensor([d[0] for d in dets], dtype=torch.float32).reshape(-1, 4))
    inst.scores = torch.tensor([d[1] for d in dets], dtype=torch.float32)
    inst.pred_classes = torch.zeros(len(dets), dtype=torch.int64)
    return {"instances": inst}


@pytest.fixture
def registered(tmp_path):
    name = f"crowdhuman_test_{os.path.basename(tmp_path)}"
    odgt = _write_dataset(str(tmp_path))
    register_crowdhuman(name, odgt, os.path.join(tmp_path, "Images"))
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def _evaluate(evaluator, dicts):
    evaluator.reset()
    for d in dicts:
        evaluator.process([d], [_outputs(d["ID"])])
    return evaluator.evaluate()


def test_evaluator_numbers_and_dump(registered, tmp_path):
    # AP 5/36, MR exp((8 ln 2/3 + ln 1/3) / 9), JI 1/4: worked out in tests/unit.
    out = str(tmp_path / "inference")
    res = _evaluate(
        CrowdHumanEvaluator(registered, out, distributed=False), DatasetCatalog.get(registered)
    )
    assert list(res) == ["crowdhuman"]
    assert res["crowdhuman"]["AP"] == pytest.approx(100 * 5 / 36, abs=1e-3)
    assert res["crowdhuman"]["MR"] == pytest.approx(
        100 * math.exp((8 * math.log(2 / 3) - math.log(3)) / 9), abs=1e-3
    )
    assert res["crowdhuman"]["JI"] == pytest.approx(25.0, abs=1e-3)
    with open(os.path.join(out, "crowdhuman_detections.odgt")) as f:
        dumped = [json.loads(line) for line in f]
    assert [d["ID"] for d in dumped] == ["1,a", "2,b", "3,c"]
    assert dumped[0]["height"] == 100 and dumped[0]["dtboxes"][1] == {
        "box": [60, 0, 10, 10],
        "score": 0.8,
        "tag": 1,
    }


def test_evaluator_counts_images_without_predictions(registered):
    # Image "2,b" is never processed: it counts with zero detections, as it has none anyway.
    dicts = [d for d in DatasetCatalog.get(registered) if d["ID"] != "2,b"]
    res = _evaluate(CrowdHumanEvaluator(registered, distributed=False), dicts)
    assert res["crowdhuman"]["AP"] == pytest.approx(100 * 5 / 36, abs=1e-3)
    assert res["crowdhuman"]["JI"] == pytest.approx(25.0, abs=1e-3)


def test_evaluator_gathers_across_ranks(registered, monkeypatch):
    # Two ranks each process part of the images; rank 0 evaluates the union, rank 1 returns {}.
    dicts = DatasetCatalog.get(registered)
    other = CrowdHumanEvaluator(registered, distributed=False)
    other.reset()
    other.process([dicts[2]], [_outputs(dicts[2]["ID"])])
    monkeypatch.setattr(comm, "synchronize", lambda: None)
    monkeypatch.setattr(comm, "gather", lambda data, dst=0: [data, other._predictions])
    ev = CrowdHumanEvaluator(registered)
    res = _evaluate(ev, dicts[:2])
    assert res["crowdhuman"]["AP"] == pytest.approx(100 * 5 / 36, abs=1e-3)
    monkeypatch.setattr(comm, "is_main_process", lambda: False)
    assert _evaluate(ev, dicts[:2]) == {}


def test_build_evaluator_picks_crowdhuman_and_warns_on_few_detections(registered, caplog):
    cfg = tiny_cfg("crowdhuman/atss_R50_1x.yaml")
    assert cfg.TEST.DETECTIONS_PER_IMAGE == 500
    assert isinstance(build_evaluator(cfg, "crowdhuman_val", "/tmp/unused"), CrowdHumanEvaluator)
    cfg.TEST.DETECTIONS_PER_IMAGE = 100
    with caplog.at_level(logging.WARNING):
        build_evaluator(cfg, registered)
    assert "TEST.DETECTIONS_PER_IMAGE=100 truncates" in caplog.text
    with pytest.raises(ValueError, match="register it with d2kd.data.register_crowdhuman"):
        CrowdHumanEvaluator("shapes_val")


def test_builtin_registrations():
    meta = MetadataCatalog.get("crowdhuman_val")
    assert meta.evaluator_type == "crowdhuman" and meta.thing_classes == ["person"]
    assert meta.odgt_file.endswith(os.path.join("CrowdHuman", "annotation_val.odgt"))
    assert "crowdhuman_train" in DatasetCatalog.list()
    # Pascal VOC comes from Detectron2's own builtin registration.
    for name in ("voc_2007_trainval", "voc_2012_trainval", "voc_2007_test"):
        assert MetadataCatalog.get(name).evaluator_type == "pascal_voc"


@pytest.mark.skipif(
    not os.path.isfile(MetadataCatalog.get("crowdhuman_val").odgt_file),
    reason="CrowdHuman is not under $DETECTRON2_DATASETS/CrowdHuman",
)
def test_real_val_split_loads_4370_images():
    dicts = DatasetCatalog.get("crowdhuman_val")
    assert len(dicts) == 4370
    assert all(d["height"] > 0 and d["width"] > 0 for d in dicts)


@pytest.mark.parametrize(
    "config", ["crowdhuman/mse_atss_R101_to_R50_1x.yaml", "voc/mse_retinanet_R101_to_R50_1x.yaml"]
)
def test_distillation_configs_name_existing_teacher_configs(config):
    cfg = tiny_cfg(config)
    assert cfg.MODEL.META_ARCHITECTURE == "DistillDetector" and cfg.MODEL.WEIGHTS == ""
    assert os.path.isfile(cfg.MODEL.KD.TEACHER.CONFIG_FILE)
    assert os.path.isfile(config_path(config))


def test_evaluation_without_valid_gt_warns_loudly(tmp_path, caplog):
    """Every gtboxes list empty: the metrics are nan, and both the evaluator and train_net say
    so."""
    from d2kd.evaluation import warn_on_nan_metrics

    name = f"crowdhuman_empty_{os.path.basename(tmp_path)}"
    lines = [json.dumps({"ID": i, "gtboxes": []}) for i, _, _, _ in GT]
    register_crowdhuman(
        name, _write_dataset(str(tmp_path), lines), os.path.join(tmp_path, "Images")
    )
    with caplog.at_level(logging.WARNING):
        res = _evaluate(CrowdHumanEvaluator(name, distributed=False), DatasetCatalog.get(name))
        assert math.isnan(res["crowdhuman"]["AP"])
        assert "has no valid ground-truth box" in caplog.text
        assert warn_on_nan_metrics(res, [name]) == [
            "crowdhuman/AP",
            "crowdhuman/MR",
        ]
    assert f"!! Evaluation of {name} gave NaN" in caplog.text
    assert warn_on_nan_metrics({"bbox": {"AP": 1.0}}) == []
