"""Closure pieces of EASE on constructed inputs where the answer is known exactly."""

import numpy as np
import pytest
import torch
from scipy.stats import wasserstein_distance

from ease_engine.models.blocks import ParameterBlock
from ease_engine.unlearning.ease import (
    _project_gradients,
    excise_contribution,
    forget_basis_for,
    quantile_matching_loss,
)


def test_forget_basis_contains_the_contribution():
    basis = torch.eye(6)[:, :2]
    contribution = torch.tensor([1.0, 2.0, 0.0, 3.0, 0.0, 0.0])
    u = forget_basis_for(basis, contribution)
    assert u.shape == (6, 3)
    torch.testing.assert_close(u @ (u.T @ contribution), contribution, atol=1e-6, rtol=0)
    assert forget_basis_for(basis, torch.zeros(6)).shape == (6, 2)


def test_excision_removes_exactly_the_exclusive_part():
    shared = torch.tensor([1.0, 1.0, 0.0, 0.0])
    exclusive_part = torch.tensor([0.0, 0.0, 2.0, 0.0])
    theta = {"w": torch.tensor([5.0, 5.0, 5.0, 5.0]), "b": torch.ones(2)}
    contributions = {"w": shared + exclusive_part, "b": torch.tensor([0.5, 0.0])}
    e = {"w": torch.tensor([[0.0], [0.0], [1.0], [0.0]])}  # block "b" has no exclusive directions
    out, share = excise_contribution(theta, contributions, e)
    torch.testing.assert_close(out["w"], torch.tensor([5.0, 5.0, 3.0, 5.0]))
    torch.testing.assert_close(out["b"], theta["b"])
    assert share == pytest.approx(4.0 / (2.0 + 4.0 + 0.25))


def test_quantile_matching_is_the_squared_wasserstein_distance():
    rng = np.random.default_rng(0)
    batch = torch.tensor(rng.normal(0.5, 0.1, 64), dtype=torch.float32)
    target = torch.sort(torch.tensor(rng.normal(0.2, 0.1, 64), dtype=torch.float32)).values
    loss = float(quantile_matching_loss(batch, target))
    # equal sizes: W2^2 = mean squared difference of sorted samples; W1 <= W2
    expected = float(((torch.sort(batch).values - target) ** 2).mean())
    assert loss == pytest.approx(expected, rel=1e-5)
    assert wasserstein_distance(batch.numpy(), target.numpy()) <= np.sqrt(loss) + 1e-6
    assert float(quantile_matching_loss(target, target)) == pytest.approx(0.0, abs=1e-12)


def test_gradients_are_projected_on_the_exclusive_span_only():
    model = torch.nn.Module()
    model.w = torch.nn.Parameter(torch.zeros(2, 2))
    model.emb = torch.nn.Parameter(torch.zeros(4, 2))
    model.w.grad = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    model.emb.grad = torch.ones(4, 2)
    blocks = [ParameterBlock("w", (2, 2)), ParameterBlock("emb", (1, 2), (1,))]
    e_w = torch.tensor([[1.0], [0.0], [0.0], [0.0]])
    e_row = torch.tensor([[0.0], [1.0]])
    _project_gradients(model, blocks, {"w": e_w, blocks[1].name: e_row})
    torch.testing.assert_close(model.w.grad, torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
    expected = torch.zeros(4, 2)
    expected[1, 1] = 1.0  # only row 1 is displaced, and only along its exclusive direction
    torch.testing.assert_close(model.emb.grad, expected)
