"""MODEL.KD.CALIBRATE in DistillDetector: measured-only steps, each loss of a composition starting
at TARGET_RATIO of the detection loss, warm-up after calibration, checkpoint round trip,
run_info.json."""

import json
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("detectron2", reason="integration test: Detectron2 cannot be imported")

from detectron2.modeling import build_model  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

from d2kd.engine import CalibrationRecordHook, write_run_info  # noqa: E402
from d2kd.utils.checkpoint import SafeCheckpointer  # noqa: E402

from tests.integration.common import make_batch, small_kd_model, tiny_shapes  # noqa: E402

CONFIG = "shapes/kd/fgd_bckd_retinanet_R50_to_R18.yaml"  # a composition: FGDLoss + BCKDLoss
K, TARGET = 2, 0.3


def _opts(warmup=0):
    return [
        "MODEL.KD.CALIBRATE.ENABLED", True, "MODEL.KD.CALIBRATE.ITERS", K,
        "MODEL.KD.CALIBRATE.TARGET_RATIO", TARGET, "MODEL.KD.WARMUP_ITERS", warmup,
        "MODEL.RESNETS.NORM", "FrozenBN",  # the same batch gives the same losses every step
    ]  # fmt: skip


def _steps(model, batch, iters):
    """Training forwards at iterations ``iters`` (no optimizer step: the weights stay put)."""
    out = []
    model.train()
    with EventStorage(iters[0]) as storage:
        for it in iters:
            storage.iter = it
            # RetinaNet's loss normalizer is an EMA over steps: restart it so that every step
            # of this fixed batch gives the same losses.
            model.student.__dict__.pop("loss_normalizer", None)
            with torch.no_grad():
                out.append(model(batch))
    return out


def _per_loss(model, batch):
    """Term names of each loss, from one recorded computation."""
    seen = {}
    orig = model._terms_by_loss
    model._terms_by_loss = lambda record: seen.update(orig(record)) or seen
    try:
        _steps(model, batch, [10**6])
    finally:
        del model._terms_by_loss
    return {name: sorted(terms) for name, terms in seen.items()}


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("calib"))
    cfg, model = small_kd_model(CONFIG, _opts())
    batch = make_batch(cfg, tiny_shapes(root)[:2])
    losses = _steps(model, batch, list(range(K + 1)))
    return cfg, model, batch, losses, root


def test_losses_are_measured_not_applied_then_each_starts_at_the_target(calibrated):
    cfg, model, batch, losses, _ = calibrated
    for step in losses[:K]:  # calibration: detection losses only
        assert not [k for k in step if k.startswith("loss_kd_") and k != "loss_kd_off"]
    assert model.calibrator.done and not model.calibrating
    terms = _per_loss(model, batch)
    assert sorted(terms) == ["BCKDLoss", "FGDLoss"]
    first = losses[K]
    det = sum(v for k, v in first.items() if not k.startswith("loss_kd_"))
    for name, names in terms.items():  # each loss of the composition on its own
        kd = sum(first[t] for t in names)
        assert float(kd / det) == pytest.approx(TARGET, rel=1e-4), name
    scales = model.calibrator.report()["scales"]
    assert scales["FGDLoss"] != pytest.approx(scales["BCKDLoss"])


def test_warmup_starts_after_calibration(calibrated):
    root = calibrated[-1]
    cfg, model = small_kd_model(CONFIG, _opts(warmup=4))
    batch = make_batch(cfg, tiny_shapes(root)[:2])
    losses = _steps(model, batch, list(range(K + 2)))

    def ratio(step):
        det = sum(v for k, v in step.items() if not k.startswith("loss_kd_"))
        return float(sum(v for k, v in step.items() if k.startswith("loss_kd_")) / det)

    # Iteration K is the warm-up's first (1/4), K + 1 its second (2/4); 2 losses at TARGET each.
    assert ratio(losses[K]) == pytest.approx(2 * TARGET / 4, rel=1e-4)
    assert ratio(losses[K + 1]) == pytest.approx(2 * TARGET * 2 / 4, rel=1e-4)


def test_checkpoint_round_trip_keeps_the_scales_and_run_info_gets_them(calibrated, tmp_path):
    cfg, model, _, _, _ = calibrated
    SafeCheckpointer(model, save_dir=str(tmp_path)).save("model_final")
    fresh = build_model(cfg)
    assert fresh.calibrating
    SafeCheckpointer(fresh, save_dir=str(tmp_path)).resume_or_load("", resume=True)
    assert not fresh.calibrating
    assert torch.equal(fresh.calibrator.scales, model.calibrator.scales)
    assert fresh.calibrator.report() == model.calibrator.report()

    cfg = cfg.clone()
    cfg.OUTPUT_DIR = str(tmp_path)
    write_run_info(cfg, str(tmp_path / "run_info.json"))
    hook = CalibrationRecordHook(cfg)
    hook.trainer = SimpleNamespace(model=fresh)
    hook.after_step()
    info = json.loads((tmp_path / "run_info.json").read_text())
    assert info["kd_calibration"]["scales"] == model.calibrator.report()["scales"]
    assert info["meta_architecture"] == "DistillDetector"  # added to, not replaced


def test_off_by_default_no_buffers_in_the_checkpoint():
    _, model = small_kd_model(CONFIG)
    assert model.calibrator is None
    assert not [k for k in model.state_dict() if "calibrator" in k]
