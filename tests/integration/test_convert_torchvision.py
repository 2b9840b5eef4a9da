"""
torchvision RetinaNet (v1, v2) and FCOS -> d2kd teachers: the converted model computes what
torchvision's computes (head outputs, max relative difference <= 1e-4, and the same detections
after NMS), from torchvision's own installed code with small random weights.
"""

import argparse
import re

import pytest

pytest.importorskip("detectron2", reason="integration test: Detectron2 cannot be imported")

import torch  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.modeling.meta_arch.retinanet import permute_to_N_HWA_K  # noqa: E402
from torchvision.models.detection import FCOS, RetinaNet  # noqa: E402
from torchvision.models.detection.backbone_utils import BackboneWithFPN  # noqa: E402
from torchvision.models.detection.retinanet import RetinaNetHead, _default_anchorgen  # noqa: E402
from torchvision.models.resnet import Bottleneck, ResNet  # noqa: E402
from torchvision.ops.feature_pyramid_network import LastLevelP6P7  # noqa: E402
from torchvision.ops.misc import FrozenBatchNorm2d  # noqa: E402

import d2kd.modeling  # noqa: E402,F401
from d2kd.config import get_d2kd_cfg  # noqa: E402
from d2kd.convert import detect_format, get_converter  # noqa: E402
from d2kd.modeling.teacher import load_teacher_weights  # noqa: E402

NUM_CLASSES = 6
WIDTH = 16  # torchvision's width_per_group (Detectron2's RESNETS.WIDTH_PER_GROUP); R50 depth
FPN_CHANNELS = 64
H, W = 128, 160


def _backbone(extra_in: int):
    body = ResNet(Bottleneck, [3, 4, 6, 3], norm_layer=FrozenBatchNorm2d, width_per_group=WIDTH)
    return BackboneWithFPN(
        body,
        {"layer2": "0", "layer3": "1", "layer4": "2"},
        [512, 1024, 2048],
        FPN_CHANNELS,
        extra_blocks=LastLevelP6P7(extra_in, FPN_CHANNELS),
    )


def _randomise(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for name, t in model.state_dict().items():
        if name.endswith(("running_var", "norm.weight")) or re.search(r"\.(bn\d|1)\.weight$", name):
            t.copy_(torch.rand(t.shape, generator=g) + 0.5)
        elif t.dim() == 4:  # convolutions: variance-preserving
            t.copy_(torch.randn(t.shape, generator=g) * (2.0 / t[0].numel()) ** 0.5)
        elif t.is_floating_point():
            t.copy_(torch.randn(t.shape, generator=g) * 0.2)


def _torchvision_model(kind: str):
    common = dict(min_size=H, max_size=W, topk_candidates=1000, detections_per_img=100)
    if kind == "fcos":
        model = FCOS(
            _backbone(FPN_CHANNELS), NUM_CLASSES, score_thresh=0.2, nms_thresh=0.6, **common
        )
    else:
        v2 = kind == "retinanet_v2"
        norm = (lambda c: torch.nn.GroupNorm(32, c)) if v2 else None
        head = RetinaNetHead(FPN_CHANNELS, 9, NUM_CLASSES, norm_layer=norm)
        model = RetinaNet(
            _backbone(2048 if v2 else FPN_CHANNELS),
            NUM_CLASSES,
            anchor_generator=_default_anchorgen(),
            head=head,
            score_thresh=0.05,
            nms_thresh=0.5,
            **common,
        )
    _randomise(model, seed=len(kind))
    _calibrate_outputs(model.eval(), kind)
    return model


def _calibrate_outputs(model, kind: str) -> None:
    """Scale the random output layers so that box deltas are moderate (std 0.3) and the class
    scores spread around the score threshold: detections are then neither none nor degenerate."""
    with torch.no_grad():
        images, _ = model.transform([_image() / 255.0])
        feats = list(model.backbone(images.tensors).values())
        out = model.head(feats)
        heads = {"cls_logits": (model.head.classification_head.cls_logits, 2.0, -2.5)}
        reg = model.head.regression_head.bbox_reg
        heads["bbox_regression"] = (reg, 0.3, 0.3 if kind == "fcos" else 0.0)
        for name, (conv, std, mean) in heads.items():
            t = out[name]
            conv.weight.mul_(std / t.std())
            conv.bias.mul_(std / t.std()).add_(mean - t.mean() * std / t.std())


CONFIGS = {
    "retinanet_v1": "configs/teachers/torchvision_retinanet_R50_FPN_v1.yaml",
    "retinanet_v2": "configs/teachers/torchvision_retinanet_R50_FPN_v2.yaml",
    "fcos": "configs/teachers/torchvision_fcos_R50_FPN.yaml",
}


def _d2_cfg(kind: str, source_eps: float = -1.0):
    cfg = get_d2kd_cfg()
    cfg.merge_from_file(CONFIGS[kind])
    node = "FCOS" if kind == "fcos" else "RETINANET"
    cfg.merge_from_list(
        [
            "MODEL.DEVICE", "cpu",
            "MODEL.RESNETS.WIDTH_PER_GROUP", WIDTH,
            "MODEL.FPN.OUT_CHANNELS", FPN_CHANNELS,
            f"MODEL.{node}.NUM_CLASSES", NUM_CLASSES,
            "MODEL.CONVERT.SOURCE_CLASSES", [],
            "MODEL.CONVERT.SOURCE_NORM_EPS", source_eps,
            "TEST.DETECTIONS_PER_IMAGE", 100,
        ]
    )  # fmt: skip
    return cfg


def _v1_file_layout(state):
    """The published v1 file's head keys: conv.{2i} (before torchvision's Conv2dNormActivation)."""
    out = {}
    for k, v in state.items():
        m = re.match(r"(head\.\w+_head\.conv\.)(\d+)\.0\.(weight|bias)$", k)
        out[f"{m[1]}{2 * int(m[2])}.{m[3]}" if m else k] = v
    return out


def _image():
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (3, H, W), generator=g).float()  # RGB, 0-255


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp(min=1e-12)).item()


def _head_outputs_torchvision(model, x01, kind):
    images, _ = model.transform([x01])
    feats = list(model.backbone(images.tensors).values())
    out = model.head(feats)
    sizes = [f.shape[-2] * f.shape[-1] for f in feats]
    a = 1 if kind == "fcos" else 9
    split = [s * a for s in sizes]
    names = ["cls_logits", "bbox_regression"] + (["bbox_ctrness"] if kind == "fcos" else [])
    return images, feats, [list(out[n].split(split, dim=1)) for n in names]


def _to_d2_anchor_order(t, hw, a):
    """(N, HWA, C) in torchvision's anchor order (ratio outer) -> Detectron2's (size outer)."""
    if a == 1:
        return t
    n, _, c = t.shape
    t = t.reshape(n, hw, 3, 3, c).transpose(2, 3)
    return t.reshape(n, hw * a, c)


@pytest.mark.parametrize("kind", ["retinanet_v1", "retinanet_v2", "fcos"])
def test_converted_torchvision_model_computes_the_same(kind):
    torch.set_num_threads(1)
    tv = _torchvision_model(kind)
    state = tv.state_dict()
    source_eps = -1.0
    if kind == "retinanet_v1":  # as the published COCO_V1 file: old head keys, FrozenBN eps 0
        state = _v1_file_layout(state)
        for m in tv.modules():
            if isinstance(m, FrozenBatchNorm2d):
                m.eps = 0.0
        source_eps = 0.0
    assert detect_format(state) == "torchvision"
    cfg = _d2_cfg(kind, source_eps)
    result = get_converter("torchvision").convert(state, cfg)
    assert result.unmapped == []
    d2 = build_model(cfg).eval()
    d2.load_state_dict(result.state_dict, strict=True)

    x = _image()
    with torch.no_grad():
        images, tv_feats, tv_heads = _head_outputs_torchvision(tv, x / 255.0, kind)
        d2_images = d2.preprocess_image([{"image": x}])
        assert _rel(d2_images.tensor, images.tensors) < 1e-5
        d2_feats = d2.backbone(d2_images.tensor)
        d2_feats = [d2_feats[f] for f in d2.head_in_features]
        for a, b in zip(d2_feats, tv_feats):
            assert _rel(a, b) <= 1e-4
        d2_heads = d2.head(d2_feats)
        a, worst = (1 if kind == "fcos" else 9), 0.0
        for i, (d2_out, tv_out) in enumerate(zip(d2_heads, tv_heads)):
            for lvl, (d, t) in enumerate(zip(d2_out, tv_out)):
                d = permute_to_N_HWA_K(d, d.shape[1] // a)
                if kind == "fcos" and i == 1:  # torchvision ReLUs the distances in the head,
                    d = d.relu()  # Detectron2 in its box decoding
                t = _to_d2_anchor_order(t, d.shape[1] // a, a)
                assert _rel(d, t) <= 1e-4, (kind, i, lvl, _rel(d, t))
                worst = max(worst, _rel(d, t))

        tv_det = tv([x / 255.0])[0]
        d2_det = d2([{"image": x, "height": H, "width": W}])[0]["instances"]
    assert len(tv_det["boxes"]) > 5, "the random model should detect something"
    # Detectron2's detector_postprocess drops boxes that are empty once clipped to the image
    # (wholly outside it); torchvision keeps them with zero area.
    boxes = tv_det["boxes"]
    kept = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    tv_det = {k: v[kept] for k, v in tv_det.items()}
    assert len(d2_det) == len(tv_det["boxes"])
    assert torch.equal(d2_det.pred_classes, tv_det["labels"])
    assert torch.allclose(d2_det.scores, tv_det["scores"], rtol=1e-4, atol=1e-6)
    assert torch.allclose(d2_det.pred_boxes.tensor, tv_det["boxes"], rtol=1e-4, atol=1e-3)
    box_diff = (d2_det.pred_boxes.tensor - tv_det["boxes"]).abs().max().item()
    print(  # the figures configs/teachers/README.md quotes (pytest -s)
        f"\n{kind}: head outputs max relative difference {worst:.1e}; {len(d2_det)} detections "
        f"({int((~kept).sum())} empty ones torchvision keeps), boxes within {box_diff:.1e} px"
    )


def test_reference_script_checkpoint_loads_as_teacher_weights(tmp_path):
    """{"model": ..., "args": argparse.Namespace} (torchvision's reference training scripts) is
    recognised by its contents and converted on load; the Namespace never runs code."""
    tv = _torchvision_model("fcos")
    path = str(tmp_path / "model_25.pth")
    args = argparse.Namespace(lr=0.01, epochs=26)
    torch.save({"model": tv.state_dict(), "optimizer": {}, "args": args, "epoch": 25}, path)
    cfg = _d2_cfg("fcos")
    d2 = build_model(cfg)
    load_teacher_weights(d2, path, "auto", cfg)
    assert torch.equal(
        d2.head.ctrness.weight, tv.head.regression_head.bbox_ctrness.weight.reshape(1, -1, 3, 3)
    )
    with pytest.raises(ValueError, match='unknown checkpoint format "mmdet2".*torchvision'):
        load_teacher_weights(build_model(cfg), path, "mmdet2", cfg)


def test_checkpoint_of_another_architecture_names_unmapped_and_missing_keys(tmp_path):
    state = _torchvision_model("retinanet_v2").state_dict()
    state["roi_heads.box_predictor.cls_score.weight"] = torch.zeros(3, 4)
    path = str(tmp_path / "v2.pth")
    torch.save(state, path)
    cfg = _d2_cfg("retinanet_v1")  # v1: no GroupNorm in the head, P6 from P5
    with pytest.raises(ValueError) as e:
        load_teacher_weights(build_model(cfg), path, "torchvision", cfg)
    msg = str(e.value)
    assert "converted from torchvision" in msg
    assert "does not map ['roi_heads.box_predictor.cls_score.weight']" in msg
    assert "missing keys" in msg and "head.cls_subnet.2.weight" in msg
    assert "unexpected keys" in msg and "head.cls_subnet.1.weight" in msg
    assert (
        "backbone.top_block.p6.weight: checkpoint (64, 2048, 3, 3) vs model (64, 64, 3, 3)" in msg
    )


def test_convert_checkpoint_tool_writes_a_teacher_checkpoint(tmp_path):
    from tools.convert_checkpoint import main

    tv = _torchvision_model("retinanet_v2")
    src, dst = str(tmp_path / "tv.pth"), str(tmp_path / "teacher.pth")
    torch.save(tv.state_dict(), src)
    config = CONFIGS["retinanet_v2"]
    opts = ["MODEL.RESNETS.WIDTH_PER_GROUP", str(WIDTH), "MODEL.FPN.OUT_CHANNELS", "64"]
    opts += ["MODEL.RETINANET.NUM_CLASSES", "3", "MODEL.CONVERT.SOURCE_CLASSES", "[5, 1, 2]"]
    with pytest.raises(ValueError, match="unknown checkpoint format 'mmdet9'.*torchvision"):
        main(["--from", "mmdet9", src, dst, "--config", config, "--opts", *opts])
    main(["--from", "auto", src, dst, "--config", config, "--opts", *opts])
    cfg = _d2_cfg("retinanet_v2")
    cfg.merge_from_list(opts)
    d2 = build_model(cfg)
    load_teacher_weights(d2, dst, "auto", cfg)  # Detectron2's layout now: no conversion
    # the kept classes, in the config's order, for every anchor
    tv_w = tv.head.classification_head.cls_logits.weight.reshape(3, 3, NUM_CLASSES, -1)
    d2_w = d2.head.cls_score.weight.reshape(3, 3, 3, -1)  # size, ratio, class (d2 order)
    assert torch.equal(d2_w, tv_w.transpose(0, 1)[:, :, [5, 1, 2]])
    saved = torch.load(dst, weights_only=True)
    assert saved["d2kd_conversion"]["format"] == "torchvision"


def test_unknown_weights_format_is_refused_at_build():
    from tests.integration.common import tiny_cfg

    cfg = tiny_cfg("shapes/kd/mse_retinanet_R18long_to_R18.yaml")
    cfg.MODEL.KD.TEACHER.WEIGHTS_FORMAT = "mmdet_v9"
    with pytest.raises(
        ValueError, match="WEIGHTS_FORMAT: unknown .*auto, detectron2, .*torchvision"
    ):
        build_model(cfg)
