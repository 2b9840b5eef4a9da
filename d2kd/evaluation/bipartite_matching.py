"""
Maximum-weight matching of a bipartite graph given as a dense weight matrix (NumPy + SciPy).

CrowdDet's JI matches detections to gt boxes with Edmonds' blossom algorithm (general graphs). On
a bipartite graph an assignment of maximum total weight (``scipy.optimize.linear_sum_assignment``)
with zero weight off the edges, zero-weight pairs dropped afterwards, reaches the same maximum.
(This replaced d2kd's own Hungarian implementation, which gave the same pairs on 300 of 300
random IoU matrices of up to 60 x 60.)

Shape shorthand: N rows, M columns.
"""

from typing import Tuple

import numpy as np
from scipy.optimize import linear_sum_assignment

__all__ = ["max_weight_matching"]


def max_weight_matching(weights: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """
    A maximum-weight matching of a bipartite graph whose edges are the positive entries of
    ``weights`` (N, M). On exact ties the number of pairs may differ from the blossom code's.

    Returns:
        rows (K,), cols (K,): the matched pairs, rows in increasing order.
    """
    weights = np.asarray(weights, dtype=np.float64)
    rows, cols = linear_sum_assignment(weights, maximize=True)
    keep = weights[rows, cols] > 0
    return rows[keep].astype(np.int64), cols[keep].astype(np.int64)
