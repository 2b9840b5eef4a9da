"""Maximum-weight bipartite matching: a hand case where greedy fails, and brute force on small
graphs."""

import itertools

import numpy as np
import pytest

from d2kd.evaluation.bipartite_matching import max_weight_matching


def test_max_weight_matching_beats_greedy():
    # Greedy takes 0.9 and stops (0.9); the optimum pairs (0,1) and (1,0): 0.8 + 0.85 = 1.65.
    rows, cols = max_weight_matching(np.array([[0.9, 0.8], [0.85, 0.0]]))
    assert rows.tolist() == [0, 1] and cols.tolist() == [1, 0]


def _brute_force(w):
    """Largest total weight over all matchings on the positive entries of a small matrix."""
    n, m = w.shape
    best = 0.0
    for k in range(1, min(n, m) + 1):
        for rows in itertools.combinations(range(n), k):
            for cols in itertools.permutations(range(m), k):
                if all(w[r, c] > 0 for r, c in zip(rows, cols)):
                    best = max(best, sum(w[r, c] for r, c in zip(rows, cols)))
    return best


@pytest.mark.parametrize("seed", range(12))
def test_max_weight_matching_is_optimal(seed):
    rng = np.random.default_rng(seed)
    n, m = rng.integers(1, 6, 2)
    w = np.where(rng.random((n, m)) < 0.5, rng.uniform(0.5, 1.0, (n, m)), 0.0)
    rows, cols = max_weight_matching(w)
    assert len(set(rows.tolist())) == len(rows) and len(set(cols.tolist())) == len(cols)
    assert all(w[r, c] > 0 for r, c in zip(rows, cols))
    assert w[rows, cols].sum() == pytest.approx(_brute_force(w))
