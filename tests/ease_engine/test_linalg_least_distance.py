"""Least-distance programming (Lawson-Hanson via NNLS) against a brute-force solver."""

import numpy as np
import pytest
from scipy.optimize import minimize

from ease_engine.linalg.least_distance import least_distance


def _brute_force(g: np.ndarray, h: np.ndarray) -> np.ndarray | None:
    result = minimize(lambda x: (x**2).sum(), np.zeros(g.shape[1]), jac=lambda x: 2 * x, method="SLSQP",
                      constraints=[{"type": "ineq", "fun": lambda x: g @ x - h, "jac": lambda x: g}],
                      options={"ftol": 1e-15, "maxiter": 1000})
    return result.x if result.success and np.all(g @ result.x - h >= -1e-7) else None


def test_matches_a_brute_force_solver_on_random_problems():
    rng = np.random.default_rng(0)
    solved = 0
    for _ in range(100):
        m, n = int(rng.integers(1, 8)), int(rng.integers(1, 6))
        g, h = rng.normal(size=(m, n)), rng.normal(size=m)
        x, reference = least_distance(g, h), _brute_force(g, h)
        if x is None:
            assert reference is None
            continue
        assert np.all(g @ x - h >= -1e-9)
        if reference is not None:
            np.testing.assert_allclose(x, reference, atol=1e-6)
            solved += 1
    assert solved > 50


def test_constructed_cases():
    np.testing.assert_allclose(least_distance(np.array([[1.0, 0.0]]), np.array([2.0])), [2.0, 0.0], atol=1e-12)
    # x1 + x2 >= 2: the nearest point to 0 is (1, 1)
    np.testing.assert_allclose(least_distance(np.array([[1.0, 1.0]]), np.array([2.0])), [1.0, 1.0], atol=1e-12)
    np.testing.assert_array_equal(least_distance(np.array([[1.0, 1.0]]), np.array([-1.0])), [0.0, 0.0])
    assert least_distance(np.array([[1.0], [-1.0]]), np.array([1.0, 0.0])) is None  # x >= 1 and x <= 0
    with pytest.raises(ValueError, match="m x n"):
        least_distance(np.ones((2, 2)), np.ones(3))


def test_a_feasible_but_distant_point_is_found_not_called_infeasible():
    # x1 >= 1 and x2 >= 1e4 x1: the only allowed points are far away; a solver that gave up on them would
    # report no allowed point, and the Forget Lock would freeze the block
    x = least_distance(np.array([[1.0, 0.0], [-1e4, 1.0]]), np.array([1.0, 0.0]))
    np.testing.assert_allclose(x, [1.0, 1e4], rtol=1e-6)
