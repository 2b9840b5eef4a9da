"""DistillDetector + DETRDistill's four losses on tiny DeformableDETRs (64 px, CPU): the terms of
each loss and of their compositions, the frozen teacher, agreement checks with a teacher equal to
the student, the student's query-group entry point, and build-time errors."""

import pytest

pytest.importorskip("detectron2", reason="integration test: Detectron2 cannot be imported")

import torch  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

from tests.integration.common import make_batch, tiny_cfg, tiny_shapes  # noqa: E402
from tests.integration.test_deformable_detr import TINY  # noqa: E402

KD_CFG = "shapes/kd/detrdistill_deformable_detr_R50_to_R18.yaml"
TEACHER = ["MODEL.DEVICE", "cpu", "MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.RES2_OUT_CHANNELS", 64]
TEACHER += TINY + ["MODEL.DEFORMABLE_DETR.DEC_LAYERS", 3]  # 3 teacher stages vs 2 student stages
D = "MODEL.KD.DETRDISTILL."
P = "loss_kd_detrdistill_"
LOGITS = {P + "logits_cls", P + "logits_l1", P + "logits_giou"}
QUERY = {P + "query_cls", P + "query_l1", P + "query_giou"}
LOGITS_LOSS, FEAT_LOSS = "DETRLogitsDistillLoss", "DETRFeatureDistillLoss"
QUERY_LOSS, CONTRAST_LOSS = "DETRQueryPriorLoss", "DETRQueryContrastLoss"


def _losses(*names):
    """Opts composing ``names`` (each at weight 1)."""
    return ["MODEL.KD.LOSSES", list(names), "MODEL.KD.LOSS_WEIGHTS", [1.0] * len(names)]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_shapes(str(tmp_path_factory.mktemp("shapes")), n=4)


def _model(opts=(), teacher_opts=()):
    torch.manual_seed(0)
    cfg = tiny_cfg(KD_CFG, TINY + ["MODEL.KD.TEACHER.OPTS", TEACHER + list(teacher_opts), *opts])
    return cfg, build_model(cfg)


def _step(cfg, model, data):
    model.train()
    with EventStorage(0):
        return model(make_batch(cfg, data[:2]))


@pytest.mark.parametrize(
    "names, expected",
    [
        ((LOGITS_LOSS, FEAT_LOSS, QUERY_LOSS), LOGITS | {P + "feat"} | QUERY),
        ((LOGITS_LOSS,), LOGITS),
        ((FEAT_LOSS,), {P + "feat"}),
        ((QUERY_LOSS,), QUERY),
        ((CONTRAST_LOSS,), {P + "contrast"}),
        ((CONTRAST_LOSS, LOGITS_LOSS), LOGITS | {P + "contrast"}),
    ],
)
def test_each_loss_gives_its_terms(data, names, expected):
    cfg, model = _model([D + "CONTRAST.PROJ_DIM", 16, *_losses(*names)])
    assert list(model.losses) == list(names)
    losses = _step(cfg, model, data)
    kd = {k for k in losses if k.startswith("loss_kd_")}
    assert kd == expected
    assert {"loss_ce", "loss_ce_0"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert all(p.grad is None for p in model.teacher.parameters())
    assert any(
        p.grad is not None and p.grad.abs().sum() > 0
        for p in model.student.transformer.parameters()
    )


def test_the_config_is_the_paper_setting(data):
    cfg, model = _model()
    assert list(model.losses) == [LOGITS_LOSS, FEAT_LOSS, QUERY_LOSS]
    assert all(loss.stage_map == [1, 2] for loss in model.losses.values() if loss.stage_map)
    # student stages 1, 2 -> teacher stages 2, 3
    assert not any(k.startswith("teacher") or ".student." in k for k in model.state_dict())
    query = model.losses[QUERY_LOSS]
    assert query.student is model.student and "student" not in dict(query.named_children())
    assert query.teacher is model.teacher and "teacher" not in dict(query.named_children())


def test_logits_and_contrast_losses_match_once_per_step(data, monkeypatch):
    import d2kd.methods.detrdistill.loss as loss_module

    calls = []
    real = loss_module.match_to_teacher

    def counting(*args):
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(loss_module, "match_to_teacher", counting)
    opts = [D + "CONTRAST.PROJ_DIM", 16, *_losses(LOGITS_LOSS, CONTRAST_LOSS)]
    cfg, model = _model(opts)
    _step(cfg, model, data)
    assert len(calls) == 2  # one per student stage, shared by the two losses


def test_query_group_entry_point_decodes_other_queries(data):
    """The student's forward_query_group on its own queries reproduces its own predictions, and
    rerunning the encoder gives the same memory (no dropout, FrozenBN)."""
    cfg, model = _model(["MODEL.RESNETS.NORM", "FrozenBN"])
    student = model.student
    student.eval()
    batch = make_batch(cfg, data[:2])
    with torch.no_grad():
        images, out = student.forward_distill(batch)
        logits, boxes, hs = student.forward_query_group(out.encoder, student.query_embed.weight)
        again = student.forward_query_group(
            out.encoder, student.query_embed.weight, rerun_encoder=True
        )
        other = student.forward_query_group(out.encoder, model.teacher.query_embed.weight)
    assert torch.equal(logits, out.pred_logits) and torch.equal(boxes, out.pred_boxes)
    assert torch.allclose(again[0], logits, atol=1e-5)
    assert other[0].shape == (2, 2, model.teacher.num_queries, 4) and not torch.equal(
        other[0][:, :, : student.num_queries], logits
    )


def test_teacher_equal_to_student_agrees(data):
    """Same architecture, same weights, frozen BN, no dropout: box terms and the feature term
    vanish, and the teacher-query group is the student's own GT loss (same queries, same
    assignment)."""
    same = ["MODEL.RESNETS.NORM", "FrozenBN", "MODEL.DEFORMABLE_DETR.DEC_LAYERS", 2]
    fp32 = ["MODEL.KD.TEACHER.PRECISION", "fp32", "MODEL.KD.TEACHER.FOLD_NORMS", False]
    cfg, model = _model(same + fp32, teacher_opts=same)
    model.student.load_state_dict(model.teacher.state_dict())
    losses = _step(cfg, model, data)
    assert losses[P + "logits_l1"].item() == pytest.approx(0.0, abs=1e-5)
    assert losses[P + "logits_giou"].item() == pytest.approx(0.0, abs=1e-4)
    assert losses[P + "feat"].item() == pytest.approx(0.0, abs=1e-8)
    for kd, gt in (
        ("query_cls", "loss_ce"),
        ("query_l1", "loss_bbox"),
        ("query_giou", "loss_giou"),
    ):
        own = losses[gt] + losses[gt + "_0"]
        assert losses[P + kd].item() == pytest.approx(own.item(), rel=1e-4)


@pytest.mark.parametrize("mode", ["rematch", "teacher"])
def test_query_group_is_trained_with_the_selected_assignment(data, monkeypatch, mode):
    """Default "rematch" (the released code): the group's losses use the student's Hungarian
    matching of the group's own predictions; "teacher" (the paper's text): the teacher's
    matching of its mapped stage. On this batch the two assignments differ."""
    opts = [*_losses(QUERY_LOSS)] + (
        [D + "QUERY_PRIOR.ASSIGNMENT", mode] if mode != "rematch" else []
    )
    cfg, model = _model(opts)
    student, teacher, loss = model.student, model.teacher, model.losses[QUERY_LOSS]
    seen = {}
    real_group, real_losses = student.forward_query_group, student.set_losses
    real_teacher = teacher.forward_distill

    def group(*args, **kwargs):
        seen["group"] = real_group(*args, **kwargs)
        return seen["group"]

    def set_losses(logits, boxes, targets, indices, num_boxes=None):
        seen.setdefault("indices", []).append(indices)
        seen["targets"] = targets
        return real_losses(logits, boxes, targets, indices, num_boxes)

    def distill(batch):
        seen["teacher"] = real_teacher(batch)
        return seen["teacher"]

    monkeypatch.setattr(student, "forward_query_group", group)
    monkeypatch.setattr(student, "set_losses", set_losses)
    monkeypatch.setattr(teacher, "forward_distill", distill)
    _step(cfg, model, data)
    logits, boxes, _ = seen["group"]
    t_out, targets = seen["teacher"][1], seen["targets"]
    as_lists = lambda a: [(q.tolist(), g.tolist()) for q, g in a]  # noqa: E731
    rematch = [as_lists(student.match(logits[j], boxes[j], targets)) for j in range(2)]
    by_teacher = [as_lists(teacher.match(t_out.pred_logits[k], t_out.pred_boxes[k], targets))
                  for k in loss.stage_map]  # fmt: skip
    assert rematch != by_teacher  # the toy distinguishes the two
    used = [as_lists(a) for a in seen["indices"]]
    assert used == (rematch if mode == "rematch" else by_teacher)
    assert loss.assignment == mode


def test_rerun_encoder_and_memory_source_run(data):
    cfg, model = _model([D + "QUERY_PRIOR.RERUN_ENCODER", True, D + "FEAT.SOURCE", "memory",
                         D + "FEAT.MASK_PADDING", True, D + "STAGE_MAP", "last"])  # fmt: skip
    assert model.losses[QUERY_LOSS].stage_map == [2, 2]
    assert model.losses[LOGITS_LOSS].stage_map == [2, 2]
    losses = _step(cfg, model, data)
    assert all(torch.isfinite(v) for v in losses.values())


def test_feature_adapter_when_widths_differ(data):
    cfg, model = _model(
        _losses(LOGITS_LOSS, FEAT_LOSS), teacher_opts=["MODEL.DEFORMABLE_DETR.HIDDEN_DIM", 64]
    )
    adapters = model.losses[FEAT_LOSS].adapters
    assert len(adapters) == 4 and adapters[0].weight.shape[:2] == (64, 32)
    losses = _step(cfg, model, data)
    sum(losses.values()).backward()
    assert adapters[0].weight.grad is not None


def test_build_time_errors(tmp_path):
    with pytest.raises(ValueError, match="HIDDEN_DIM"):
        _model(teacher_opts=["MODEL.DEFORMABLE_DETR.HIDDEN_DIM", 64])
    with pytest.raises(ValueError, match="NUM_FEATURE_LEVELS"):
        _model(_losses(FEAT_LOSS), teacher_opts=["MODEL.DEFORMABLE_DETR.NUM_FEATURE_LEVELS", 3])
    with pytest.raises(ValueError, match="STAGE_MAP"):
        _model([D + "STAGE_MAP", "first"])
    with pytest.raises(KeyError, match="DETRDistillLoss"):  # the former single loss is gone
        _model(_losses("DETRDistillLoss"))
    with pytest.raises(ValueError, match="QUERY_PRIOR.ASSIGNMENT"):
        _model([D + "QUERY_PRIOR.ASSIGNMENT", "paper"])
    with pytest.raises(ValueError, match="FEAT.SOURCE"):
        _model([D + "FEAT.SOURCE", "backbone"])
    with pytest.raises(ValueError, match="NUM_CLASSES"):
        _model(teacher_opts=["MODEL.DEFORMABLE_DETR.NUM_CLASSES", 5])
    with pytest.raises(ValueError, match="TEACHER.RUN"):
        _model(["MODEL.KD.TEACHER.RUN", "backbone"])


def test_non_detr_teacher_is_rejected():
    cfg = tiny_cfg(
        KD_CFG,
        TINY + ["MODEL.KD.TEACHER.CONFIG_FILE", "configs/shapes/retinanet_R18.yaml",
                "MODEL.KD.TEACHER.OPTS", ["MODEL.DEVICE", "cpu"]],
    )  # fmt: skip
    with pytest.raises(TypeError, match="DETR-type teacher.*RetinaNet"):
        build_model(cfg)
    cfg = tiny_cfg(
        "shapes/kd/mse_retinanet_R50_to_R18.yaml",
        ["MODEL.KD.LOSSES", [QUERY_LOSS], "MODEL.KD.TEACHER.OPTS",
         ["MODEL.DEVICE", "cpu", "MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.RES2_OUT_CHANNELS", 64]],
    )  # fmt: skip
    with pytest.raises(TypeError, match="DETR-type student"):
        build_model(cfg)


def test_coco_configs_chain_to_deformable_detr_teachers():
    from d2kd.config import get_d2kd_cfg
    from d2kd.modeling.teacher import load_teacher_cfg

    from tests.integration.common import config_path

    paper = [LOGITS_LOSS, FEAT_LOSS, QUERY_LOSS]
    for leaf, depth, losses, weights in (
        ("deformable_detr_R101_to_R50", 50, paper, [1.0] * 3),
        ("deformable_detr_R101_to_R18", 18, paper, [1.0] * 3),
        ("contrast_deformable_detr_R101_to_R50", 50, paper + [CONTRAST_LOSS], [1.0] * 3 + [0.2]),
    ):
        cfg = get_d2kd_cfg()
        cfg.merge_from_file(config_path(f"detrdistill/detrdistill_{leaf}_50ep.yaml"))
        cfg.freeze()
        assert cfg.MODEL.RESNETS.DEPTH == depth and cfg.MODEL.KD.LOSSES == losses
        assert cfg.MODEL.KD.LOSS_WEIGHTS == weights
        assert (
            cfg.SOLVER.OPTIMIZER == "ADAMW" and cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE == "full_model"
        )
        teacher = load_teacher_cfg(cfg)
        assert (
            teacher.MODEL.META_ARCHITECTURE == "DeformableDETR"
            and teacher.MODEL.RESNETS.DEPTH == 101
        )


def test_mixed_precision_forward_keeps_kd_terms_in_fp32(data):
    cfg, model = _model()
    model.train()
    with EventStorage(0), torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(make_batch(cfg, data[:2]))
    kd = {k: v for k, v in losses.items() if k.startswith("loss_kd_")}
    assert len(kd) == 7 and all(v.dtype == torch.float32 and torch.isfinite(v) for v in kd.values())


def test_images_without_annotations_stay_finite(data):
    names = (LOGITS_LOSS, FEAT_LOSS, QUERY_LOSS, CONTRAST_LOSS)
    cfg, model = _model([D + "CONTRAST.PROJ_DIM", 16, *_losses(*names)])
    batch = make_batch(cfg, data[:2])
    batch[0]["instances"] = batch[0]["instances"][:0]  # one empty image
    model.train()
    with EventStorage(0):
        losses = model(batch)
    assert len([k for k in losses if k.startswith("loss_kd_")]) == 8
    assert all(torch.isfinite(v) for v in losses.values())
    for x in batch:
        x["instances"] = x["instances"][:0]  # no box in the whole batch
    with EventStorage(0):
        losses = model(batch)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
