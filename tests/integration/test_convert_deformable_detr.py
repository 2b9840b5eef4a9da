"""Official Deformable DETR checkpoints -> d2kd's DeformableDETR: output parity with the official
code on fixtures it produced (tools/conversion_fixtures/make_deformable_detr_fixtures.py; the
official repository is not needed here), and the errors for a checkpoint of another variant."""

import os

import pytest

pytest.importorskip("detectron2", reason="integration test: Detectron2 cannot be imported")

import torch  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.structures import Boxes, Instances  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

from d2kd.convert import detect_format, get_converter  # noqa: E402
from d2kd.convert.deformable_detr import COCO_CATEGORY_IDS  # noqa: E402
from d2kd.utils.safe_load import safe_torch_load  # noqa: E402

from tests.integration.common import REPO, tiny_cfg  # noqa: E402

FIXTURES = os.path.join(REPO, "tests", "fixtures", "convert", "deformable_detr")
CONFIGS = {
    "plain": "teachers/deformable_detr_official_R50.yaml",
    "refine": "teachers/deformable_detr_official_R50_refine.yaml",
    "two_stage": "teachers/deformable_detr_official_R50_two_stage.yaml",
}
VARIANTS = list(CONFIGS)
# The fixtures' sizes (see the generation script): the official ResNet-50 layout at 1/64 width,
# width 32, 2 heads, 1 encoder + 2 decoder layers, 2 points, FFN 32, 12 queries.
FIXTURE_SIZES = [
    "MODEL.RESNETS.STEM_OUT_CHANNELS", 8, "MODEL.RESNETS.RES2_OUT_CHANNELS", 4,
    "MODEL.RESNETS.WIDTH_PER_GROUP", 1,
    "MODEL.DEFORMABLE_DETR.HIDDEN_DIM", 32, "MODEL.DEFORMABLE_DETR.NHEADS", 2,
    "MODEL.DEFORMABLE_DETR.ENC_LAYERS", 1, "MODEL.DEFORMABLE_DETR.DEC_LAYERS", 2,
    "MODEL.DEFORMABLE_DETR.DIM_FEEDFORWARD", 32, "MODEL.DEFORMABLE_DETR.ENC_N_POINTS", 2,
    "MODEL.DEFORMABLE_DETR.DEC_N_POINTS", 2, "MODEL.DEFORMABLE_DETR.NUM_QUERIES", 12,
]  # fmt: skip
# Max relative difference allowed; denominators are floored at FLOOR (logits of about -5..5,
# boxes in [0, 1]: the floor only matters for values within 0.01 of zero).
RTOL, FLOOR = 1e-4, 1e-2


def _load(name):
    path = os.path.join(FIXTURES, name)
    return safe_torch_load(path, "test fixture")


def _cfg(variant, opts=()):
    return tiny_cfg(CONFIGS[variant], FIXTURE_SIZES + list(opts))


def _converted_model(variant, opts=()):
    cfg = _cfg(variant, opts)
    checkpoint = _load(f"{variant}.pth")
    assert detect_format(checkpoint) == "deformable-detr"
    result = get_converter("deformable-detr").convert(checkpoint, cfg)
    model = build_model(cfg)
    model.load_state_dict(result.state_dict, strict=True)
    return cfg, model.eval()


def _max_rel(a, b):
    return ((a - b).abs() / b.abs().clamp(min=FLOOR)).max().item()


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_decoder_stage_matches_the_official_model(variant):
    _, model = _converted_model(variant)
    ref = _load(f"{variant}_outputs.pth")
    with torch.no_grad():
        images = model.preprocess_image([{"image": im.float()} for im in ref["images"]])
        out = model.detr_outputs(images)
    # The official COCO head's 91 outputs are category ids; d2kd keeps the 80 used ones.
    ref_logits = ref["pred_logits"][..., COCO_CATEGORY_IDS]
    assert out.pred_logits.shape == ref_logits.shape == (2, 2, 12, 80)
    assert _max_rel(out.pred_logits, ref_logits) <= RTOL
    assert _max_rel(out.pred_boxes, ref["pred_boxes"]) <= RTOL
    if variant == "two_stage":
        # The encoder proposals: class 0 (the objectness that ranks them) and boxes.
        assert _max_rel(out.enc_logits[..., 0], ref["enc_logits"][..., 0]) <= RTOL
        assert _max_rel(out.enc_boxes, ref["enc_boxes"]) <= RTOL
        assert out.query_embed.shape == (2, 12, 64)
    else:
        assert out.enc_logits is None and out.enc_boxes is None


@pytest.mark.parametrize("variant", VARIANTS)
def test_detections_on_one_image_match_the_official_postprocess(variant):
    cfg, model = _converted_model(variant)
    ref = _load(f"{variant}_outputs.pth")
    image = ref["images"][0].float()
    h, w = image.shape[-2:]
    with torch.no_grad():
        (result,) = model([{"image": image, "height": h, "width": w}])
    inst = result["instances"]
    assert len(inst) == cfg.TEST.DETECTIONS_PER_IMAGE == 100
    # The official top 100 runs over 91 ids, d2kd's over the 80 used: the official list without
    # the unused ids is the start of d2kd's, in the same order.
    used = torch.tensor([int(c) in COCO_CATEGORY_IDS for c in ref["det_labels"]])
    n = int(used.sum())
    assert 80 <= n < 100
    contiguous = torch.tensor([COCO_CATEGORY_IDS.index(int(c)) for c in ref["det_labels"][used]])
    assert torch.equal(inst.pred_classes[:n], contiguous)
    assert _max_rel(inst.scores[:n], ref["det_scores"][used]) <= RTOL
    # Detectron2's detector_postprocess clips boxes to the image (the official code does not).
    boxes = ref["det_boxes"][used].clone()
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
    assert (inst.pred_boxes.tensor[:n] - boxes).abs().max() <= RTOL * max(h, w)


@pytest.mark.parametrize("variant", VARIANTS)
def test_training_losses_match_the_official_criterion(variant):
    # 91 classes (the official head as it is), so that the focal loss covers the same classes.
    _, model = _converted_model(variant, ["MODEL.DEFORMABLE_DETR.NUM_CLASSES", 91])
    ref = _load(f"{variant}_outputs.pth")
    gt = []
    for image, t in zip(ref["images"], ref["targets"]):
        inst = Instances(tuple(image.shape[-2:]))
        inst.gt_boxes, inst.gt_classes = Boxes(torch.tensor(t["boxes"])), torch.tensor(t["labels"])
        gt.append(inst)
    with torch.no_grad():  # eval mode (no dropout), as the reference
        images = model.preprocess_image([{"image": im.float()} for im in ref["images"]])
        out = model.detr_outputs(images)
        targets = model.prepare_targets(gt)
        losses = model.criterion(out.pred_logits, out.pred_boxes, targets)
        if variant == "two_stage":
            losses.update(model.criterion.proposal_losses(out.enc_logits, out.enc_boxes, targets))
    assert set(losses) == set(ref["losses"])
    for name, value in losses.items():
        assert value.item() == pytest.approx(ref["losses"][name].item(), rel=RTOL), name


def test_checkpoint_of_another_variant_names_unmapped_and_missing_keys():
    converter = get_converter("deformable-detr")
    with pytest.raises(ValueError) as err:
        converter.convert(_load("refine.pth"), _cfg("plain"))
    msg = str(err.value)
    assert "variant 'refine'" in msg and "variant 'plain'" in msg
    assert "unmapped checkpoint keys (20)" in msg and "class_embed.1.weight" in msg
    assert "transformer.decoder.bbox_embed.0.layers.0.bias" in msg
    with pytest.raises(ValueError) as err:
        converter.convert(_load("plain.pth"), _cfg("refine"))
    msg = str(err.value)
    assert "missing model keys (8)" in msg and "heads.class_embed.1.weight" in msg


def test_checkpoint_of_another_size_names_the_keys():
    missing = r"missing model keys \(\d+\): transformer\.decoder_layers\.2\."
    with pytest.raises(ValueError, match=missing):
        get_converter("deformable-detr").convert(
            _load("plain.pth"), _cfg("plain", ["MODEL.DEFORMABLE_DETR.DEC_LAYERS", 3])
        )
    with pytest.raises(ValueError, match="MODEL.DEFORMABLE_DETR.NUM_CLASSES is 20"):
        get_converter("deformable-detr").convert(
            _load("plain.pth"), _cfg("plain", ["MODEL.DEFORMABLE_DETR.NUM_CLASSES", 20])
        )


def test_two_stage_training_step_has_the_proposal_loss_and_gradients():
    cfg = _cfg("two_stage", ["MODEL.DEFORMABLE_DETR.NUM_CLASSES", 3])
    torch.manual_seed(0)
    model = build_model(cfg).train()
    batch = []
    for h, w in [(64, 96), (48, 80)]:
        inst = Instances((h, w))
        inst.gt_boxes = Boxes(torch.tensor([[4.0, 6.0, 40.0, 30.0], [20.0, 10.0, 60.0, 44.0]]))
        inst.gt_classes = torch.tensor([0, 2])
        batch.append({"image": torch.randint(0, 256, (3, h, w)).float(), "instances": inst})
    with EventStorage(0):
        losses = model(batch)
    names = ("loss_ce", "loss_bbox", "loss_giou")
    assert set(losses) == {n + s for n in names for s in ("", "_0", "_enc")}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    losses["loss_ce_enc"].backward()  # reaches the proposal head and the encoder
    t = model.transformer
    for w in (
        t.enc_output.weight,
        model.heads.class_embed[2].weight,
        t.encoder_layers[0].ffn.linear1.weight,
    ):
        assert w.grad.abs().sum() > 0
    assert not hasattr(model, "query_embed") and not hasattr(t, "reference_points")


def test_a_two_stage_teacher_serves_detrdistill(tmp_path):
    """The query prior decodes the teacher's per-image proposal queries with the student."""
    from tests.integration.common import make_batch, tiny_shapes
    from tests.integration.test_detrdistill import KD_CFG, TEACHER, TINY, _losses

    data = tiny_shapes(str(tmp_path), n=2)
    two_stage = [
        "MODEL.DEFORMABLE_DETR.WITH_BOX_REFINE",
        True,
        "MODEL.DEFORMABLE_DETR.TWO_STAGE",
        True,
    ]
    names = ("DETRLogitsDistillLoss", "DETRFeatureDistillLoss", "DETRQueryPriorLoss")
    torch.manual_seed(0)
    cfg = tiny_cfg(KD_CFG, TINY + ["MODEL.KD.TEACHER.OPTS", TEACHER + two_stage, *_losses(*names)])
    model = build_model(cfg).train()
    assert model.teacher.two_stage and not model.student.two_stage
    with EventStorage(0):
        losses = model(make_batch(cfg, data))
    kd = {k for k in losses if k.startswith("loss_kd_")}
    assert {"loss_kd_detrdistill_query_cls", "loss_kd_detrdistill_feat"} <= kd
    assert all(torch.isfinite(v) for v in losses.values())


def test_only_official_checkpoints_are_recognised():
    own = {"model": build_model(_cfg("plain")).state_dict()}  # d2kd's own DeformableDETR layout
    assert "transformer.level_embed" in own["model"]
    assert detect_format(own) == ""
    assert get_converter("deformable-detr").matches(_load("two_stage.pth"))
