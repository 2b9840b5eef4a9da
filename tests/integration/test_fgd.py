"""FGD inside DistillDetector on CPU: training steps, GcBlocks, zero-when-equal, MobileNetV2
student, config errors."""

import pytest

pytest.importorskip("detectron2", reason="integration test: Detectron2 cannot be imported")

from d2kd.modeling.adapters import Conv1x1  # noqa: E402

from tests.integration.common import (  # noqa: E402
    LEVELS,
    NARROW,
    check_images_without_objects,
    kd_keys,
    kd_step,
    same_weights_model,
    small_kd_model,
    tiny_shapes,
)

FGD_TERMS = ["fg", "bg", "att", "global"]
# Small and fast on CPU: R18 everywhere, 64-channel FPN/head, 64 px inputs.


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_shapes(str(tmp_path_factory.mktemp("shapes")), n=4)


@pytest.mark.parametrize("arch", ["retinanet", "fcos"])
def test_fgd_train_step(data, arch):
    cfg, model = small_kd_model(f"shapes/kd/fgd_{arch}_R50_to_R18.yaml")
    losses = kd_step(cfg, model, data)
    assert kd_keys(losses, "fgd") == sorted(
        f"loss_kd_fgd_{t}_{lv}" for t in FGD_TERMS for lv in LEVELS
    )
    loss = model.losses["FGDLoss"]
    # Both GcBlocks train (teacher side included), as in the reference.
    assert loss.gc_student["p3"].conv_mask.weight.grad is not None
    assert loss.gc_teacher["p3"].channel_add[-1].weight.grad is not None


def test_images_without_objects(data):
    check_images_without_objects(*small_kd_model("shapes/kd/fgd_fcos_R50_to_R18.yaml"), data)


def test_fgd_terms_exactly_zero_when_teacher_equals_student(data):
    cfg, model = same_weights_model("shapes/kd/fgd_fcos_R50_to_R18.yaml", "fcos_R18.yaml")
    losses = kd_step(cfg, model, data)
    kd = {k: v.item() for k, v in losses.items() if k.startswith("loss_kd_fgd_")}
    # The GcBlocks are the identity at initialisation, so the global term is 0 too.
    assert len(kd) == 20 and all(v == 0.0 for v in kd.values()), kd


def test_mobilenetv2_student_fgd_uses_adapters(data):
    cfg, model = small_kd_model("shapes/kd/fgd_retinanet_R50_to_MBv2.yaml", NARROW)
    assert type(model.student.backbone.bottom_up).__name__ == "MobileNetV2"
    losses = kd_step(cfg, model, data)
    adapter = model.losses["FGDLoss"].adapters["p3"]
    assert isinstance(adapter, Conv1x1) and adapter.weight.grad is not None
    assert len(kd_keys(losses, "fgd")) == 20


def test_bad_fgd_configs_raise_clear_errors():
    with pytest.raises(ValueError, match="no features .*p9"):
        small_kd_model("shapes/kd/fgd_fcos_R50_to_R18.yaml", ["MODEL.KD.FGD.KEYS", ["p3", "p9"]])


def test_atss_train_step(data):
    cfg, model = small_kd_model("shapes/kd/fgd_atss_R50_to_R18.yaml")
    losses = kd_step(cfg, model, data)
    assert len(kd_keys(losses, "fgd")) == len(FGD_TERMS) * len(LEVELS)
