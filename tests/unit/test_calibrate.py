"""LossCalibrator: scales = target * mean(det) / mean(kd) over K iterations, then frozen."""

import pytest
import torch

from d2kd.modeling.calibrate import LossCalibrator


def _calibrated():
    cal = LossCalibrator(["a", "b", "zero"], iters=3, target_ratio=0.5)
    steps = [(2.0, 1.0, 0.1), (4.0, 1.0, 0.2), (6.0, 1.0, 0.3)]
    finished = [cal.update(det, {"a": a, "b": b, "zero": 0.0}) for det, a, b in steps]
    return cal, finished


def test_scales_are_target_times_det_over_kd_over_k_iterations():
    cal, finished = _calibrated()
    assert finished == [False, False, True] and cal.done
    # det sums to 12; a to 3, b to 0.6: 0.5 * 12 / 3 = 2 and 0.5 * 12 / 0.6 = 10.
    assert cal.scale("a") == pytest.approx(2.0)
    assert cal.scale("b") == pytest.approx(10.0)
    assert cal.scale("zero") == 1.0  # nothing measured: left alone
    rep = cal.report()
    assert rep["mean_detection_loss"] == pytest.approx(4.0)
    assert rep["mean_kd_loss"]["b"] == pytest.approx(0.2)


def test_scale_is_one_until_done_and_frozen_after():
    cal = LossCalibrator(["a"], iters=2, target_ratio=1.0)
    cal.update(1.0, {"a": 4.0})
    assert not cal.done and cal.scale("a") == 1.0
    cal.update(1.0, {"a": 4.0})
    assert cal.scale("a") == pytest.approx(0.25)
    assert cal.update(100.0, {"a": 0.001}) is False  # later iterations change nothing
    assert cal.scale("a") == pytest.approx(0.25) and int(cal.count) == 2


def test_state_dict_round_trip_keeps_scales_and_an_unfinished_calibration():
    cal, _ = _calibrated()
    fresh = LossCalibrator(["a", "b", "zero"], iters=3, target_ratio=0.5)
    fresh.load_state_dict(cal.state_dict())
    assert fresh.done and fresh.scale("b") == pytest.approx(10.0)
    half = LossCalibrator(["a"], iters=2, target_ratio=1.0)
    half.update(2.0, {"a": 1.0})
    resumed = LossCalibrator(["a"], iters=2, target_ratio=1.0)
    resumed.load_state_dict(half.state_dict())
    assert resumed.update(2.0, {"a": 1.0}) is True and resumed.scale("a") == pytest.approx(2.0)


def test_bad_settings_and_missing_values_are_named():
    with pytest.raises(ValueError, match="CALIBRATE.ITERS"):
        LossCalibrator(["a"], iters=0, target_ratio=1.0)
    with pytest.raises(ValueError, match="TARGET_RATIO"):
        LossCalibrator(["a"], iters=1, target_ratio=0.0)
    with pytest.raises(KeyError, match="'b'"):
        LossCalibrator(["a", "b"], iters=1, target_ratio=1.0).update(1.0, {"a": 1.0})
    assert torch.is_tensor(LossCalibrator(["a"], 1, 1.0).scales)
