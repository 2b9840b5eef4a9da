"""
:class:`LossCalibrator`: per-loss scales that make each distillation loss start at a chosen
multiple of the detection loss (``MODEL.KD.CALIBRATE``).

Over the first ``iters`` training iterations it accumulates the detection loss ``det`` (sum of the
student's losses) and each distillation loss ``kd_i`` (the sum of its terms times its
``MODEL.KD.LOSS_WEIGHTS`` entry); then ``scale_i = target_ratio * sum(det) / sum(kd_i)`` (ratio of
the means over the ``iters`` iterations) and the scales are frozen. Everything lives in buffers,
so a checkpoint carries the scales (and a calibration interrupted midway) and ``--resume`` keeps
them. Pure PyTorch.
"""

from typing import Dict, Sequence

import torch
from torch import nn

__all__ = ["LossCalibrator"]


class LossCalibrator(nn.Module):
    """
    Buffers: ``sums`` (1 + N,) float64: [sum of det, sum of kd_1 .. kd_N]; ``count`` () int64:
    iterations measured; ``scales`` (N,) float64, 1.0 until calibrated.
    """

    def __init__(self, names: Sequence[str], iters: int, target_ratio: float):
        super().__init__()
        if iters < 1:
            raise ValueError(f"MODEL.KD.CALIBRATE.ITERS must be >= 1, got {iters}")
        if not target_ratio > 0:
            raise ValueError(f"MODEL.KD.CALIBRATE.TARGET_RATIO must be > 0, got {target_ratio}")
        self.names = list(names)
        self.iters, self.target_ratio = int(iters), float(target_ratio)
        self.register_buffer("sums", torch.zeros(1 + len(self.names), dtype=torch.float64))
        self.register_buffer("count", torch.zeros((), dtype=torch.int64))
        self.register_buffer("scales", torch.ones(len(self.names), dtype=torch.float64))

    @property
    def done(self) -> bool:
        return int(self.count) >= self.iters

    def update(self, det: float, kd: Dict[str, float]) -> bool:
        """
        Add one iteration's detection loss and weighted distillation losses (name -> value, every
        name of ``names``); a no-op once done. Returns whether calibration has just finished.
        """
        if self.done:
            return False
        missing = [n for n in self.names if n not in kd]
        if missing:
            raise KeyError(f"calibration got no value for the losses {missing}")
        values = [float(det)] + [float(kd[n]) for n in self.names]
        self.sums += torch.tensor(values, dtype=torch.float64, device=self.sums.device)
        self.count += 1
        if not self.done:
            return False
        det_sum, kd_sums = self.sums[0], self.sums[1:]
        # A loss that measured 0 (weight 0, or nothing to distil yet) keeps scale 1.
        scales = torch.where(
            kd_sums > 0, self.target_ratio * det_sum / kd_sums.clamp_min(1e-30), 1.0
        )
        self.scales.copy_(scales)
        return True

    def scale(self, name: str) -> float:
        """The frozen scale of ``name`` (1.0 before calibration has finished)."""
        return float(self.scales[self.names.index(name)]) if self.done else 1.0

    def report(self) -> Dict:
        """What was measured and set: for logs and run_info.json."""
        n = max(int(self.count), 1)
        return {
            "iters": self.iters,
            "target_ratio": self.target_ratio,
            "measured_iters": int(self.count),
            "mean_detection_loss": float(self.sums[0]) / n,
            "mean_kd_loss": {k: float(v) / n for k, v in zip(self.names, self.sums[1:])},
            "scales": {k: float(v) for k, v in zip(self.names, self.scales)},
        }
