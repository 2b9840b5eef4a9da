"""The torchvision converter's key mapping and value rewrites (pure PyTorch, no Detectron2)."""

from types import SimpleNamespace

import torch

from d2kd.convert import detect_format, get_converter, inert_classes_of


def _cfg(eps=-1.0, classes=()):
    model = SimpleNamespace(
        FPN=SimpleNamespace(IN_FEATURES=["res3", "res4", "res5"]),
        ANCHOR_GENERATOR=SimpleNamespace(SIZES=[[32, 40, 50]], ASPECT_RATIOS=[[0.5, 1.0, 2.0]]),
        CONVERT=SimpleNamespace(SOURCE_NORM_EPS=eps, SOURCE_CLASSES=list(classes)),
    )
    return SimpleNamespace(MODEL=model)


def _state(num_classes=4):
    a = 9
    return {
        "backbone.body.conv1.weight": torch.zeros(8, 3, 7, 7),
        "backbone.body.bn1.running_var": torch.ones(8),
        "backbone.body.layer1.0.bn2.running_var": torch.ones(8),
        "backbone.body.layer1.0.bn2.num_batches_tracked": torch.tensor(3),
        "backbone.body.layer3.1.downsample.1.weight": torch.ones(8),
        "backbone.fpn.inner_blocks.2.0.weight": torch.zeros(4, 8, 1, 1),
        "backbone.fpn.layer_blocks.0.bias": torch.zeros(4),
        "backbone.fpn.extra_blocks.p7.weight": torch.zeros(4, 4, 3, 3),
        "head.classification_head.conv.1.0.weight": torch.zeros(4, 4, 3, 3),
        "head.classification_head.conv.1.1.weight": torch.ones(4),
        "head.classification_head.cls_logits.weight": torch.arange(a * num_classes * 1.0),
        "head.regression_head.bbox_reg.bias": torch.arange(a * 4 * 1.0),
        "roi_heads.mask_predictor.weight": torch.zeros(1),
    }


def test_names_map_and_unknown_keys_are_reported():
    state = _state()
    assert detect_format(state) == "torchvision"
    assert detect_format({"model": state, "args": None}) == "torchvision"  # reference scripts
    assert "argparse.Namespace" in inert_classes_of("torchvision")
    out = get_converter("torchvision").convert(state, _cfg())
    assert out.unmapped == ["roi_heads.mask_predictor.weight"]
    assert set(out.state_dict) == {
        "backbone.bottom_up.stem.conv1.weight",
        "backbone.bottom_up.stem.conv1.norm.running_var",
        "backbone.bottom_up.res2.0.conv2.norm.running_var",
        "backbone.bottom_up.res4.1.shortcut.norm.weight",
        "backbone.fpn_lateral5.weight",
        "backbone.fpn_output3.bias",
        "backbone.top_block.p7.weight",
        "head.cls_subnet.3.weight",  # nested conv.1.0 with a norm: 1 * 3 + 0
        "head.cls_subnet.3.bias",  # zero bias added (torchvision's conv before GN has none)
        "head.cls_subnet.4.weight",
        "head.cls_score.weight",
        "head.bbox_pred.bias",
    }
    assert not out.state_dict["head.cls_subnet.3.bias"].any()


def test_anchor_order_classes_and_norm_eps():
    out = get_converter("torchvision").convert(_state(), _cfg(eps=0.0, classes=[3, 1])).state_dict
    # torchvision's anchor a = ratio * 3 + size; Detectron2's a = size * 3 + ratio
    tv = torch.arange(36.0).reshape(3, 3, 4)  # ratio, size, class
    assert torch.equal(out["head.cls_score.weight"], tv.transpose(0, 1)[:, :, [3, 1]].reshape(-1))
    tvb = torch.arange(36.0).reshape(3, 3, 4)  # ratio, size, coordinate
    assert torch.equal(out["head.bbox_pred.bias"], tvb.transpose(0, 1).reshape(-1))
    # FrozenBN eps 0 in the source: running_var shifted so that var + 1e-5 equals it
    assert torch.allclose(
        out["backbone.bottom_up.stem.conv1.norm.running_var"], torch.ones(8) - 1e-5
    )
