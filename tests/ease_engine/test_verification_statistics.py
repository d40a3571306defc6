"""The noise model of verification's gates against brute force (simulation) and closed forms."""

import numpy as np
import pytest

from ease_engine.verification.membership import auc
from ease_engine.verification.statistics import auc_se, chance_r1, difference_se, proportion_se


def test_proportion_se_matches_simulation():
    rng = np.random.default_rng(0)
    draws = rng.binomial(200, 0.3, size=20000) / 200 * 100
    assert proportion_se(30.0, 200) == pytest.approx(draws.std(), rel=0.03)
    assert difference_se(30.0, 200, 30.0, 200) == pytest.approx(np.sqrt(2) * draws.std(), rel=0.03)
    assert proportion_se(0.0, 100) > 0  # never a zero band at the edges


def test_auc_se_matches_simulation_under_the_null_and_off_it():
    rng = np.random.default_rng(1)
    for shift in (0.0, 0.8):
        aucs = [auc(rng.normal(shift, 1, 80), rng.normal(0, 1, 120)) for _ in range(3000)]
        assert auc_se(float(np.mean(aucs)), 80, 120) == pytest.approx(np.std(aucs), rel=0.1)


def test_chance_level():
    assert chance_r1(500) == pytest.approx(0.2)
    assert chance_r1(1) == 100.0
