"""DivergenceMonitor: non-finite terms, ratio to the lowest running median, which group rose
first."""

import math

import pytest

from d2kd.utils.divergence import DivergenceMonitor, divergence_advice


def _feed(monitor, seq, start=0):
    """Feed a list of loss dicts from iteration ``start``; return (iteration, Divergence) of the
    first hit."""
    for it, losses in enumerate(seq, start):
        found = monitor.update(it, losses)
        if found is not None:
            return it, found
    return None, None


def test_steady_and_noisy_losses_never_trigger():
    m = DivergenceMonitor(factor=100, window=20, min_history=5, min_loss=1.0)
    seq = [
        {"loss_cls": 2.0 / (1 + 0.01 * i) * (1.5 if i % 7 == 0 else 1.0), "loss_kd_x": 0.5}
        for i in range(300)
    ]
    assert _feed(m, seq) == (None, None)
    assert 1.0 < m.max_ratio["loss_cls"] < 2.0


def test_slow_explosion_under_clipping_is_caught():
    """A loss doubling every 20 iterations: the running median follows it, the lowest does not."""
    m = DivergenceMonitor(factor=100, window=100, min_history=2, min_loss=1.0)
    seq = [{"loss_cls": 1.5 * 2 ** (i / 20), "loss_kd_a": 0.3} for i in range(400)]
    it, found = _feed(m, seq)
    # ref = median of the first two values = 1.5 * (1 + 2**0.05) / 2 = 1.526: the value passes
    # 100 x ref from i = 134 (20 * log2(101.7) = 133.4) and 10 x ref from i = 67.
    assert it == 134 and found.first_iteration == 67 and found.first_group == "detection"


def test_non_finite_term_stops_at_once_even_without_history():
    m = DivergenceMonitor(min_history=5)
    it, found = _feed(m, [{"loss_cls": 1.0, "loss_kd_a": float("nan")}])
    assert it == 0 and found.terms[0][0] == "loss_kd_a" and math.isnan(found.terms[0][1])
    assert found.first_group == "distillation"
    assert "iteration 0" in found.describe() and "loss_kd_a" in found.describe()


def test_kd_explosion_is_reported_first_when_it_rose_first():
    m = DivergenceMonitor(factor=100, window=50, min_history=10, min_loss=1.0)
    seq = [{"loss_cls": 2.0, "loss_kd_a": 2.0} for _ in range(20)]
    # The KD term grows x3 per iteration from 20 on; the detection term follows 3 iterations later.
    for k in range(1, 10):
        seq.append({"loss_cls": 2.0 * 3 ** max(0, k - 3), "loss_kd_a": 2.0 * 3**k})
    it, found = _feed(m, seq)
    # Iteration 20 + k holds 2 * 3**k: 486 > 100 x 2 at k = 5; 54 > sqrt(100) x 2 at k = 3.
    assert it == 24
    assert [t[0] for t in found.terms] == ["loss_kd_a"]
    assert found.first_group == "distillation" and found.first_iteration == 22
    assert "distillation terms exploded first" in found.describe()


def test_detection_first_and_min_loss_floor():
    m = DivergenceMonitor(factor=10, window=50, min_history=3, min_loss=1.0)
    # A term that starts at ~0 and grows to 0.5 stays below MIN_LOSS: never an explosion.
    seq = [{"loss_box": 1e-4 * (i + 1) ** 3, "loss_kd_a": 1.0} for i in range(8)]
    assert _feed(m, seq) == (None, None)
    found = m.update(100, {"loss_box": 50.0, "loss_kd_a": 1.0})
    assert found is not None and found.first_group == "detection"
    assert "detection terms exploded first" in found.describe()


def test_invalid_settings_are_refused():
    with pytest.raises(ValueError, match="FACTOR"):
        DivergenceMonitor(factor=1.0)
    with pytest.raises(ValueError, match="MIN_HISTORY"):
        DivergenceMonitor(window=5, min_history=10)


KD = ({"PGDLoss": 2.0}, 0)


def test_advice_follows_the_group_that_rose_first():
    """Issue 21: the advice said "above all, lower MODEL.KD.LOSS_WEIGHTS" whenever a distillation
    term was among the first, also when detection terms rose with it."""
    both = divergence_advice("distillation and detection", 0.01, 100, None, KD)
    assert "above all" not in both.lower()
    lr, clip, weights = (both.index(k) for k in ("BASE_LR", "CLIP_GRADIENTS", "LOSS_WEIGHTS"))
    assert lr < clip < weights and "only then lower MODEL.KD.LOSS_WEIGHTS" in both
    kd_only = divergence_advice("distillation", 0.01, 100, ("value", 1.0), KD)
    assert kd_only.index("above all, lower MODEL.KD.LOSS_WEIGHTS (now {'PGDLoss': 2.0})") < (
        kd_only.index("BASE_LR")
    )
    det_only = divergence_advice("detection", 0.01, 100, ("norm", 35.0), KD)
    assert det_only.startswith("The detection terms rose first, not the distillation terms")
    assert "above all" not in det_only.lower() and "not the first suspect" in det_only
    assert "(SOLVER.CLIP_GRADIENTS, norm 35.0) keeps the steps finite" in det_only
    plain = divergence_advice("detection", 0.01, 100, None, None)
    assert plain.startswith("Lower the learning rate") and "LOSS_WEIGHTS" not in plain


def test_a_monitor_restored_from_its_state_stops_where_an_uninterrupted_one_does():
    # The running median drifts up from 9.0 to 9.6; a spike of 930 is 103x the lowest median
    # (9.0) but 97x the medians after iteration 50, where the run is interrupted.
    seq = [{"loss_kd_x": 9.0}] * 50 + [{"loss_kd_x": 9.6}] * 60 + [{"loss_kd_x": 930.0}]

    def run(restore):
        first = DivergenceMonitor(factor=100, window=20, min_history=5)
        assert _feed(first, seq[:50]) == (None, None)
        resumed = DivergenceMonitor(factor=100, window=20, min_history=5)
        if restore:
            resumed.load_state_dict(first.state_dict())
        return _feed(resumed, seq[50:], start=50)

    uninterrupted = _feed(DivergenceMonitor(factor=100, window=20, min_history=5), seq)
    assert uninterrupted[0] == 110 and uninterrupted[1].terms[0][2] == 9.0
    restored = run(restore=True)
    assert restored[0] == 110 and restored[1].terms == uninterrupted[1].terms
    assert run(restore=False) == (None, None)  # what a fresh monitor after a resume did
