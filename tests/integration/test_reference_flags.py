"""
Every reproduction flag of the specs (``MODEL.KD.*.EMULATE_*``, pgd_fgd.md 2.14 and 3.2) exists and
changes the result on a small case, and PGD's masks treat batch padding as the specs say (2.3, 2.7):
on a batch of a 64 x 64 image and a 128 x 128 one, so that the first image has batch padding.
"""

import pytest

pytest.importorskip("detectron2", reason="integration test: Detectron2 cannot be imported")

import torch  # noqa: E402
from detectron2.structures import Instances  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from d2kd.methods.fgd.loss import FGDLoss  # noqa: E402
from d2kd.methods.pgd.loss import PGDLoss  # noqa: E402
from d2kd.methods.pgd.mask import PGWMaskGenerator  # noqa: E402
from d2kd.modeling.dense_outputs import dense_outputs  # noqa: E402
from d2kd.modeling.teacher import run_teacher  # noqa: E402

from tests.integration.common import (  # noqa: E402
    make_batch,
    small_kd_model,
    step_with_record,
    tiny_shapes,
)

SPEC_FLAGS = {  # every EMULATE_* flag the PGD/FGD spec lists, with the spec item
    "PGD": ["TOPK_BEFORE_INSIDE", "AXIS_SWAP", "BATCH_MASK_MIXING", "GFL_STRIDE_BUG", "COV_NOISE"],
    "FGD": ["IMG_SHAPE_MAPPING"],
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_shapes(str(tmp_path_factory.mktemp("shapes")), n=4)


@pytest.fixture(scope="module")
def models():
    """One small KD model per config, built once (flags are switched on copies of its losses)."""
    cache = {}

    def get(method, arch):
        if (method, arch) not in cache:
            torch.manual_seed(0)
            cache[method, arch] = small_kd_model(f"shapes/kd/{method}_{arch}_R50_to_R18.yaml")
        return cache[method, arch]

    return get


def _padded_batch(cfg, data):
    """Two 64 x 64 shapes images; the second zero-padded to 128 x 128 (its objects unchanged)."""
    batch = make_batch(cfg, data[:2])
    big = batch[1]
    assert tuple(big["image"].shape[-2:]) == (64, 64)
    big["image"] = F.pad(big["image"], (0, 64, 0, 64))
    big["instances"] = Instances((128, 128), **big["instances"].get_fields())
    return batch


def _maps(generator, model, batch):
    images, (_, predictions, anchors) = run_teacher(model.teacher, "dense", batch)
    gt = [x["instances"] for x in batch]
    return generator.compute(predictions, anchors, gt, images.image_sizes)


def _with(cfg, key, value=True):
    cfg = cfg.clone()
    cfg.defrost()
    cfg.merge_from_list([key, value])
    return cfg


def _generator(cfg, model, flag):
    """The PGD mask generator of ``cfg`` with ``MODEL.KD.PGD.EMULATE_<flag>`` on."""
    return PGWMaskGenerator(
        _with(cfg, f"MODEL.KD.PGD.EMULATE_{flag}"), model.student, model.teacher
    )


def _record(model, batch):
    return step_with_record(model, batch)[1]


def test_every_spec_flag_is_a_config_key(models):
    cfg, _ = models("pgd", "retinanet")
    for method, flags in SPEC_FLAGS.items():
        for flag in flags:
            assert cfg.MODEL.KD[method][f"EMULATE_{flag}"] is False, (method, flag)
    assert cfg.MODEL.KD.PGD.EMULATE_FCOS_PADDING is False


@pytest.mark.parametrize("arch", ["retinanet", "atss", "gfl", "fcos"])
def test_pgd_background_is_zero_on_batch_padding(models, data, arch):
    # The 64 x 64 image's own extent (a multiple of 32) is the top-left quarter of the batch:
    # background there where no object is, 0 on the rest (before: 1 on the padding too).
    cfg, model = models("pgd", arch)
    batch = _padded_batch(cfg, data)
    maps = _maps(model.losses["PGDLoss"].mask_generator, model, batch)
    for bg, stride in zip(maps["bg"], [8, 16, 32, 64, 128]):
        own = -(-64 // stride)  # ceil(64 / stride) rows and columns
        assert (bg[0, 0, own:] == 0).all() and (bg[0, 0, :, own:] == 0).all()
        assert (bg[1] > 0).any()
    assert (maps["bg"][0][0, 0, :8, :8] > 0).any()
    if arch == "fcos":  # the reference FCOS code counts the padding as background
        on = _generator(cfg, model, "FCOS_PADDING")
        padded = _maps(on, model, batch)["bg"][0]
        assert (padded[0, 0, 8:] == 1).all() and (padded[0, 0, :, 8:] == 1).all()


@pytest.mark.parametrize(
    "arch,flag,changed",
    [
        ("retinanet", "TOPK_BEFORE_INSIDE", "cls"),
        ("fcos", "AXIS_SWAP", "bg"),
        ("retinanet", "COV_NOISE", "cls"),
        ("gfl", "GFL_STRIDE_BUG", "cls"),
        ("fcos", "FCOS_PADDING", "bg"),
    ],
)
def test_pgd_mask_flags_change_the_maps(models, data, arch, flag, changed):
    cfg, model = models("pgd", arch)
    batch = _padded_batch(cfg, data)
    off = _maps(model.losses["PGDLoss"].mask_generator, model, batch)
    torch.manual_seed(0)
    on = _maps(_generator(cfg, model, flag), model, batch)
    assert any(not torch.equal(a, b) for a, b in zip(off[changed], on[changed])), flag


def test_pgd_batch_mask_mixing_changes_the_classification_terms(models, data):
    cfg, model = models("pgd", "retinanet")
    record = _record(model, _padded_batch(cfg, data))
    off = model.losses["PGDLoss"]
    on = PGDLoss(_with(cfg, "MODEL.KD.PGD.EMULATE_BATCH_MASK_MIXING"), model.student, model.teacher)
    on.load_state_dict(off.state_dict())
    a, b = off(record), on(record)
    assert a["loss_kd_pgd_cls_fg_p3"] != b["loss_kd_pgd_cls_fg_p3"]
    assert a["loss_kd_pgd_reg_p3"] == b["loss_kd_pgd_reg_p3"]  # the regression loss is unaffected


def test_fgd_img_shape_mapping_changes_the_masks(models, data):
    cfg, model = models("fgd", "retinanet")
    record = _record(model, _padded_batch(cfg, data))
    off = model.losses["FGDLoss"]
    on = FGDLoss(_with(cfg, "MODEL.KD.FGD.EMULATE_IMG_SHAPE_MAPPING"), model.student, model.teacher)
    on.load_state_dict(off.state_dict())
    a, b = off(record), on(record)
    assert any(a[k] != b[k] for k in a), "the reference mapping stretches the smaller image's boxes"


def test_gfl_stride_bug_decodes_image_k_with_the_stride_of_level_k(models, data):
    cfg, model = models("pgd", "gfl")
    gen = _generator(cfg, model, "GFL_STRIDE_BUG")
    batch = make_batch(cfg, data[:3])
    _, (_, (logits, dists), anchors) = run_teacher(model.teacher, "dense", batch)
    # Distribution logits peaked on bin 1 (distance 1 stride unit on every side).
    peaked = [torch.full_like(d, -30.0) for d in dists]
    for d in peaked:
        d.view(d.shape[0], 4, -1, *d.shape[-2:])[:, :, 1] = 30.0
    out = dense_outputs(model.teacher, (logits, peaked), anchors)
    boxes = gen._teacher_boxes(out, out.anchors)  # (3, R, 4)
    centres = (out.anchors[:, :2] + out.anchors[:, 2:]) / 2
    for k, stride in enumerate([8.0, 16.0, 32.0]):  # every level, image k: stride of level k
        expected = torch.cat([centres - stride, centres + stride], dim=1)
        assert torch.allclose(boxes[k], expected, atol=1e-3)
    twice = [[x.repeat(2, 1, 1, 1) for x in outs] for outs in (logits, peaked)]
    six = dense_outputs(model.teacher, twice, anchors)
    with pytest.raises(ValueError, match=r"EMULATE_GFL_STRIDE_BUG.*\(6\).*\(5\)"):
        gen._teacher_boxes(six, out.anchors)  # the reference crashes beyond 5 images per GPU


def test_flags_for_another_detector_are_refused(models):
    cfg, model = models("pgd", "retinanet")
    for flag in ("FCOS_PADDING", "GFL_STRIDE_BUG"):
        with pytest.raises(ValueError, match=f"EMULATE_{flag}.*RetinaNet"):
            _generator(cfg, model, flag)
