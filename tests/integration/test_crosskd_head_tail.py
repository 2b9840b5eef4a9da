"""The framework entries CrossKD needs: head_from_block on the four dense heads, hold indices,
BN refusal, run_frozen (teacher layers on student tensors with autograd, no teacher gradients)."""

import pytest

pytest.importorskip("detectron2", reason="integration test: Detectron2 cannot be imported")

import torch  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from torch import nn  # noqa: E402

from d2kd.modeling.frozen import check_frozen, run_frozen  # noqa: E402
from d2kd.modeling.head_tail import (  # noqa: E402
    check_tail_head,
    head_from_block,
    hold_channels,
    hold_index,
    level_outputs,
    num_blocks,
)
from d2kd.modeling.recorder import TapRecorder  # noqa: E402
from d2kd.modeling.teacher import freeze  # noqa: E402

from tests.integration.common import tiny_cfg  # noqa: E402

SMALL = [
    "MODEL.RESNETS.DEPTH",
    18,
    "MODEL.RESNETS.RES2_OUT_CHANNELS",
    64,
    "MODEL.FPN.OUT_CHANNELS",
    32,
]
HEADS = {
    "RetinaNet": ("shapes/retinanet_R18.yaml", "RETINANET"),
    "FCOS": ("shapes/fcos_R18.yaml", "FCOS"),
    "ATSS": ("shapes/atss_R18.yaml", "ATSS"),
    "GFL": ("shapes/gfl_R18.yaml", "GFL"),
}


def _detector(arch, opts=()):
    path, node = HEADS[arch]
    cfg = tiny_cfg(path, SMALL + [f"MODEL.{node}.NUM_CONVS", 3, *opts])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    for m in model.head.modules():  # non-trivial scales and biases, so a wrong path shows
        if hasattr(m, "scale"):
            nn.init.constant_(m.scale, 1.7)
    return model


def _features(model, n=2, size=64):
    torch.manual_seed(1)
    feats = model.backbone(torch.randn(n, 3, size, size))
    return [feats[f] for f in model.head_in_features]


@pytest.mark.parametrize("arch", list(HEADS))
@pytest.mark.parametrize("k", [0, 1, 3])
def test_head_from_block_reproduces_the_head_on_its_own_activations(arch, k):
    model = _detector(arch)
    head = model.head
    feats = _features(model)
    idx = hold_index(head, k)
    taps = ["head.cls_subnet.%d" % idx, "head.bbox_subnet.%d" % idx] if k else []
    rec = TapRecorder(model, taps)
    with torch.no_grad(), rec:
        expected = head(feats)
    outs = []
    for level, feature in enumerate(feats):
        if k == 0:
            cls_in = box_in = feature
        else:
            cls_in, box_in = rec.get_all(taps[0])[level], rec.get_all(taps[1])[level]
        with torch.no_grad():
            outs.append(head_from_block(head, k, level, cls_in, box_in))
    got = level_outputs(outs)
    assert len(got) == len(expected)
    for out_got, out_exp in zip(got, expected):
        for a, b in zip(out_got, out_exp):
            assert torch.equal(a, b)


def test_hold_indices_for_gn_and_norm_free_towers():
    gn = _detector("GFL").head
    assert num_blocks(gn) == 3
    assert [hold_index(gn, k) for k in (0, 1, 2, 3)] == [None, 1, 4, 7]
    assert [hold_index(gn, k, post_activation=True) for k in (1, 3)] == [2, 8]
    assert isinstance(gn.cls_subnet[7], nn.GroupNorm) and isinstance(gn.cls_subnet[8], nn.ReLU)
    plain = _detector("RetinaNet", ["MODEL.RETINANET.NORM", ""]).head
    assert [hold_index(plain, k) for k in (1, 2, 3)] == [0, 2, 4]
    assert hold_index(plain, 3, post_activation=True) == 5
    assert isinstance(plain.cls_subnet[4], nn.Conv2d) and isinstance(plain.cls_subnet[5], nn.ReLU)
    assert hold_channels(plain, 0) == 32 and hold_channels(plain, 2) == 32
    with pytest.raises(ValueError, match="3 blocks"):
        hold_index(plain, 4)


def test_norm_free_head_from_block_reproduces_the_head():
    model = _detector("RetinaNet", ["MODEL.RETINANET.NORM", ""])
    feats = _features(model)
    rec = TapRecorder(model, ["head.cls_subnet.2", "head.bbox_subnet.2"])
    with torch.no_grad(), rec:
        expected = model.head(feats)
        got = head_from_block(
            model.head,
            2,
            1,
            rec.get_all("head.cls_subnet.2")[1],
            rec.get_all("head.bbox_subnet.2")[1],
        )
    assert torch.equal(got[0], expected[0][1]) and torch.equal(got[1], expected[1][1])


def test_batchnorm_heads_are_refused_with_the_key_to_change():
    head = _detector("RetinaNet", ["MODEL.RETINANET.NORM", "BN"]).head
    with pytest.raises(ValueError, match="BatchNorm.*NORM"):
        check_tail_head(head, "teacher", "MODEL.KD.CROSSKD")
    with pytest.raises(ValueError, match="BatchNorm"):
        head_from_block(head, 1, 0, torch.zeros(1, 32, 4, 4), torch.zeros(1, 32, 4, 4))


def test_other_heads_are_refused():
    with pytest.raises(TypeError, match="not one of"):
        check_tail_head(nn.Conv2d(1, 1, 1))


def test_run_frozen_passes_gradients_to_the_input_only():
    model = freeze(_detector("ATSS"))
    feats = [f.detach() for f in _features(model)]
    x = feats[0].clone().requires_grad_(True)
    with torch.no_grad():  # even inside no_grad, run_frozen builds the graph to its inputs
        out = run_frozen(model, lambda c, r: head_from_block(model.head, 0, 0, c, r), x, x)
    assert all(o.requires_grad and o.dtype == torch.float32 for o in out)
    sum(o.sum() for o in out).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())


def test_run_frozen_refuses_a_module_with_trainable_parameters():
    model = _detector("GFL")
    with pytest.raises(RuntimeError, match="frozen"):
        check_frozen(model)
    with pytest.raises(RuntimeError, match="require gradients"):
        run_frozen(model, lambda x: x, torch.zeros(1))


def test_run_frozen_casts_to_the_module_dtype_and_back():
    conv = freeze(nn.Conv2d(2, 2, 1)).to(torch.float64)
    x = torch.randn(1, 2, 3, 3, requires_grad=True)
    seen = []
    out = run_frozen(conv, lambda t: seen.append(t.dtype) or conv(t), x)
    assert seen == [torch.float64] and out.dtype == torch.float32
    out.sum().backward()
    assert x.grad is not None and conv.weight.grad is None
