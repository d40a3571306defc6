"""The guard's randomized range finder (``ease_guard``) against per-pair gradients computed one by one."""

import numpy as np
import scipy.linalg
import torch
from torch import nn

from ease_engine.linalg.subspace import orthonormal_basis
from ease_engine.models.blocks import ParameterBlock
from ease_engine.unlearning.ease_guard import OVERSAMPLING, sketch_gradients, sketch_matrix

BLOCKS = [ParameterBlock("weight", (4, 3)), ParameterBlock("table", (2, 3), rows=(1, 3))]


class Bilinear(nn.Module):
    """loss_i = a_i^T W b_i + c_i^T table[1, 3] b_i + d_i^T other b_i (``other`` is no block)."""

    def __init__(self):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.weight = nn.Parameter(torch.randn(4, 3, generator=generator))
        self.table = nn.Parameter(torch.randn(5, 3, generator=generator))
        self.other = nn.Parameter(torch.randn(2, 3, generator=generator))


def _losses(model: Bilinear, a, b, c, d):
    def pair_losses(items: np.ndarray) -> torch.Tensor:
        idx = torch.from_numpy(items)
        rows = model.table[[1, 3]]
        return (torch.einsum("np,pq,nq->n", a[idx], model.weight, b[idx])
                + torch.einsum("np,pq,nq->n", c[idx], rows, b[idx])
                + torch.einsum("np,pq,nq->n", d[idx], model.other, b[idx]))
    return pair_losses


def _per_pair(model, pair_losses, n) -> dict[str, torch.Tensor]:
    """The reference: G per block, one autograd call per pair."""
    columns = {"weight": [], "table[1,3]": []}
    for i in range(n):
        loss = pair_losses(np.array([i]))[0]
        gw, gt = torch.autograd.grad(loss, [model.weight, model.table])
        columns["weight"].append(gw.reshape(-1))
        columns["table[1,3]"].append(gt[[1, 3]].reshape(-1))
    return {k: torch.stack(v, dim=1) for k, v in columns.items()}


def _data(n, seed=0, rank=None):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, 4, generator=g)
    if rank is not None:  # a_i in a rank-dimensional subspace, b_i fixed: G has rank <= rank per block
        a = torch.randn(n, rank, generator=g) @ torch.randn(rank, 4, generator=g)
    b = torch.randn(n, 3, generator=g) if rank is None else torch.randn(1, 3, generator=g).repeat(n, 1)
    c = torch.randn(n, 2, generator=g) if rank is None else a[:, :2]
    return a, b, c, torch.randn(n, 2, generator=g)


def test_the_sketch_is_the_per_pair_gradients_times_omega_across_chunks():
    model = Bilinear()
    model.other.requires_grad_(False)  # a frozen parameter must stay frozen (a frozen backbone under LoRA)
    n = 150  # three chunks of pairs
    losses = _losses(model, *_data(n))
    omega = sketch_matrix(n, 4, torch.Generator().manual_seed(1))
    assert omega.shape == (n, 4 + OVERSAMPLING)
    sketch = sketch_gradients(model, BLOCKS, losses, np.arange(n), omega)
    reference = _per_pair(model, losses, n)
    assert set(sketch) == set(reference)  # ``other`` is no block: no sketch for it
    for name, g in reference.items():
        torch.testing.assert_close(sketch[name], g @ omega, rtol=1e-4, atol=1e-4)
    # requires_grad is restored: the blocks' parameters trainable, the frozen one frozen
    assert model.weight.requires_grad and model.table.requires_grad and not model.other.requires_grad


def test_with_few_pairs_the_sketch_is_exactly_the_per_pair_gradients():
    model = Bilinear()
    n = 5
    omega = sketch_matrix(n, 8, torch.Generator().manual_seed(1))
    torch.testing.assert_close(omega, torch.eye(n))
    losses = _losses(model, *_data(n))
    sketch = sketch_gradients(model, BLOCKS, losses, np.arange(n), omega)
    for name, g in _per_pair(model, losses, n).items():
        torch.testing.assert_close(sketch[name], g, rtol=1e-5, atol=1e-5)


def test_a_low_rank_gradient_span_is_found_exactly_from_many_pairs():
    model = Bilinear()
    n = 200
    losses = _losses(model, *_data(n, seed=3, rank=2))
    omega = sketch_matrix(n, 8, torch.Generator().manual_seed(2))
    sketch = sketch_gradients(model, BLOCKS, losses, np.arange(n), omega)
    for name, g in _per_pair(model, losses, n).items():
        exact = scipy.linalg.orth(g.double().numpy(), rcond=1e-5)  # float32 gradients
        found = orthonormal_basis(sketch[name], energy=0.999, rank_cap=8).double().numpy()
        assert found.shape[1] == exact.shape[1] <= 2
        np.testing.assert_allclose(found @ found.T, exact @ exact.T, atol=1e-4)


def test_the_sketch_keeps_almost_all_the_energy_the_exact_leading_directions_keep():
    """A full-rank G with a decaying spectrum: the sketched rank-k basis captures nearly what the top k
    singular vectors capture (Halko et al.'s bound), and far more than k random directions (the control). The
    estimate is one-pass (no power iteration): on a flatter spectrum it keeps less, so only this regime is
    asserted."""
    rng = np.random.default_rng(0)
    d, n, k = 300, 400, 4
    u = scipy.linalg.orth(rng.normal(size=(d, d)))
    v = scipy.linalg.orth(rng.normal(size=(n, d)))
    g = torch.tensor(u @ np.diag(0.6 ** np.arange(d)) @ v.T)
    omega = sketch_matrix(n, k, torch.Generator().manual_seed(0)).double()
    found = orthonormal_basis(g @ omega, energy=0.999, rank_cap=k).double()  # as the guard calls it
    best = torch.linalg.svd(g, full_matrices=False)[1][:k].pow(2).sum()
    captured = (found.T @ g).pow(2).sum()
    random = torch.tensor(scipy.linalg.orth(rng.normal(size=(d, k))))
    assert captured >= 0.99 * best
    assert (random.T @ g).pow(2).sum() < 0.2 * best
