"""
Maximum-weight matching of a bipartite graph given as a dense weight matrix, in pure NumPy.

CrowdDet's JI matches detections to gt boxes with Edmonds' blossom algorithm (general graphs).
On a bipartite graph a Hungarian assignment per connected component, with zero weight off the
edges and zero-weight pairs dropped afterwards, reaches the same maximum total weight. Components
that are "stars" (one node joined to leaves), the common case for detections and people, are
solved without the Hungarian loop.

Shape shorthand: N rows, M columns, E edges (positive entries of the weight matrix).
"""

from typing import List, Tuple

import numpy as np

__all__ = ["max_weight_matching"]


def _min_cost_assignment(cost: np.ndarray) -> np.ndarray:
    """
    Hungarian algorithm (shortest augmenting paths with potentials) for an (n, m) cost, n <= m.

    Returns:
        (n,) column of each row in an assignment of minimum total cost.
    """
    n, m = cost.shape
    u, v = np.zeros(n + 1), np.zeros(m + 1)
    owner = np.zeros(m + 1, dtype=np.int64)  # owner[j]: 1-based row holding column j (0: free)
    way = np.zeros(m + 1, dtype=np.int64)
    for i in range(1, n + 1):
        owner[0], j0 = i, 0
        minv = np.full(m + 1, np.inf)
        used = np.zeros(m + 1, dtype=bool)
        while True:
            used[j0] = True
            i0 = owner[j0]
            reduced = np.concatenate([[np.inf], cost[i0 - 1] - u[i0] - v[1:]])
            better = ~used & (reduced < minv)
            minv[better], way[better] = reduced[better], j0
            slack = np.where(used, np.inf, minv)
            j1 = int(np.argmin(slack))
            delta = slack[j1]
            u[owner[used]] += delta
            v[used] -= delta
            minv[~used] -= delta
            j0 = j1
            if owner[j0] == 0:
                break
        while j0:  # augment along the alternating path
            j1 = way[j0]
            owner[j0] = owner[j1]
            j0 = j1
    cols = np.zeros(n, dtype=np.int64)
    assigned = np.flatnonzero(owner[1:])
    cols[owner[1:][assigned] - 1] = assigned
    return cols


def _components(edges_r: np.ndarray, edges_c: np.ndarray, n: int) -> List[np.ndarray]:
    """Connected components (as edge indices) of a bipartite graph; column c is node n + c."""
    parent = list(range(n + int(edges_c.max()) + 1)) if len(edges_c) else []

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for r, c in zip(edges_r.tolist(), edges_c.tolist()):
        parent[find(r)] = find(n + c)
    roots = np.array([find(r) for r in edges_r.tolist()], dtype=np.int64)
    order = np.argsort(roots, kind="stable")
    return np.split(order, np.flatnonzero(np.diff(roots[order])) + 1) if len(order) else []


def _star_edges(er: np.ndarray, ec: np.ndarray, w: np.ndarray, num_rows: int, num_cols: int):
    """
    Edge indices matched in "column stars": components made of one column and rows without any
    other edge (an isolated edge is one). The best matching of such a component is its heaviest
    edge.

    Returns:
        (hit, in_star): indices of the chosen edges, and (E,) bool of every edge in a star.
    """
    row_deg = np.bincount(er, minlength=num_rows)
    shared = np.bincount(ec[row_deg[er] > 1], minlength=num_cols) > 0  # a column sharing a row
    in_star = ~shared[ec]
    star = np.flatnonzero(in_star)
    best = star[np.lexsort((-w[star], ec[star]))]  # grouped by column, heaviest first
    hit = best[np.r_[True, np.diff(ec[best]) != 0]] if len(best) else best
    return hit, in_star


def max_weight_matching(weights: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """
    A maximum-weight matching of a bipartite graph whose edges are the positive entries of
    ``weights`` (N, M). CrowdDet runs Edmonds' blossom algorithm; a Hungarian assignment of each
    connected component (zero weight off the edges, zero-weight pairs dropped) reaches the same
    total weight. On exact ties the number of pairs may differ from the blossom code's.

    Returns:
        rows (K,), cols (K,): the matched pairs, rows in increasing order.
    """
    er, ec = np.nonzero(weights > 0)
    pairs = []
    # Stars around one column, then around one row (most components in practice), at once.
    for by_row in (False, True):
        a, b = (ec, er) if by_row else (er, ec)
        n_a, n_b = weights.shape[::-1] if by_row else weights.shape
        hit, in_star = _star_edges(a, b, weights[er, ec], n_a, n_b)
        pairs += list(zip(er[hit].tolist(), ec[hit].tolist()))
        er, ec = er[~in_star], ec[~in_star]
    for comp in _components(er, ec, weights.shape[0]):
        rows, cols = np.unique(er[comp]), np.unique(ec[comp])
        sub = weights[np.ix_(rows, cols)]
        flip = len(rows) > len(cols)
        assign = _min_cost_assignment(-(sub.T if flip else sub))
        for i, j in enumerate(assign.tolist()):
            r, c = (j, i) if flip else (i, j)
            if sub[r, c] > 0:
                pairs.append((int(rows[r]), int(cols[c])))
    pairs.sort()
    return (np.array([p[0] for p in pairs], np.int64), np.array([p[1] for p in pairs], np.int64))
