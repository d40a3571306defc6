"""EASE's forget-gradient guard: the displacement stays off the directions that would teach the forget pairs
again, beside the excised ones (``EaseParams.guard_rank``)."""

import numpy as np
import pytest
import scipy.linalg
import torch

from ease_engine.models.blocks import read_blocks
from ease_engine.unlearning import ErasureTarget, UnlearningContext, ease, ease_guard
from ease_engine.unlearning.base import Cost
from ease_engine.unlearning.ease import EaseParams, _joined

FAST = {"steps": 3, "batch_size": 8, "retain_proxy_size": 16}


def test_joined_bases_span_both_and_are_orthonormal():
    rng = np.random.default_rng(0)
    a = scipy.linalg.orth(rng.normal(size=(12, 1)))
    b = scipy.linalg.orth(rng.normal(size=(12, 3)))
    joined = _joined({"w": torch.tensor(a), "only_a": torch.tensor(a)}, {"w": torch.tensor(b)})
    q = joined["w"].double().numpy()
    reference = scipy.linalg.orth(np.hstack([a, b]))  # brute force: the span of all columns
    np.testing.assert_allclose(q.T @ q, np.eye(4), atol=1e-6)
    np.testing.assert_allclose(q @ q.T, reference @ reference.T, atol=1e-6)
    np.testing.assert_allclose(joined["only_a"].double().numpy() @ joined["only_a"].double().numpy().T, a @ a.T,
                               atol=1e-6)


@pytest.fixture(scope="module")
def context(tiny_version):
    _, out = tiny_version
    return UnlearningContext.load(out)


def _run(context, monkeypatch, **params) -> dict:
    """EASE on client 0 with the guard's bases and the displacement's start and plan captured."""
    seen: dict = {}
    guard, displace = ease.forget_gradient_guard, ease.displace

    def capture_guard(*args, **kwargs):
        seen["guard"] = guard(*args, **kwargs)
        return seen["guard"]

    def capture_displace(bundle, anchor, setup, plan, *args):
        seen["start"], seen["plan"] = read_blocks(bundle.model, plan.blocks), plan
        return displace(bundle, anchor, setup, plan, *args)

    with monkeypatch.context() as patch:
        patch.setattr(ease, "forget_gradient_guard", capture_guard)
        patch.setattr(ease, "displace", capture_displace)
        seen["outcome"] = ease.unlearn(context, ErasureTarget(0), EaseParams(**FAST, **params))
    seen["after"] = read_blocks(seen["outcome"].bundle.model, seen["plan"].blocks)
    return seen


def _share_along(guard: dict[str, torch.Tensor], start: dict, after: dict) -> float:
    """The share of the displacement's move (all moving blocks together) along the guard's directions."""
    along = total = 0.0
    for name, g in guard.items():
        moved = (after[name] - start[name]).double()
        along += float((g.double().T @ moved).pow(2).sum())
        total += float(moved.pow(2).sum())
    assert total > 0, "the displacement did not move"
    return along / total


def test_the_guard_keeps_the_move_off_the_forget_gradients_and_the_lock_holds_only_the_excision(
        context, monkeypatch):
    guarded = _run(context, monkeypatch, guard_rank=2)
    guard = guarded["guard"]
    assert guard and all(0 < g.shape[1] <= 2 for g in guard.values())
    # only the blocks the displacement moves get a guard (frozen, wholly exclusive blocks do not)
    assert set(guard) <= {b.name for b in guarded["plan"].blocks}
    assert guarded["outcome"].details["guard"]["directions"] == sum(g.shape[1] for g in guard.values())
    assert _share_along(guard, guarded["start"], guarded["after"]) < 1e-8
    # the lock holds what was excised (one unit direction per block), not the guard's directions
    lock = guarded["outcome"].lock
    assert lock is not None and lock._erasure_blocks(0)
    assert all(block.basis.shape[1] == 1 for block in lock._erasure_blocks(0).values())

    # the negative control: the same displacement without the guard moves along those directions
    free = _run(context, monkeypatch)
    assert "guard" not in free["outcome"].details
    assert _share_along(guard, free["start"], free["after"]) > 1e-4


def test_the_guard_from_a_sample_of_pairs_sees_only_a_uniform_sample(context, monkeypatch):
    """The pairs that reach the model are the sample (not all pairs, not the first ones), and the cost counts
    them; a sample of every pair is the full guard."""
    target = ErasureTarget(0)
    blocks = context.setup.blocks
    forget = context.forget_items(target)
    assert len(forget) > 12
    seen: list[np.ndarray] = []
    sketch = ease_guard.sketch_gradients

    def record(model, blocks, pair_losses, items, omega):
        seen.append(np.asarray(items))
        return sketch(model, blocks, pair_losses, items, omega)

    monkeypatch.setattr(ease_guard, "sketch_gradients", record)
    few = Cost()
    sampled = ease_guard.forget_gradient_guard(context, context.fresh_bundle(), target, blocks, 2, 0, few, max_pairs=5)
    assert len(seen[0]) == 5 and set(seen[0]) <= set(forget)
    assert few.client_samples == 5 * 5  # five pairs, and with so few the sketch is the five gradients themselves
    ease_guard.forget_gradient_guard(context, context.fresh_bundle(), target, blocks, 2, 1, Cost(), max_pairs=5)
    draws = {tuple(seen[0]), tuple(seen[1])}
    assert len(draws) == 2 and tuple(forget[:5]) not in draws  # drawn with the seed, not the first pairs
    full = ease_guard.forget_gradient_guard(context, context.fresh_bundle(), target, blocks, 2, 0, Cost())
    every = ease_guard.forget_gradient_guard(context, context.fresh_bundle(), target, blocks, 2, 0, Cost(),
                                             max_pairs=len(forget))
    np.testing.assert_array_equal(seen[2], forget)
    assert sampled and full.keys() == every.keys()
    for name in full:
        torch.testing.assert_close(full[name], every[name])
    assert "logit_scale" not in full  # the temperature is no knowledge of the pairs


def test_guard_pairs_without_a_guard_is_rejected():
    with pytest.raises(ValueError, match="guard_rank"):
        EaseParams(guard_pairs=128)
    assert EaseParams(guard_rank=8, guard_pairs=128).guard_pairs == 128
