"""DeformableDETR on tiny shapes images (64 px, CPU): training, inference, distillation hooks,
the optimizer recipe and DETR's dataset mapper."""

import pytest

pytest.importorskip("detectron2", reason="integration test: Detectron2 cannot be imported")

import torch  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.structures import ImageList  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

from d2kd.data import DetrDatasetMapper, build_train_mapper  # noqa: E402
from d2kd.layers.detr.outputs import DETROutputs  # noqa: E402
from d2kd.solver import build_optimizer  # noqa: E402

from tests.integration.common import make_batch, tiny_cfg, tiny_shapes  # noqa: E402

CFG = "shapes/deformable_detr_R18.yaml"
# 64 px inputs, width 32, 1 encoder + 2 decoder layers, 10 queries.
TINY = [
    "INPUT.MIN_SIZE_TRAIN", (64,), "INPUT.MAX_SIZE_TRAIN", 64,
    "INPUT.MIN_SIZE_TEST", 64, "INPUT.MAX_SIZE_TEST", 64,
    "MODEL.DEFORMABLE_DETR.HIDDEN_DIM", 32, "MODEL.DEFORMABLE_DETR.DIM_FEEDFORWARD", 64,
    "MODEL.DEFORMABLE_DETR.ENC_LAYERS", 1, "MODEL.DEFORMABLE_DETR.DEC_LAYERS", 2,
    "MODEL.DEFORMABLE_DETR.NUM_QUERIES", 10,
]  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_shapes(str(tmp_path_factory.mktemp("shapes")), n=4)


def _model(opts=()):
    torch.manual_seed(0)
    cfg = tiny_cfg(CFG, TINY + list(opts))
    return cfg, build_model(cfg)


@pytest.mark.parametrize("refine", [False, True])
def test_training_step_losses_and_gradients(data, refine):
    cfg, model = _model(["MODEL.DEFORMABLE_DETR.WITH_BOX_REFINE", refine])
    model.train()
    with EventStorage(0):
        losses = model(make_batch(cfg, data[:2]))
    expected = {"loss_ce", "loss_bbox", "loss_giou", "loss_ce_0", "loss_bbox_0", "loss_giou_0"}
    assert set(losses) == expected
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()
    for part in ("backbone", "input_proj", "transformer", "heads", "query_embed"):
        grads = [p.grad for p in getattr(model, part).parameters()]
        assert any(g is not None and g.abs().sum() > 0 for g in grads), part


def test_inference_returns_topk_instances_in_the_original_size(data):
    cfg, model = _model(["TEST.DETECTIONS_PER_IMAGE", 7])
    model.eval()
    with torch.no_grad():
        out = model(make_batch(cfg, data[:2], is_train=False))
    inst = out[0]["instances"]
    assert inst.image_size == (data[0]["height"], data[0]["width"])  # 128 px, rescaled from 64
    assert len(inst) <= 7 and inst.pred_classes.max() < 4
    assert (inst.scores[:-1] >= inst.scores[1:]).all()
    boxes = inst.pred_boxes.tensor
    assert (boxes >= 0).all() and (boxes <= 128).all()


def test_forward_distill_and_decode_with_queries_reuse_the_memory(data):
    cfg, model = _model()
    model.eval()
    batch = make_batch(cfg, data[:2], is_train=False)
    images, out = model.forward_distill(batch)
    assert isinstance(images, ImageList) and isinstance(out, DETROutputs)
    assert out.pred_logits.shape == (2, 2, 10, 4) and out.pred_boxes.shape == (2, 2, 10, 4)
    assert out.hs.shape == (2, 2, 10, 32) and out.query_embed.shape == (10, 64)
    assert len(out.features) == len(out.masks) == 4 and out.features[0].shape[1] == 32
    assert not out.pred_logits.requires_grad  # forward_distill runs without gradients
    with torch.no_grad():
        logits, boxes, hs = model.decode_with_queries(out.encoder, out.query_embed)
        sub_logits, _, _ = model.decode_with_queries(out.encoder, out.query_embed[:3])
    torch.testing.assert_close(logits, out.pred_logits)
    torch.testing.assert_close(boxes, out.pred_boxes)
    assert sub_logits.shape == (2, 2, 3, 4)
    maps = out.encoder.level_maps(out.encoder.src)
    for a, b in zip(maps, out.features):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="width"):
        model.decode_with_queries(out.encoder, torch.zeros(3, 10))


def test_padding_masks_follow_each_image_size(data):
    cfg, model = _model()
    batch = make_batch(cfg, data[:2], is_train=False)
    batch[1]["image"] = batch[1]["image"][:, :48, :40]
    images = model.preprocess_image(batch)
    mask = model.padding_mask(images)
    assert mask.shape == (2, 64, 64)
    assert (
        not mask[0].any()
        and mask[1, 48:].all()
        and mask[1, :, 40:].all()
        and not mask[1, :48, :40].any()
    )


def test_optimizer_recipe():
    cfg, model = _model(["SOLVER.BACKBONE_MULTIPLIER", 0.1, "SOLVER.BASE_LR", 1e-3])
    opt = build_optimizer(cfg, model)
    assert isinstance(opt, torch.optim.AdamW)
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert len(lr_of) == len([p for p in model.parameters() if p.requires_grad])
    named = dict(model.named_parameters())
    assert lr_of[id(named["backbone.stem.conv1.weight"])] == pytest.approx(1e-4)
    offsets = "transformer.encoder_layers.0.self_attn.sampling_offsets.weight"
    assert lr_of[id(named[offsets])] == pytest.approx(1e-4)  # LINEAR_PROJ_MULTIPLIER 0.1
    assert lr_of[id(named["transformer.reference_points.weight"])] == pytest.approx(1e-4)
    assert lr_of[id(named["query_embed.weight"])] == pytest.approx(1e-3)
    # Full-model clipping: one step with huge gradients moves AdamW by at most ~lr per entry.
    for p in model.parameters():
        p.grad = torch.full_like(p, 1e6)
    opt.step()
    total = torch.sqrt(sum((p.grad**2).sum() for p in model.parameters()))
    assert total.item() == pytest.approx(0.1, rel=1e-3)  # CLIP_VALUE of the shapes config
    cfg.defrost()
    cfg.SOLVER.OPTIMIZER = "LAMB"
    with pytest.raises(ValueError, match="SOLVER.OPTIMIZER"):
        build_optimizer(cfg, model)


def test_plain_sgd_config_keeps_detectron2s_optimizer():
    cfg, model = _model(["SOLVER.OPTIMIZER", "SGD", "SOLVER.CLIP_GRADIENTS.CLIP_TYPE", "norm",
                         "SOLVER.LINEAR_PROJ_MULTIPLIER", 1.0])  # fmt: skip
    opt = build_optimizer(cfg, model)
    assert isinstance(opt, torch.optim.SGD)
    # Detectron2's per-parameter clipping: every gradient's own norm is clipped, not the total.
    params = [p for g in opt.param_groups for p in g["params"]]
    for p in params:
        p.grad = torch.full_like(p, 1e6)
    opt.step()
    norms = torch.stack([p.grad.norm() for p in params])
    assert torch.allclose(norms, torch.full_like(norms, 0.1), rtol=1e-2)
    assert norms.norm().item() > 0.5


def test_detr_dataset_mapper(data):
    cfg = tiny_cfg(
        CFG,
        TINY + ["INPUT.DATASET_MAPPER_NAME", "DetrDatasetMapper", "INPUT.CROP.ENABLED", True,
                "INPUT.CROP.TYPE", "absolute_range", "INPUT.CROP.SIZE", (40, 60),
                "INPUT.DETR_CROP_RESIZE", (100,), "INPUT.MAX_SIZE_TRAIN", 200],
    )  # fmt: skip
    mapper = build_train_mapper(cfg)
    assert isinstance(mapper, DetrDatasetMapper)
    torch.manual_seed(0)
    import numpy as np

    np.random.seed(0)
    shapes = {tuple(mapper(dict(d))["image"].shape[-2:]) for d in data * 4}
    assert (64, 64) in shapes and len(shapes) > 1  # plain resize and crop-then-resize both occur
    cfg.defrost()
    cfg.INPUT.DATASET_MAPPER_NAME = "Nope"
    with pytest.raises(KeyError, match="DATASET_MAPPER_NAME"):
        build_train_mapper(cfg)
