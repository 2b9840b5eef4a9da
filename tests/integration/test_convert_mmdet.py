"""
Parity of mmdetection checkpoints converted by ``d2kd.convert.mmdet`` (no mmdet needed).

The fixture (``tests/fixtures/convert/mmdet/mmdet_fixtures.pth``, written by
``tools/conversion_fixtures/make_mmdet_fixtures.py`` with mmdet 2.28.2) holds, per family, a
random reduced-width mmdet checkpoint built from mmdet's own config, mmdet's head outputs on one
128 x 256 image and mmdet's post-processed detections. Each test builds the d2kd teacher config
of the family (``configs/teachers/mmdet_*.yaml``) at the same reduced width, converts the
checkpoint, loads it strictly and compares.
"""

import copy
import os

import pytest
import torch
from detectron2.modeling import build_model

from d2kd.config import get_d2kd_cfg
from d2kd.convert import CONVERTERS, detect_format
from d2kd.convert.mmdet import mmdet_version
from d2kd.utils.safe_load import safe_torch_load

from .common import REPO, config_path

FIXTURE = os.path.join(REPO, "tests", "fixtures", "convert", "mmdet", "mmdet_fixtures.pth")
MAX_REL = 1e-4

# family -> (teacher config, config node, FPN channels of the fixture)
FAMILIES = {
    "retinanet": ("teachers/mmdet_retinanet_R101_FPN.yaml", "RETINANET", 16),
    "gfl": ("teachers/mmdet_gfl_R101_FPN.yaml", "GFL", 32),
    "atss": ("teachers/mmdet_atss_R101_FPN.yaml", "ATSS", 32),
    "fcos": ("teachers/mmdet_fcos_R101_caffe_FPN.yaml", "FCOS", 32),
}


@pytest.fixture(scope="module")
def fixtures():
    return safe_torch_load(FIXTURE, "test fixture")


def small_cfg(family: str):
    """The family's teacher config at the fixture's width: ResNet-50 with base width 2 (mmdet
    ``base_channels=2``), one tower conv, 2 classes."""
    config, node, channels = FAMILIES[family]
    cfg = get_d2kd_cfg()
    cfg.merge_from_file(config_path(config))
    cfg.merge_from_list(
        [
            "MODEL.DEVICE", "cpu",
            "MODEL.RESNETS.DEPTH", 50,
            "MODEL.RESNETS.STEM_OUT_CHANNELS", 2,
            "MODEL.RESNETS.RES2_OUT_CHANNELS", 8,
            "MODEL.RESNETS.WIDTH_PER_GROUP", 2,
            "MODEL.FPN.OUT_CHANNELS", channels,
            f"MODEL.{node}.NUM_CONVS", 1,
            f"MODEL.{node}.NUM_CLASSES", 2,
        ]
    )  # fmt: skip
    return cfg


def converted_model(family: str, checkpoint: dict):
    cfg = small_cfg(family)
    model = build_model(cfg).eval()
    result = CONVERTERS["mmdet"].convert(checkpoint, cfg)
    model.load_state_dict(result.state_dict, strict=True)
    return model, cfg


def run_head(model, image: torch.Tensor, input_format: str = "RGB"):
    """d2kd's head outputs (lists of L maps) and its detections before ``detector_postprocess``
    (which would also drop boxes clipped to zero width: mmdet keeps them)."""
    h, w = image.shape[-2:]
    if input_format == "BGR":  # the fixture's image is RGB
        image = image.flip(0)
    with torch.no_grad():
        images = model.preprocess_image([{"image": image.float(), "height": h, "width": w}])
        assert tuple(images.tensor.shape[-2:]) == (h, w)  # no padding: sides are multiples of 128
        features = model.backbone(images.tensor)
        features = [features[f] for f in model.head_in_features]
        predictions = model.head(features)
        detections = model.forward_inference(images, features, predictions)[0]
    return predictions, detections


def max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| (an element-wise ratio is meaningless near zero)."""
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-12))


def retinanet_anchor_order(t: torch.Tensor, per_anchor: int, cfg) -> torch.Tensor:
    """mmdet's ratio-major anchor channels (N, A x C, H, W) in Detectron2's size-major order."""
    num_s = len(cfg.MODEL.ANCHOR_GENERATOR.SIZES[0])
    num_r = len(cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS[0])
    perm = [r * num_s + s for s in range(num_s) for r in range(num_r)]
    n, _, h, w = t.shape
    return t.view(n, num_s * num_r, per_anchor, h, w)[:, perm].reshape(t.shape)


def assert_same_detections(det, ref: dict):
    assert len(det) == len(ref["scores"]) > 10
    assert torch.equal(det.pred_classes, ref["labels"])
    assert max_rel(det.scores, ref["scores"]) <= MAX_REL
    assert max_rel(det.pred_boxes.tensor, ref["boxes"]) <= MAX_REL


@pytest.mark.parametrize("family", ["retinanet", "gfl", "atss", "fcos"])
def test_head_outputs_and_detections_match_mmdet(fixtures, family):
    fix = fixtures["families"][family]
    assert detect_format(fix["checkpoint"]) == "mmdet"
    assert mmdet_version(fix["checkpoint"]) == "2.x"
    model, cfg = converted_model(family, fix["checkpoint"])
    predictions, detections = run_head(model, fixtures["image"], cfg.INPUT.FORMAT)
    refs = list(fix["outputs"].values())
    assert len(predictions) == len(refs)
    for output, ref, name in zip(predictions, refs, fix["outputs"]):
        assert len(output) == len(ref) == 5
        for level, (ours, theirs) in enumerate(zip(output, ref)):
            if family == "retinanet":
                theirs = retinanet_anchor_order(theirs, 2 if name == "cls_scores" else 4, cfg)
            if family == "fcos" and name == "bbox_preds":
                ours = ours.exp()  # mmdet's FCOSHead returns the distances exp(x)
            assert max_rel(ours, theirs) <= MAX_REL, (name, level, max_rel(ours, theirs))
    assert_same_detections(detections, fix["detections"])


def test_only_mmdet_files_are_recognised(fixtures):
    state = fixtures["families"]["gfl"]["checkpoint"]["state_dict"]
    assert detect_format({"model": dict(state)}) == ""  # Detectron2's layout
    assert detect_format(dict(state)) == ""  # a bare state dict (torchvision's layout)
    backbone_only = {k: v for k, v in state.items() if k.startswith("backbone.")}
    assert detect_format({"meta": {}, "state_dict": backbone_only}) == ""


def test_mmdet3_layout_converts_alike(fixtures):
    """A 3.x checkpoint: the 2.x fixture re-labelled (3.x meta, ``data_preprocessor`` buffers),
    the weights' keys being the same in both versions for these models."""
    fix = fixtures["families"]["gfl"]
    v2 = fix["checkpoint"]
    v3 = {
        "meta": {"mmengine_version": "0.10.4", "dataset_meta": {"classes": ("a", "b")}},
        "state_dict": {
            **{"module." + k: v for k, v in v2["state_dict"].items()},
            "module.data_preprocessor.mean": torch.tensor([123.675, 116.28, 103.53]),
        },
    }
    assert detect_format(v3) == "mmdet" and mmdet_version(v3) == "3.x"
    cfg = small_cfg("gfl")
    a = CONVERTERS["mmdet"].convert(v2, cfg).state_dict
    b = CONVERTERS["mmdet"].convert(v3, cfg).state_dict
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_other_architecture_names_unmapped_and_missing_keys(fixtures):
    gfl = fixtures["families"]["gfl"]["checkpoint"]
    with pytest.raises(ValueError) as err:
        CONVERTERS["mmdet"].convert(gfl, small_cfg("atss"))
    msg = str(err.value)
    assert "unmapped mmdet keys: bbox_head.gfl_cls.weight" in msg
    assert "bbox_head.gfl_reg.weight" in msg
    assert "d2kd keys nothing fills" in msg and "head.centerness.weight" in msg

    cfg = small_cfg("gfl")
    cfg.MODEL.RESNETS.DEPTH = 101
    with pytest.raises(ValueError, match=r"nothing fills: backbone\.bottom_up\.res4\.10\.conv1"):
        CONVERTERS["mmdet"].convert(gfl, cfg)


def test_wrong_class_count_and_bins_are_named(fixtures):
    gfl = fixtures["families"]["gfl"]["checkpoint"]
    cfg = small_cfg("gfl")
    cfg.MODEL.GFL.NUM_CLASSES = 80
    with pytest.raises(ValueError, match="MODEL.GFL.NUM_CLASSES is 80"):
        CONVERTERS["mmdet"].convert(gfl, cfg)
    cfg = small_cfg("gfl")
    cfg.MODEL.GFL.REG_MAX = 7
    with pytest.raises(ValueError, match="MODEL.GFL.REG_MAX 7"):
        CONVERTERS["mmdet"].convert(gfl, cfg)


def test_retinanet_detectron2_layout_differs_without_the_options(fixtures):
    """The teacher config's options matter: Detectron2's own P7 (ReLU before it) changes P7's
    outputs, so the parity above is not vacuous."""
    fix = fixtures["families"]["retinanet"]
    cfg = small_cfg("retinanet")
    cfg.MODEL.FPN.P6P7_RELU_BEFORE_P7 = True
    model = build_model(cfg).eval()
    model.load_state_dict(CONVERTERS["mmdet"].convert(copy.copy(fix["checkpoint"]), cfg).state_dict)
    predictions, _ = run_head(model, fixtures["image"])
    theirs = retinanet_anchor_order(fix["outputs"]["cls_scores"][4], 2, cfg)
    assert max_rel(predictions[0][4], theirs) > 1e-3


def test_fcos_with_mmdet_options_trains(fixtures):
    """The mmdet FCOS options (exp distances, centerness on the class tower, scales) also give
    finite training losses (centerness targets from distances)."""
    from detectron2.structures import Boxes, Instances
    from detectron2.utils.events import EventStorage

    cfg = small_cfg("fcos")
    model = build_model(cfg).train()
    inst = Instances((128, 256))
    inst.gt_boxes = Boxes(torch.tensor([[10.0, 20.0, 90.0, 100.0], [120.0, 8.0, 250.0, 60.0]]))
    inst.gt_classes = torch.tensor([0, 1])
    with EventStorage(0):
        losses = model([{"image": fixtures["image"].flip(0), "instances": inst}])
    assert set(losses) == {"loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr"}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values()), losses
