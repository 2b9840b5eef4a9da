"""Advice in d2kd's errors names what to change (issue 21): the divergence error follows the
terms that rose, the class-count error names the model's own keys."""

import pytest

pytest.importorskip("detectron2", reason="integration test: Detectron2 cannot be imported")

from d2kd.engine import DivergenceHook  # noqa: E402
from d2kd.utils.divergence import Divergence  # noqa: E402

from tests.integration.common import tiny_cfg  # noqa: E402

PGD = "shapes/kd/pgd_retinanet_R50_to_R18.yaml"


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
