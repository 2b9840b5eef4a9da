"""
Statistics of ``tools/compare.py``: mean and standard deviation over seeds, and the paired gain
of a distilled student over the plain student trained with the same seed, with its 95 %
confidence interval (Student's t over the paired differences).

Needs neither Detectron2 nor torch nor scipy (the t quantiles are tabulated below).
"""

import math
from typing import Dict, List, Optional, Sequence

__all__ = ["t_quantile_975", "mean_std", "paired_gain", "summarize"]

# Two-sided 95 % quantiles t_{0.975, df} of Student's t distribution, df = 1..30.
_T975 = (
    12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912, 2.364624, 2.306004, 2.262157,
    2.228139, 2.200985, 2.178813, 2.160369, 2.144787, 2.131450, 2.119905, 2.109816, 2.100922,
    2.093024, 2.085963, 2.079614, 2.073873, 2.068658, 2.063899, 2.059539, 2.055529, 2.051831,
    2.048407, 2.045230, 2.042272,
)  # fmt: skip
_Z975 = 1.959963985


def t_quantile_975(df: int) -> float:
    """t_{0.975, df}: tabulated up to 30 degrees of freedom, Cornish-Fisher expansion above
    (error below 1e-5 there)."""
    if df < 1:
        raise ValueError(f"a t interval needs at least 1 degree of freedom (2 samples), got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    return z + g1 / df + g2 / df**2 + g3 / df**3


def _finite(values: Sequence[Optional[float]]) -> List[float]:
    return [float(v) for v in values if v is not None and v == v]


def mean_std(values: Sequence[Optional[float]]) -> Dict[str, Optional[float]]:
    """{"mean", "std" (sample standard deviation, n - 1; None for one value), "n"} of the finite
    values (NaN/None, a model without detections, are left out and counted in "n_missing")."""
    xs = _finite(values)
    n = len(xs)
    out = {"mean": None, "std": None, "n": n, "n_missing": len(values) - n}
    if n:
        out["mean"] = sum(xs) / n
    if n > 1:
        out["std"] = math.sqrt(sum((x - out["mean"]) ** 2 for x in xs) / (n - 1))
    return out


def paired_gain(
    plain: Sequence[Optional[float]], distilled: Sequence[Optional[float]]
) -> Dict[str, Optional[float]]:
    """
    The gain ``distilled - plain`` over pairs trained with the same seed.

    Args:
        plain, distilled: one value per seed, in the same seed order (a pair with a NaN/None on
            either side is left out).

    Returns:
        {"mean", "std" of the differences, "n" pairs, "ci_low", "ci_high" (95 % interval of the
        mean difference, mean +- t_{0.975, n-1} * std / sqrt(n); None below 2 pairs),
        "contains_zero" (None below 2 pairs)}
    """
    if len(plain) != len(distilled):
        raise ValueError(f"{len(plain)} plain values but {len(distilled)} distilled: not paired")
    diffs = [
        float(d) - float(p)
        for p, d in zip(plain, distilled)
        if p is not None and d is not None and p == p and d == d
    ]
    out = mean_std(diffs)
    out.update({"ci_low": None, "ci_high": None, "contains_zero": None})
    if out["n"] > 1:
        half = t_quantile_975(out["n"] - 1) * out["std"] / math.sqrt(out["n"])
        out["ci_low"], out["ci_high"] = out["mean"] - half, out["mean"] + half
        out["contains_zero"] = out["ci_low"] <= 0.0 <= out["ci_high"]
    return out


def summarize(
    plain: Dict[int, Dict[str, float]], distilled: Dict[int, Dict[str, float]], metrics: Sequence
) -> Dict[str, Dict]:
    """
    Per metric: the distilled runs' mean/std and the paired gain over ``plain``.

    Args:
        plain, distilled: seed -> {metric: value}; only seeds present in both are paired.
    """
    seeds = sorted(set(plain) & set(distilled))
    out = {}
    for m in metrics:
        p = [plain[s].get(m) for s in seeds]
        d = [distilled[s].get(m) for s in seeds]
        out[m] = {"distilled": mean_std(d), "plain": mean_std(p), "gain": paired_gain(p, d)}
    return out
