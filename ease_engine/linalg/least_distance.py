"""Least-distance programming: the shortest vector that satisfies a set of linear inequalities.

    minimise ||x||  subject to  G x >= h

Lawson and Hanson (Solving Least Squares Problems, 1974, chapter 23) reduce it to one non-negative least
squares problem: with E = [G^T; h^T] ((n+1) x m) and f = (0, ..., 0, 1), solve u = argmin_{u >= 0} ||E u - f||
and set r = E u - f. If r = 0 the inequalities have no common solution; otherwise x = -r[:n] / r[n]. NNLS
(scipy's active-set solver) finishes in finitely many steps, so the answer is exact up to rounding, where an
alternating-projection scheme only converges, and slowly when constraints are nearly parallel.

The projection of a point z0 onto the polyhedron {z : A z >= b} is z0 + least_distance(A, b - A z0).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import nnls

INFEASIBLE_MARGIN = 1e-12  # |r[n]| at or below this (after scaling h to norm 1): no common solution


def least_distance(g: np.ndarray, h: np.ndarray) -> np.ndarray | None:
    """The minimum-norm x with ``g @ x >= h`` (float64), or None when no x satisfies every row (or the solver
    gives no answer: callers treat both as "no allowed point")."""
    g = np.asarray(g, dtype=np.float64)
    h = np.asarray(h, dtype=np.float64).reshape(-1)
    if g.ndim != 2 or g.shape[0] != h.size:
        raise ValueError(f"g must be (m x n) with m = len(h) = {h.size}, got shape {g.shape}")
    n = g.shape[1]
    if not h.size or np.all(h <= 0):
        return np.zeros(n)  # x = 0 satisfies every row
    scale = float(np.linalg.norm(h))  # the problem is homogeneous in (x, h): solve it for h of norm 1
    e = np.vstack([g.T, h[None, :] / scale])
    f = np.zeros(n + 1)
    f[n] = 1.0
    try:
        u, _ = nnls(e, f, maxiter=50 * max(e.shape))
    except (RuntimeError, ValueError):  # no convergence, or non-finite input: no answer to trust
        return None
    r = e @ u - f
    if r[n] > -INFEASIBLE_MARGIN:
        return None
    return -r[:n] / r[n] * scale


__all__ = ["least_distance"]
