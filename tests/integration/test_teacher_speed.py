"""The cheaper teacher pass: precision, norm folding, channels-last
(d2kd/modeling/teacher_speed.py)."""

import copy
import hashlib

import pytest

pytest.importorskip("detectron2", reason="integration test: Detectron2 cannot be imported")

import torch  # noqa: E402
from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.layers import Conv2d, FrozenBatchNorm2d  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402
from torch import nn  # noqa: E402

from d2kd.modeling.teacher import run_teacher  # noqa: E402
from d2kd.modeling.teacher_speed import (  # noqa: E402
    calibrate_batch_norms,
    check_precision,
    fold_norms,
    tapped_modules,
    teacher_autocast,
    to_fp32,
)

from tests.integration.common import INPUT, SMALL, make_batch, tiny_cfg, tiny_shapes  # noqa: E402
from tests.integration.test_deformable_detr import TINY as DETR_TINY  # noqa: E402

PGD = "shapes/kd/pgd_retinanet_R50_to_R18.yaml"
MSE = "shapes/kd/mse_retinanet_R50_to_R18.yaml"
DETR = "shapes/kd/detrdistill_deformable_detr_R50_to_R18.yaml"
DETR_TEACHER = ["MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.RES2_OUT_CHANNELS", 64, *DETR_TINY]
# bf16 keeps 8 bits of mantissa (relative rounding 2^-9 = 0.2 % per operation), and errors grow
# with depth. Measured on these tiny random teachers (batch-norm statistics calibrated on the
# batch, see _calibrate), relative change (Frobenius norm) against fp32: classification logits
# <= 0.4 %; FPN features, tower taps, box regressions and DETR outputs 0.2-12 % on maps of >= 2x2
# positions; up to 150 % on 1x1 maps, where GroupNorm normalises groups of two values (any rounding
# can flip them), so those are not bounded here; continuous KD losses (MSE, DETRDistill) <= 2 %
# (PGD's top-k selection by teacher quality is discontinuous: 5-37 % seen). Bounds leave margin.
BF16_LOGITS_TOL = 0.01
BF16_TARGET_TOL = 0.25  # targets with at least 4 positions per channel
BF16_LOSS_TOL = 0.2


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_shapes(str(tmp_path_factory.mktemp("shapes")), n=2)


def _cfg(config, opts=()):
    if config == DETR:
        teacher = ["MODEL.DEVICE", "cpu", *DETR_TEACHER]
        return tiny_cfg(config, [*DETR_TINY, "MODEL.KD.TEACHER.OPTS", teacher, *opts])
    teacher = ["MODEL.DEVICE", "cpu", *SMALL]
    return tiny_cfg(config, [*SMALL, *INPUT, "MODEL.KD.TEACHER.OPTS", teacher, *opts])


def _model(config, opts=()):
    cfg = _cfg(config, opts)
    torch.manual_seed(0)  # the same teacher and student weights for every setting
    model = build_model(cfg)
    model.train()
    return cfg, model


def _flat(obj, prefix=""):
    if isinstance(obj, torch.Tensor):
        return {prefix: obj} if obj.is_floating_point() else {}
    if isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, (list, tuple)):
        items = enumerate(obj)
    elif hasattr(obj, "__dataclass_fields__"):
        items = ((k, getattr(obj, k)) for k in obj.__dataclass_fields__)
    elif isinstance(getattr(obj, "tensor", None), torch.Tensor):
        items = [("tensor", obj.tensor)]
    else:
        return {}
    out = {}
    for k, v in items:
        out.update(_flat(v, f"{prefix}/{k}"))
    return out


def _calibrate(model, batch):
    """Batch-norm statistics of the batch in the random teacher, as a trained one has."""
    assert (
        calibrate_batch_norms(
            model.teacher, lambda: run_teacher(model.teacher, model.teacher_run, batch)
        )
        >= 20
    )


def _targets_and_losses(config, batch, opts=()):
    """The teacher's targets (taps and output, flattened) and the KD losses of one step."""
    _, model = _model(config, opts)
    _calibrate(model, batch)
    _, out, taps = model._run_teacher(batch)
    targets = _flat({"taps": taps, "out": out})
    with EventStorage(0):
        losses = model(batch)
    kd = {k: v.detach() for k, v in losses.items() if k.startswith("loss_kd_")}
    return model, targets, kd


def _rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-12))


@pytest.mark.parametrize("config", [MSE, PGD, DETR])
def test_bf16_teacher_targets_and_losses_are_fp32_and_close_to_fp32(config, data):
    nofold = ["MODEL.KD.TEACHER.FOLD_NORMS", False]
    batch = make_batch(_cfg(config), data)  # once: the mapper's random flip draws from NumPy
    _, ref_t, ref_l = _targets_and_losses(
        config, batch, ["MODEL.KD.TEACHER.PRECISION", "fp32", *nofold]
    )
    _, t, losses = _targets_and_losses(
        config, batch, ["MODEL.KD.TEACHER.PRECISION", "bf16", *nofold]
    )
    assert set(t) == set(ref_t) and len(t) > 5
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in t.values())
    changes = {k: _rel(t[k], ref_t[k]) for k in ref_t}
    assert max(changes.values()) > 0  # bf16 did run: the targets are not the fp32 ones
    big = {k: c for k, c in changes.items() if ref_t[k].dim() < 4 or ref_t[k][0, 0].numel() >= 4}
    assert len(big) > 5 and max(big.values()) < BF16_TARGET_TOL, big
    logits = [k for k in ref_t if k.startswith(("/out/1/0/", "/out/pred_logits"))]
    assert logits and all(changes[k] < BF16_LOGITS_TOL for k in logits), changes
    assert set(losses) == set(ref_l) and len(losses) >= 3
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    if config == PGD:
        return  # PGD selects positions by the teacher's top-k quality: rounding can swap them
    for k in ref_l:
        assert _rel(losses[k], ref_l[k]) < BF16_LOSS_TOL, (k, losses[k], ref_l[k])


def test_fp32_teacher_ignores_an_outer_autocast(data):
    """SOLVER.AMP.ENABLED puts the whole step under autocast; an fp32 teacher is unaffected."""
    opts = ["MODEL.KD.TEACHER.PRECISION", "fp32"]
    cfg, model = _model(PGD, opts)
    batch = make_batch(cfg, data)
    _, out, taps = model._run_teacher(batch)
    ref = _flat({"taps": taps, "out": out})
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, out, taps = model._run_teacher(batch)
    got = _flat({"taps": taps, "out": out})
    assert all(torch.equal(got[k], ref[k]) for k in ref)


def test_fp16_refused_off_cuda_and_unknown_precision_refused():
    with pytest.raises(ValueError, match='MODEL.KD.TEACHER.PRECISION "fp16" needs a CUDA device'):
        build_model(_cfg(PGD, ["MODEL.KD.TEACHER.PRECISION", "fp16"]))
    with pytest.raises(ValueError, match='MODEL.KD.TEACHER.PRECISION = "half" is not one of'):
        check_precision("half", torch.device("cpu"))
    assert check_precision("bf16", torch.device("cpu")) == torch.bfloat16


def test_to_fp32_casts_nested_reduced_precision_tensors_only():
    from detectron2.structures import Boxes

    from d2kd.layers.detr.outputs import EncoderState

    x = torch.randn(2, 3)
    idx = torch.arange(3)
    h = x.to(torch.bfloat16)
    state = EncoderState(h, h, idx > 0, idx, idx, h, h)
    boxes = Boxes(h[:, :2].repeat(1, 2))
    out = to_fp32({"a": [h, (h, idx)], "b": boxes, "s": state, "f": x})
    assert out["a"][0].dtype == torch.float32 and out["a"][1][1] is idx
    assert out["b"].tensor.dtype == torch.float32 and isinstance(out["b"], Boxes)
    assert out["s"].memory.dtype == torch.float32 and out["s"].mask.dtype == torch.bool
    assert out["f"] is x  # fp32 tensors are not copied
    with teacher_autocast("fp32", "cpu"):
        assert not torch.is_autocast_enabled("cpu")


def _random_stats(model):
    """Non-trivial running statistics and affine parameters in every batch norm."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, (FrozenBatchNorm2d, nn.BatchNorm2d)):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.2)


def _teacher_opts(norm):
    return ["MODEL.KD.TEACHER.OPTS", ["MODEL.DEVICE", "cpu", *SMALL, "MODEL.RESNETS.NORM", norm]]


def _is_bn(m):
    return isinstance(m, (FrozenBatchNorm2d, nn.BatchNorm2d))


@pytest.mark.parametrize("norm", ["BN", "FrozenBN"])
def test_folding_keeps_the_teachers_outputs_within_fp32_rounding(norm, data):
    torch.manual_seed(0)
    plain = build_model(_cfg(PGD, [*_teacher_opts(norm), "MODEL.KD.TEACHER.FOLD_NORMS", False]))
    cfg = _cfg(PGD, [*_teacher_opts(norm), "MODEL.KD.TEACHER.FOLD_NORMS", True])
    folded = build_model(cfg)
    _random_stats(plain.teacher)
    folded.teacher.load_state_dict(plain.teacher.state_dict())  # before the first run: folded then
    teacher = folded.teacher
    n_norms = sum(_is_bn(m) for m in teacher.modules())
    gn = {n for n, m in teacher.named_modules() if isinstance(m, nn.GroupNorm)}
    assert n_norms == 20 and gn  # R18: stem + 16 block convs + 3 shortcuts; GN in FPN and head

    batch = make_batch(cfg, data)
    _, ref_out, ref_taps = plain._run_teacher(batch)
    _, out, taps = folded._run_teacher(batch)
    assert not any(_is_bn(m) for m in teacher.modules())  # all 20 folded, on the first run
    assert gn == {n for n, m in teacher.named_modules() if isinstance(m, nn.GroupNorm)}
    conv = teacher.get_submodule("backbone.bottom_up.stem.conv1")
    assert isinstance(conv.norm, nn.Identity) and conv.bias is not None
    ref, got = _flat({"taps": ref_taps, "out": ref_out}), _flat({"taps": taps, "out": out})
    assert set(ref) == set(got) and len(ref) > 10
    assert any(not torch.equal(got[k], ref[k]) for k in ref)  # folded: not bit-identical
    # "Equal up to fp32 rounding": against the unfolded teacher in float64, the folded teacher's
    # error is of the order of the unfolded fp32 teacher's own.
    exact = copy.deepcopy(plain.teacher).double()
    ref64 = _flat({"out": run_teacher(exact, "dense", batch)[1]})

    def err(x):
        return max(float((x[k].double() - v).abs().max() / v.abs().max()) for k, v in ref64.items())

    assert 0 < err(got) < 10 * err(ref) and err(got) < 1e-3, (err(got), err(ref))


def test_folding_spares_tapped_norms_and_handles_sequential_blocks():
    assert tapped_modules(["backbone", "a.b:input", "head.norm", "label_anchors()", "x.y.f()"]) == {
        "backbone", "a.b", "head.norm", "", "x.y"
    }  # fmt: skip
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        Conv2d(8, 8, 3, padding=1, norm=FrozenBatchNorm2d(8), activation=nn.ReLU()),
        Conv2d(8, 8, 1, activation=nn.ReLU()),
        nn.BatchNorm2d(8),  # after an activation: cannot be folded
        Conv2d(8, 8, 1, norm=nn.GroupNorm(2, 8)),
        Conv2d(8, 4, 1, norm=nn.BatchNorm2d(4)),
    ).eval()
    _random_stats(model)
    x = torch.randn(2, 3, 16, 16)
    ref = model(x)
    assert fold_norms(model, keep={"7.norm"}) == ["1", "3.norm"]
    assert isinstance(model[1], nn.Identity) and isinstance(model[3].norm, nn.Identity)
    assert isinstance(model[5], nn.BatchNorm2d) and isinstance(model[6].norm, nn.GroupNorm)
    assert isinstance(model[7].norm, nn.BatchNorm2d)  # kept: a tap names it
    got = model(x)
    assert (got - ref).abs().max() / ref.abs().max() < 1e-5


def test_the_teacher_checkpoint_file_is_never_modified(tmp_path, data):
    torch.manual_seed(0)
    source = build_model(_cfg(PGD))
    _random_stats(source.teacher)
    DetectionCheckpointer(source.teacher, save_dir=str(tmp_path)).save("teacher")
    path = tmp_path / "teacher.pth"
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    cfg = _cfg(PGD, ["MODEL.KD.TEACHER.WEIGHTS", str(path), "MODEL.KD.TEACHER.PRECISION", "bf16"])
    model = build_model(cfg)
    model.train()
    with EventStorage(0):
        losses = model(make_batch(cfg, data))
    assert all(torch.isfinite(v) for v in losses.values())
    assert not any(_is_bn(m) for m in model.teacher.modules())  # folded in memory
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    saved = torch.load(str(path), weights_only=False)["model"]
    assert "backbone.bottom_up.stem.conv1.norm.running_var" in saved


def test_channels_last_teacher_gives_the_same_targets(data):
    opts = ["MODEL.KD.TEACHER.FOLD_NORMS", False]
    cfg, plain = _model(PGD, opts)
    _, cl = _model(PGD, [*opts, "MODEL.KD.TEACHER.CHANNELS_LAST", True])
    batch = make_batch(cfg, data)
    ref = _flat(plain._run_teacher(batch)[1:])
    got = _flat(cl._run_teacher(batch)[1:])
    conv = cl.teacher.get_submodule("backbone.bottom_up.stem.conv1")
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    # Other convolution kernels, other summation order: equal up to fp32 rounding (amplified by
    # GroupNorm on 1x1 maps), not bit-identical.
    assert all(float((got[k] - ref[k]).abs().max() / ref[k].abs().max()) < 1e-3 for k in ref)
