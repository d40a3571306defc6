"""Sampling noise of the figures verification compares, so that gates judge a difference against it.

- Recall@1 on a gallery of n pairs is a proportion: its standard error is sqrt(p (1 - p) / n)
  (binomial), and the difference of two independent galleries has the root sum of squares.
- ROC AUC of n1 members against n0 non-members: the Hanley-McNeil (1982) standard error,
      SE^2 = (A (1 - A) + (n1 - 1)(Q1 - A^2) + (n0 - 1)(Q2 - A^2)) / (n1 n0),
      Q1 = A / (2 - A),  Q2 = 2 A^2 / (1 + A),
  evaluated at A = 0.5 when the question is "is this AUC distinguishable from chance?".
- Chance level of Recall@1 on a gallery of n pairs: 1 / n (each image has its own captions).
"""

from __future__ import annotations

import math


def proportion_se(percent: float, n: int) -> float:
    """Standard error (in percentage points) of a proportion given in percent, over n trials."""
    if n <= 0:
        return float("inf")
    p = min(max(percent / 100.0, 0.0), 1.0)
    return 100.0 * math.sqrt(max(p * (1.0 - p), 1.0 / (4.0 * n)) / n)


def difference_se(percent_a: float, n_a: int, percent_b: float, n_b: int) -> float:
    """Standard error (points) of the difference of two independent proportions."""
    return math.hypot(proportion_se(percent_a, n_a), proportion_se(percent_b, n_b))


def auc_se(auc: float, n_members: int, n_nonmembers: int) -> float:
    """Hanley-McNeil standard error of a ROC AUC."""
    if n_members <= 0 or n_nonmembers <= 0:
        return float("inf")
    a = min(max(auc, 1e-6), 1 - 1e-6)
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    variance = (a * (1 - a) + (n_members - 1) * (q1 - a * a) + (n_nonmembers - 1) * (q2 - a * a)) / (
        n_members * n_nonmembers
    )
    return math.sqrt(max(variance, 0.0))


def chance_r1(gallery_size: int) -> float:
    """Recall@1 (percent) of a model that ranks at random, on a gallery of ``gallery_size`` pairs."""
    return 100.0 / max(gallery_size, 1)
