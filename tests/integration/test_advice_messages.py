"""Advice in d2kd's errors names what to change (issue 21): the divergence error follows the
terms that rose, the class-count error names the model's own keys."""

import pytest

pytest.importorskip("detectron2", reason="integration test: Detectron2 cannot be imported")

from detectron2.data import MetadataCatalog  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402

from d2kd.engine import DivergenceHook  # noqa: E402
from d2kd.engine.startup import check_num_classes  # noqa: E402
from d2kd.utils.divergence import Divergence  # noqa: E402

from tests.integration.common import tiny_cfg, tiny_dense_opts  # noqa: E402

PGD = "shapes/kd/pgd_retinanet_R50_to_R18.yaml"
MSE = "shapes/kd/mse_retinanet_R50_to_R18.yaml"
TINY = tiny_dense_opts("RETINANET")


def _found(*first_terms):
    terms = [(n, 500.0, 2.0) for n in first_terms]
    return Divergence(40, terms, 31, sorted(first_terms))


def test_divergence_error_when_detection_and_distillation_explode_together():
    cfg = tiny_cfg(PGD, ["SOLVER.CLIP_GRADIENTS.ENABLED", False])
    hook = DivergenceHook(cfg)
    msg = hook.message(_found("loss_cls", "loss_kd_pgd_cls"))
    assert "distillation and detection terms exploded first" in msg
    assert "above all" not in msg.lower()
    assert msg.index("SOLVER.BASE_LR") < msg.index("SOLVER.CLIP_GRADIENTS.ENABLED True")
    assert msg.index("SOLVER.CLIP_GRADIENTS") < msg.index("MODEL.KD.LOSS_WEIGHTS")
    kd_first = hook.message(_found("loss_kd_pgd_cls"))
    assert "above all, lower MODEL.KD.LOSS_WEIGHTS" in kd_first
    det_first = hook.message(_found("loss_cls"))
    assert "above all" not in det_first.lower() and "not the first suspect" in det_first


def _class_count_error(config, opts):
    name = "am_four_classes"
    MetadataCatalog.get(name).set(thing_classes=[f"c{i}" for i in range(4)])
    cfg = tiny_cfg(config, ["DATASETS.TRAIN", (name,), *opts])
    with pytest.raises(ValueError, match="classes but the training data") as e:
        check_num_classes(cfg, build_model(cfg))
    return str(e.value), cfg


def test_class_count_error_names_the_keys_of_the_model_at_fault():
    """Issue 21: the student's error told the user to edit MODEL.KD.TEACHER.OPTS."""
    msg, _ = _class_count_error(MSE, [*TINY, "MODEL.RETINANET.NUM_CLASSES", 80])
    assert msg.startswith("the student predicts 80 classes")
    assert "set MODEL.RETINANET.NUM_CLASSES 4 for the student in this config" in msg
    assert "MODEL.KD.TEACHER.OPTS changes only the teacher" in msg
    teacher_80 = ["MODEL.KD.TEACHER.OPTS", [*TINY, "MODEL.RETINANET.NUM_CLASSES", 80]]
    msg, cfg = _class_count_error(PGD, [*TINY, *teacher_80])
    assert msg.startswith("the teacher (read by ['PGDLoss']) predicts 80 classes")
    assert (
        "set MODEL.RETINANET.NUM_CLASSES 4 in the teacher's config (MODEL.KD.TEACHER.CONFIG_FILE "
        f"{cfg.MODEL.KD.TEACHER.CONFIG_FILE}) or add it to MODEL.KD.TEACHER.OPTS" in msg
    )
    fcos = ["MODEL.FCOS.NUM_CLASSES", 3, *tiny_dense_opts("FCOS")]
    msg, _ = _class_count_error("shapes/fcos_R18.yaml", fcos)
    assert msg.endswith("set MODEL.FCOS.NUM_CLASSES 4 in the config") and "TEACHER" not in msg
