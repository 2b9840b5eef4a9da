"""Methods compose: feature KD + logit KD in one DistillDetector step."""

import pytest

pytest.importorskip("detectron2", reason="integration test: Detectron2 cannot be imported")

import torch  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

from tests.integration.common import make_batch, tiny_cfg, tiny_shapes  # noqa: E402

R18 = ["MODEL.DEVICE", "cpu", "MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.RES2_OUT_CHANNELS", 64]


@pytest.mark.parametrize(
    "config,prefixes",
    [
        ("shapes/kd/pgd_bckd_fcos_R50_to_R18.yaml", ("loss_kd_pgd_", "loss_kd_bckd_")),
        ("shapes/kd/fgd_bckd_retinanet_R50_to_R18.yaml", ("loss_kd_fgd_", "loss_kd_bckd_")),
    ],
)
def test_feature_and_logit_kd_together(config, prefixes, tmp_path):
    cfg = tiny_cfg(config, ["MODEL.KD.TEACHER.OPTS", R18])
    model = build_model(cfg)
    assert list(model.losses) == list(cfg.MODEL.KD.LOSSES)
    batch = make_batch(cfg, tiny_shapes(str(tmp_path), n=2))
    model.train()
    with EventStorage(0):
        losses = model(batch)
    for prefix in prefixes:
        terms = [k for k in losses if k.startswith(prefix)]
        assert terms and all(torch.isfinite(losses[k]) for k in terms)
    assert model.losses["BCKDLoss"].cls_weight == 0.25


def test_pgd_and_bckd_flatten_the_teacher_head_once(tmp_path, monkeypatch):
    import importlib

    # (d2kd.modeling's own dense_outputs function shadows the module of that name)
    dense = importlib.import_module("d2kd.modeling.dense_outputs")

    cfg = tiny_cfg("shapes/kd/pgd_bckd_fcos_R50_to_R18.yaml", ["MODEL.KD.TEACHER.OPTS", R18])
    model = build_model(cfg)
    calls = []
    real = dense.dense_outputs

    def counting(m, *args):
        calls.append(m)
        return real(m, *args)

    monkeypatch.setattr(dense, "dense_outputs", counting)
    batch = make_batch(cfg, tiny_shapes(str(tmp_path), n=2))
    model.train()
    with EventStorage(0):
        model(batch)
    # PGD's mask generator and BCKD's pairing share the teacher's flattened head (record.extras).
    assert sum(m is model.teacher for m in calls) == 1
    assert sum(m is model.student for m in calls) == 1
