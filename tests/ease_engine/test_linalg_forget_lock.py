"""The direction-selective Forget Lock (EASE closure 3)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ease_engine.linalg import ForgetLock, LockedBlock
from ease_engine.linalg.forget_lock import MANIFEST_FILENAME, TENSORS_FILENAME

D = 20
DISPLACEMENT = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)


def _basis(seed: int = 0, d: int = D, q: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(d, q, generator=g, dtype=torch.float64))[0]


def _orthogonal_to(basis: torch.Tensor, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(basis.shape[0], generator=g, dtype=torch.float64)
    return v - basis @ (basis.T @ v)


def _lock(epsilon: float | None = None):
    e = _basis()
    g = torch.Generator().manual_seed(1)
    theta_before = torch.randn(D, generator=g, dtype=torch.float64)
    # the erasure moved theta along E by DISPLACEMENT, plus something outside span(E)
    theta_after = theta_before + e @ DISPLACEMENT + 0.3 * _orthogonal_to(e, 2)
    lock = ForgetLock(metadata={"version": "v7"})
    lock.add_block("text.layer0.lora_A", e, theta_before, theta_after, epsilon=epsilon)
    return lock, e, theta_before, theta_after


def test_block_records_displacement_and_anchor():
    lock, e, _, theta_after = _lock(epsilon=0.5)
    block = lock.block("text.layer0.lora_A")
    assert torch.allclose(block.displacement, DISPLACEMENT, atol=1e-12)
    assert torch.allclose(block.anchor, e.T @ theta_after, atol=1e-12)
    assert block.epsilon == 0.5 and block.rank == 3 and block.dim == D


def test_updates_back_toward_the_excised_knowledge_are_blocked():
    lock, e, _, _ = _lock()
    update = -0.7 * (e @ DISPLACEMENT)  # straight back along -d
    filtered, count = lock.apply("text.layer0.lora_A", update)
    assert count == 3
    assert torch.allclose(filtered, torch.zeros(D, dtype=torch.float64), atol=1e-12)
    # with an orthogonal part: only the E-component is removed
    side = _orthogonal_to(e, 3)
    filtered, count = lock.apply("text.layer0.lora_A", update + side)
    assert count == 3
    assert torch.allclose(filtered, side, atol=1e-12)


def test_orthogonal_updates_and_updates_along_d_pass_unchanged():
    lock, e, _, _ = _lock()
    side = _orthogonal_to(e, 4)
    filtered, count = lock.apply("text.layer0.lora_A", side)
    assert count == 0 and torch.allclose(filtered, side, atol=1e-12)
    along = 2.0 * (e @ DISPLACEMENT) + side
    filtered, count = lock.apply("text.layer0.lora_A", along)
    assert count == 0 and torch.allclose(filtered, along, atol=1e-12)


def test_mixed_update_only_loses_the_coordinates_that_point_back():
    lock, e, _, _ = _lock()
    coords = torch.tensor([-1.0, -1.0, 1.0], dtype=torch.float64)  # products with d: -1, +2, +0.5
    update = e @ coords + _orthogonal_to(e, 5)
    filtered, count = lock.apply("text.layer0.lora_A", update)
    assert count == 1
    assert torch.allclose(e.T @ filtered, torch.tensor([0.0, -1.0, 1.0], dtype=torch.float64), atol=1e-12)
    assert torch.allclose(filtered, update + e[:, 0], atol=1e-12)
    lock.apply("text.layer0.lora_A", -(e @ DISPLACEMENT))
    assert lock.interventions["text.layer0.lora_A"] == 1 + 3


def test_shape_and_dtype_of_the_update_are_kept():
    lock, e, _, _ = _lock()
    update = (-(e @ DISPLACEMENT) + _orthogonal_to(e, 6)).float().reshape(4, 5)
    filtered, count = lock.apply("text.layer0.lora_A", update)
    assert filtered.shape == (4, 5) and filtered.dtype == torch.float32 and count == 3
    assert torch.allclose(e.T @ filtered.reshape(-1).double(), torch.zeros(3, dtype=torch.float64), atol=1e-6)


def test_drift_bound_holds_over_many_rounds():
    epsilon = 0.3
    lock, e, _, theta_after = _lock(epsilon=epsilon)
    anchor = lock.block("text.layer0.lora_A").anchor
    g = torch.Generator().manual_seed(7)
    theta = theta_after.clone()
    total = 0
    for _ in range(100):
        update = 0.2 * torch.randn(D, generator=g, dtype=torch.float64)
        filtered, count = lock.apply_with_state("text.layer0.lora_A", update, theta)
        # outside span(E) the update is untouched
        assert torch.allclose(filtered - e @ (e.T @ filtered), update - e @ (e.T @ update), atol=1e-12)
        theta = theta + filtered
        total += count
        assert float((e.T @ theta - anchor).abs().max()) <= epsilon + 1e-12
    assert total == lock.interventions["text.layer0.lora_A"] > 0


def test_drift_bound_brings_a_state_outside_the_band_back_to_its_edge():
    lock, e, _, theta_after = _lock(epsilon=0.1)
    anchor = lock.block("text.layer0.lora_A").anchor
    theta = theta_after + e @ torch.tensor([0.5, 0.0, -0.05], dtype=torch.float64)  # coordinate 0 out
    filtered, count = lock.apply_with_state("text.layer0.lora_A", torch.zeros(D, dtype=torch.float64), theta)
    assert count == 1
    expected = anchor + torch.tensor([0.1, 0.0, -0.05], dtype=torch.float64)
    assert torch.allclose(e.T @ (theta + filtered), expected, atol=1e-12)


def test_without_epsilon_apply_with_state_equals_apply():
    lock, e, _, theta_after = _lock()
    update = torch.randn(D, generator=torch.Generator().manual_seed(8), dtype=torch.float64) * 5
    a, count_a = lock.apply("text.layer0.lora_A", update)
    b, count_b = lock.apply_with_state("text.layer0.lora_A", update, theta_after + 100 * e[:, 0])
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)  # two code paths: equal within rounding
    assert count_a == count_b


def test_empty_and_unknown_blocks():
    lock, _, _, _ = _lock()
    lock.add_block("vision.head", torch.zeros(6, 0), torch.zeros(6), torch.ones(6), epsilon=0.1)
    update = torch.arange(6.0)
    filtered, count = lock.apply_with_state("vision.head", update, torch.zeros(6))
    assert torch.equal(filtered, update) and count == 0
    with pytest.raises(KeyError):
        lock.apply("no.such.block", update)
    with pytest.raises(ValueError):
        lock.apply("vision.head", torch.zeros(7))
    with pytest.raises(ValueError):
        LockedBlock(torch.zeros(6, 2), torch.zeros(2), torch.zeros(3))


def test_apply_to_updates_passes_unlocked_blocks_through():
    lock, e, _, theta_after = _lock(epsilon=0.2)
    updates = {"text.layer0.lora_A": -(e @ DISPLACEMENT), "frozen.bias": torch.ones(3)}
    filtered, counts = lock.apply_to_updates(updates, theta_current={"text.layer0.lora_A": theta_after})
    assert counts == {"text.layer0.lora_A": 3}
    assert torch.equal(filtered["frozen.bias"], torch.ones(3))
    assert torch.allclose(filtered["text.layer0.lora_A"], torch.zeros(D, dtype=torch.float64), atol=1e-12)


def test_save_and_load_round_trip(tmp_path):
    lock, e, _, theta_after = _lock(epsilon=0.25)
    lock.add_block("vision.proj", torch.zeros(6, 0), torch.zeros(6), torch.ones(6))
    lock.add_block("text.layer1.lora_B", _basis(9, d=12, q=2).float(), torch.zeros(12), torch.ones(12))
    manifest_path = lock.save(tmp_path / "lock")
    assert manifest_path.name == MANIFEST_FILENAME
    assert sorted(p.name for p in (tmp_path / "lock").iterdir()) == sorted(
        [MANIFEST_FILENAME, TENSORS_FILENAME]
    )
    assert not (tmp_path / "lock" / TENSORS_FILENAME).read_bytes().startswith(b"\x80")  # not a pickle

    loaded = ForgetLock.load(tmp_path / "lock")
    assert loaded.block_names == lock.block_names and loaded.metadata == {"version": "v7"}
    assert loaded.tolerance == lock.tolerance
    for name in lock.block_names:
        a, b = lock.block(name), loaded.block(name)
        assert torch.equal(a.basis, b.basis) and a.basis.dtype == b.basis.dtype
        assert torch.equal(a.displacement, b.displacement) and torch.equal(a.anchor, b.anchor)
        assert a.epsilon == b.epsilon
    update = torch.randn(D, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    # the stored tensors are bit-equal (serialisation is exact); the two projections are separate float64
    # computations, which BLAS libraries (MKL on AMD) need not round identically: equal within tolerance
    torch.testing.assert_close(
        lock.apply_with_state("text.layer0.lora_A", update, theta_after)[0],
        loaded.apply_with_state("text.layer0.lora_A", update, theta_after)[0], rtol=1e-12, atol=1e-12,
    )


def test_load_rejects_tampered_tensors(tmp_path):
    lock, _, _, _ = _lock()
    lock.save(tmp_path)
    manifest = json.loads((tmp_path / MANIFEST_FILENAME).read_text())
    manifest["tensors_sha256"] = "0" * 64
    (tmp_path / MANIFEST_FILENAME).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="checksum"):
        ForgetLock.load(tmp_path)


def test_rounding_is_not_an_intervention_but_a_small_real_step_back_is():
    """The default tolerance is the update's own precision: a float32 update orthogonal to E up to rounding
    passes untouched; one with a real (1e-4 relative) component back toward the excised knowledge does not."""
    gen = torch.Generator().manual_seed(0)
    d = 4096
    e = torch.linalg.qr(torch.randn(d, 3, generator=gen, dtype=torch.float64))[0]
    lock = ForgetLock()
    theta_before = torch.zeros(d, dtype=torch.float64)
    lock.add_block("w", e, theta_before, theta_before - e @ torch.ones(3, dtype=torch.float64))  # moved along -E
    orthogonal = torch.randn(d, generator=gen, dtype=torch.float64)
    orthogonal = (orthogonal - e @ (e.T @ orthogonal)).float()  # orthogonal to E, then rounded to float32
    _, count = lock.apply("w", orthogonal)
    assert count == 0
    back = orthogonal + 1e-4 * float(orthogonal.norm()) * e[:, 0].float()  # points back along +E
    filtered, count = lock.apply("w", back)
    assert count == 1 and abs(float(e[:, 0].float() @ filtered)) < 1e-4 * float(orthogonal.norm()) / 10


# -- a version erased from an erased version: both erasures' layers ------------------------------------------


def _layer(basis: torch.Tensor, displacement: torch.Tensor, metadata: dict, epsilon: float | None = None):
    lock = ForgetLock(metadata=metadata)
    lock.set_block("w", LockedBlock(basis, displacement, torch.zeros(basis.shape[1], dtype=torch.float64), epsilon))
    return lock


def _violations(lock: ForgetLock, update: torch.Tensor) -> float:
    """The largest step back toward any layer's excised knowledge: max over layers and i of -sign(d_i) a_i."""
    worst = 0.0
    for block in lock.layers("w"):
        coords = block.basis.to(torch.float64).T @ update.to(torch.float64)
        worst = max(worst, float((-torch.sign(block.displacement) * coords).max()))
    return worst


def _nearest_allowed(lock: ForgetLock, update: torch.Tensor, theta: torch.Tensor | None = None,
                     slack: float = 0.0) -> torch.Tensor:
    """Brute force over active sets: the nearest update with sign(d_i) a_i >= -slack for every layer's
    coordinates and, with ``theta``, every band |E^T (theta + x) - c0| <= epsilon. Each subset of the
    constraints is tried as equalities (the projection onto that affine set); the nearest feasible one wins."""
    from itertools import combinations

    rows, bounds = [], []
    for b in lock.layers("w"):
        e = b.basis.to(torch.float64)
        rows.append(torch.sign(b.displacement)[:, None] * e.T)
        bounds.append(torch.full((b.rank,), -slack, dtype=torch.float64))
        if theta is not None and b.epsilon is not None:
            position = e.T @ theta
            rows += [e.T, -e.T]
            bounds += [b.anchor - b.epsilon - position, position - b.anchor - b.epsilon]
    g, h = torch.cat(rows).numpy(), torch.cat(bounds).numpy()
    u = update.to(torch.float64).numpy()
    best, best_distance = None, np.inf
    for size in range(len(h) + 1):
        for active in combinations(range(len(h)), size):
            ga, ha = g[list(active)], h[list(active)]
            x = u - ga.T @ np.linalg.pinv(ga @ ga.T) @ (ga @ u - ha) if size else u
            if np.all(g @ x - h >= -1e-9) and np.allclose(ga @ x, ha, atol=1e-9):
                distance = np.linalg.norm(x - u)
                if distance < best_distance:
                    best, best_distance = x, distance
    assert best is not None, "no update satisfies every constraint"
    return torch.from_numpy(best)


def test_a_chained_lock_keeps_the_earlier_erasures_layers_in_order():
    first = _layer(_basis(1, d=8, q=2), torch.tensor([1.0, -1.0], dtype=torch.float64), {"client": "0"})
    second = _layer(_basis(2, d=8, q=3), torch.tensor([0.5, 0.5, -2.0], dtype=torch.float64), {"client": "3"})
    chained = ForgetLock.chained(first, second)
    assert chained.erasures == [{"client": "0"}, {"client": "3"}] and chained.metadata == {"client": "3"}
    assert [b.rank for b in chained.layers("w")] == [2, 3] and chained.block("w").rank == 3
    assert ForgetLock.chained(None, second) is second and ForgetLock.chained(first, None) is first
    assert ForgetLock.chained(None, None) is None
    assert first.erasures == [{"client": "0"}] and len(first.layers("w")) == 1, "the inputs are unchanged"


def test_chained_layers_filter_to_the_nearest_update_that_moves_toward_no_erasure():
    """Overlapping (non-orthogonal) layers: one pass of each layer's filter in turn lets the second put back
    what the first removed; the lock's answer is the brute-force nearest allowed update."""
    gen = torch.Generator().manual_seed(5)
    shared = torch.linalg.qr(torch.randn(6, 3, generator=gen, dtype=torch.float64))[0]
    first_basis = shared[:, :2]
    second_basis = torch.linalg.qr(torch.stack([shared[:, 0] + shared[:, 2], shared[:, 1] - 0.5 * shared[:, 2]], 1))[0]
    first = _layer(first_basis, torch.tensor([1.0, 1.0], dtype=torch.float64), {"erasure": "1"})
    second = _layer(second_basis, torch.tensor([-1.0, 1.0], dtype=torch.float64), {"erasure": "2"})
    chained = ForgetLock.chained(first, second)
    for seed in range(5):
        update = torch.randn(6, generator=torch.Generator().manual_seed(100 + seed), dtype=torch.float64)
        filtered, count = chained.apply("w", update)
        assert _violations(chained, filtered) <= 1e-9
        torch.testing.assert_close(filtered, _nearest_allowed(chained, update), atol=1e-6, rtol=0)
        assert (count > 0) == (_violations(chained, update) > 1e-9)
    one_pass = second.apply("w", first.apply("w", -shared[:, 0] - shared[:, 1] + shared[:, 2])[0])[0]
    assert _violations(chained, one_pass) > 1e-3, "the construction must defeat a single pass"


def test_nearly_parallel_layers_let_no_float32_update_step_back():
    """Two erasures' directions 0.05 rad apart, displacements of opposite sign: an alternating-projection
    scheme converges slowly here; the lock's answer is the exact nearest allowed update (no step back beyond
    the float32 rounding of the result)."""
    from ease_engine.linalg.forget_lock import ROUNDING_ULPS

    gen = torch.Generator().manual_seed(11)
    pair = torch.linalg.qr(torch.randn(64, 2, generator=gen, dtype=torch.float64))[0]
    near = np.cos(0.05) * pair[:, :1] + np.sin(0.05) * pair[:, 1:]
    first = _layer(pair[:, :1].float(), torch.tensor([1.0], dtype=torch.float64), {})
    second = _layer(near.float(), torch.tensor([-1.0], dtype=torch.float64), {})
    chained = ForgetLock.chained(first, second)
    tolerance = ROUNDING_ULPS * torch.finfo(torch.float32).eps
    for seed in range(20):
        update = torch.randn(64, generator=torch.Generator().manual_seed(seed)).float()
        filtered, _ = chained.apply("w", update)
        assert filtered.dtype == torch.float32
        assert _violations(chained, filtered.double()) <= tolerance * float(update.norm())  # float32 rounding only
        torch.testing.assert_close(filtered.double(), _nearest_allowed(chained, update), atol=1e-5, rtol=0)


def test_bands_of_several_layers_give_the_brute_force_nearest_update():
    basis = _basis(4, d=9, q=3)
    turn = torch.tensor([[0.8, 0.6], [-0.6, 0.8]], dtype=torch.float64)
    first = _layer(basis[:, :2], torch.tensor([1.0, -1.0], dtype=torch.float64), {}, epsilon=0.4)
    second = _layer(basis[:, 1:3] @ turn, torch.tensor([1.0, 1.0], dtype=torch.float64), {}, epsilon=0.3)
    chained = ForgetLock.chained(first, second)
    for seed in range(5):
        gen = torch.Generator().manual_seed(40 + seed)
        update, theta = 2 * torch.randn(9, generator=gen, dtype=torch.float64), torch.randn(9, generator=gen,
                                                                                           dtype=torch.float64) * 0.1
        filtered, _ = chained.apply_with_state("w", update, theta)
        torch.testing.assert_close(filtered, _nearest_allowed(chained, update, theta), atol=1e-6, rtol=0)


def test_bands_no_update_can_satisfy_fail_closed():
    """Two erasures hold the same direction in disjoint bands: no update satisfies both, so the update loses
    every component along the locked directions (and keeps the rest)."""
    basis = _basis(6, d=7, q=2)
    first = _layer(basis[:, :1], torch.tensor([1.0], dtype=torch.float64), {}, epsilon=0.1)
    second = _layer(basis[:, :1], torch.tensor([1.0], dtype=torch.float64), {}, epsilon=0.1)
    second.block("w").anchor.fill_(1.0)  # [0.9, 1.1] against the first's [-0.1, 0.1]
    chained = ForgetLock.chained(first, second)
    side = basis[:, 1]
    filtered, count = chained.apply_with_state("w", 0.5 * basis[:, 0] + side, torch.zeros(7, dtype=torch.float64))
    torch.testing.assert_close(filtered, side, atol=1e-12, rtol=0)
    assert count == 2 and chained.failed_closed == {"w": 1}
    chained.apply("w", 0.5 * basis[:, 0] + side)  # without the state the bands do not apply: nothing conflicts
    assert chained.failed_closed == {"w": 1}


def test_orthogonal_layers_act_as_each_layer_alone():
    basis = _basis(7, d=10, q=4)
    first = _layer(basis[:, :2], torch.tensor([1.0, -1.0], dtype=torch.float64), {})
    second = _layer(basis[:, 2:], torch.tensor([2.0, 1.0], dtype=torch.float64), {})
    chained = ForgetLock.chained(first, second)
    update = -(basis @ torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=torch.float64))  # back along both erasures
    filtered, count = chained.apply("w", update)
    expected = basis[:, 3]  # a_3 = +1 with d_3 = 1 > 0: kept; the other three point back: removed
    torch.testing.assert_close(filtered, expected, atol=1e-12, rtol=0)
    assert count == 3


def test_chained_drift_bands_hold_for_every_layer():
    basis = _basis(8, d=10, q=4)
    first = _layer(basis[:, :2], torch.tensor([1.0, 1.0], dtype=torch.float64), {}, epsilon=0.1)
    second = _layer(basis[:, 1:3] @ torch.tensor([[0.6, -0.8], [0.8, 0.6]], dtype=torch.float64),
                    torch.tensor([1.0, 1.0], dtype=torch.float64), {}, epsilon=0.1)
    chained = ForgetLock.chained(first, second)
    theta = torch.zeros(10, dtype=torch.float64)
    update = basis @ torch.tensor([3.0, 2.0, 1.0, 5.0], dtype=torch.float64)  # far along every direction
    filtered, _ = chained.apply_with_state("w", update, theta)
    for block in chained.layers("w"):
        assert float((block.basis.T @ (theta + filtered) - block.anchor).abs().max()) <= 0.1 + 1e-6
    torch.testing.assert_close(basis[:, 3] @ filtered, torch.tensor(5.0, dtype=torch.float64))  # unlocked: kept


def test_a_chained_lock_round_trips_and_a_single_erasure_lock_of_the_first_format_still_loads(tmp_path):
    first = _layer(_basis(1, d=8, q=2), torch.tensor([1.0, -1.0], dtype=torch.float64), {"client": "0"}, 0.3)
    second = _layer(_basis(2, d=8, q=3), torch.tensor([0.5, 0.5, -2.0], dtype=torch.float64), {"client": "3"})
    chained = ForgetLock.chained(first, second)
    chained.save(tmp_path / "chained")
    loaded = ForgetLock.load(tmp_path / "chained")
    assert loaded.erasures == chained.erasures
    for a, b in zip(chained.layers("w"), loaded.layers("w"), strict=True):
        assert torch.equal(a.basis, b.basis) and torch.equal(a.displacement, b.displacement) and a.epsilon == b.epsilon
    update = torch.randn(8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    torch.testing.assert_close(chained.apply("w", update)[0], loaded.apply("w", update)[0], atol=1e-12, rtol=0)

    first.save(tmp_path / "v1")  # one erasure: written in the first format, which older readers still read
    manifest = json.loads((tmp_path / "v1" / MANIFEST_FILENAME).read_text())
    assert manifest["format"] == "lethe.forget_lock/1" and "erasures" not in manifest
    assert all("erasure" not in entry for entry in manifest["blocks"])
    old = ForgetLock.load(tmp_path / "v1")
    assert old.erasures == [{"client": "0"}] and len(old.layers("w")) == 1


def _tamper(directory, edit):
    manifest = json.loads((directory / MANIFEST_FILENAME).read_text())
    edit(manifest)
    (directory / MANIFEST_FILENAME).write_text(json.dumps(manifest))


@pytest.mark.parametrize(("edit", "message"), [
    (lambda m: m["blocks"].append(dict(m["blocks"][0])), "stored twice"),
    (lambda m: m["blocks"][0].update(erasure=1.7), "integer index"),
    (lambda m: m["blocks"][0].update(erasure=5), "integer index"),
    (lambda m: m.update(blocks=None), "'blocks' must be a list"),
    (lambda m: m.update(erasures=["x"]), "'erasures'"),
    (lambda m: m["blocks"][0].update(epsilon="abc"), "'epsilon'"),
    (lambda m: m.update(tensors_file="../../elsewhere.safetensors"), "tensors_file"),
    (lambda m: m["blocks"][0].update(key="block99"), "tensors are missing"),
    (lambda m: m.update(format="lethe.forget_lock/9"), "unknown format"),
    (lambda m: m["blocks"].pop(), "does not list"),
    (lambda m: m.update(blocks=[]), "does not list"),
    (lambda m: m["blocks"][0].update(rank=7), "stored shape"),
    (lambda m: m["blocks"][0].update(epsilon=int("1" + "0" * 400)), "'epsilon'"),
    (lambda m: m.update(tolerance="x"), "'tolerance'"),
])
def test_a_malformed_layered_lock_is_refused_by_name(tmp_path, edit, message):
    first = _layer(_basis(1, d=8, q=2), torch.tensor([1.0, -1.0], dtype=torch.float64), {"client": "0"})
    second = _layer(_basis(2, d=8, q=1), torch.tensor([1.0], dtype=torch.float64), {"client": "3"})
    ForgetLock.chained(first, second).save(tmp_path)
    _tamper(tmp_path, edit)
    with pytest.raises(ValueError, match=message):
        ForgetLock.load(tmp_path)


def test_corrupt_tensors_with_a_matching_checksum_are_a_value_error(tmp_path):
    import hashlib

    _lock()[0].save(tmp_path)
    garbage = b"\x10\x00\x00\x00\x00\x00\x00\x00{not safetensors}"
    (tmp_path / TENSORS_FILENAME).write_bytes(garbage)
    _tamper(tmp_path, lambda m: m.update(tensors_sha256=hashlib.sha256(garbage).hexdigest()))
    with pytest.raises(ValueError, match="cannot be read"):
        ForgetLock.load(tmp_path)


def test_a_layer_of_another_size_is_refused():
    lock = _layer(_basis(1, d=8, q=2), torch.tensor([1.0, -1.0], dtype=torch.float64), {})
    other = _layer(_basis(1, d=9, q=2), torch.tensor([1.0, -1.0], dtype=torch.float64), {})
    with pytest.raises(ValueError, match="another size"):
        ForgetLock.chained(lock, other)


def test_the_same_lock_chained_twice_is_one_layer_and_a_band_wins_as_with_one_layer():
    """Loading a version's lock and passing it again adds nothing; two different layers whose band and
    direction rules conflict resolve it as one layer does (the band wins), instead of freezing the block."""
    first = _layer(_basis(1, d=8, q=1), torch.tensor([1.0], dtype=torch.float64), {"client": "0"}, epsilon=0.1)
    twice = ForgetLock.chained(first, first)
    assert twice.erasures == first.erasures and len(twice.layers("w")) == 1

    e = first.block("w").basis
    other = _layer(_basis(3, d=8, q=1), torch.tensor([1.0], dtype=torch.float64), {"client": "5"})
    chained = ForgetLock.chained(first, other)
    theta = -0.5 * e[:, 0]  # outside the first band, on the excised side (against d)
    zero = torch.zeros(8, dtype=torch.float64)
    alone, _ = first.apply_with_state("w", zero, theta)
    both, _ = chained.apply_with_state("w", zero, theta)
    assert float(e[:, 0] @ alone) == pytest.approx(0.4)  # back to the band's edge
    assert float(e[:, 0] @ both) == pytest.approx(0.4, abs=1e-9) and not chained.failed_closed


@pytest.mark.parametrize(("part", "value", "message"), [
    ("displacement", float("nan"), "NaN"),
    ("anchor", float("inf"), "NaN or infinite"),
    ("basis", 1000.0, "orthonormal"),
])
def test_a_block_with_non_finite_values_or_a_non_orthonormal_basis_is_refused(part, value, message):
    block = _lock()[0].block("text.layer0.lora_A")
    fields = {"basis": block.basis.clone(), "displacement": block.displacement.clone(), "anchor": block.anchor.clone()}
    fields[part] = fields[part] * value if part == "basis" else torch.full_like(fields[part], value)
    with pytest.raises(ValueError, match=message):
        LockedBlock(**fields)
    with pytest.raises(ValueError, match="floating"):
        LockedBlock(block.basis.to(torch.int64), block.displacement, block.anchor)


def test_a_round_reports_per_client_update_whether_the_lock_failed_closed():
    """The aggregation counts, per client update, the blocks whose layers' bands conflicted (the history
    line and the Flower metric ``lock-failed-closed`` sum it); a lock whose bands agree reports none."""
    from ease_engine.federation.fedavg import RoundAggregate

    basis = _basis(6, d=7, q=2)
    start = {"w": torch.zeros(7), "free": torch.zeros(3)}
    update = {"w": 0.5 * basis[:, 0].float(), "free": torch.ones(3)}

    def aggregate(lock):
        round_aggregate = RoundAggregate(start, {0: 10, 1: 30}, 5, None, lock)
        return [round_aggregate.add(k, {n: start[n] + v for n, v in update.items()}) for k in (0, 1)]

    first = _layer(basis[:, :1], torch.tensor([1.0], dtype=torch.float64), {"erasure": "1"}, epsilon=0.1)
    second = _layer(basis[:, :1], torch.tensor([1.0], dtype=torch.float64), {"erasure": "2"}, epsilon=0.1)
    second.block("w").anchor.fill_(0.15)  # [0.05, 0.25] overlaps the first's [-0.1, 0.1]: both hold at once
    agreeing = ForgetLock.chained(first, second)
    assert len(agreeing.layers("w")) == 2
    assert [s["lock_failed_closed"] for s in aggregate(agreeing)] == [0, 0]
    second.block("w").anchor.fill_(1.0)  # [0.9, 1.1] against the first's [-0.1, 0.1]: no value satisfies both
    conflicting = ForgetLock.chained(first, second)
    stats = aggregate(conflicting)
    assert [s["lock_failed_closed"] for s in stats] == [1, 1] and conflicting.failed_closed == {"w": 2}
    assert [s["weight"] for s in stats] == [0.25, 0.75]
    assert [s["lock_failed_closed"] for s in aggregate(None)] == [0, 0]
