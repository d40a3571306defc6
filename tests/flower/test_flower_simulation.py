"""Flower's Simulation Engine (clients as virtual SuperNodes in Ray actors) end to end:
the built-in simulation's weights and ledger; an erasure from the result; and, continued from an
erased version, a run that never moves the Forget Lock's directions back (a run without the lock does).

Both tests start Ray (about 20 s on 2 busy cores before the first round) and are marked slow.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("flwr", reason="flwr is not installed (pip install -e '.[flower]'): Flower integration untested")
pytest.importorskip("ray", reason="ray is not installed (pip install -e '.[flower]'): the Simulation Engine needs it")

import torch  # noqa: E402

from ease_engine.erasure import erase  # noqa: E402
from ease_engine.federation.ledger import Ledger  # noqa: E402
from ease_engine.federation.update_store import load_rounds  # noqa: E402
from ease_engine.linalg.forget_lock import ForgetLock  # noqa: E402
from ease_engine.models.blocks import read_blocks  # noqa: E402
from ease_engine.models.version_io import load_version  # noqa: E402
from ease_engine.unlearning import ErasureTarget  # noqa: E402
from ease_engine.verification.gates import GateConfig  # noqa: E402
from lethe_flower.run import run_flower_federation  # noqa: E402
from tests.federation_helpers import gate_federation_config  # noqa: E402
from tests.flower.flower_helpers import (  # noqa: E402
    WEIGHT_TOLERANCE,
    max_ledger_difference,
    max_weight_difference,
    run_loopback,
)

LOOSE = GateConfig()  # the erasures below publish whatever the verdict (publish_on_failure)
BACKWARD_TOLERANCE = 1e-6  # |E^T step| below this is float32 rounding of theta, not movement


@pytest.mark.slow
def test_simulation_engine_matches_the_builtin_simulation_and_can_be_erased(tiny_version, tmp_path):
    config, builtin = tiny_version
    out = run_flower_federation(config, tmp_path / "flower", show_progress=False)
    weights, ledger = max_weight_difference(out, builtin), max_ledger_difference(out, builtin, _fingerprint(out))
    print(f"max |w_flower - w_builtin| = {weights:.3g}; max ledger difference = {ledger:.3g}")
    assert weights <= WEIGHT_TOLERANCE and ledger <= WEIGHT_TOLERANCE
    assert json.loads((out / "metrics.json").read_text()) == json.loads((builtin / "metrics.json").read_text())
    assert json.loads((out / "metadata.json").read_text())["engine"] == "flower"

    result = erase(out, ErasureTarget(0), "ease", None, tmp_path / "erased", gates=LOOSE, publish_on_failure=True)
    assert result.version_dir is not None and (result.version_dir / "forget_lock" / "forget_lock.json").is_file()
    clients = json.loads((result.version_dir / "clients.json").read_text())["clients"]
    assert clients["0"]["erased"] is True


def _fingerprint(version):
    return json.loads((version / "metadata.json").read_text())["model_fingerprint"]


def _locked_blocks(version, names):
    """The ParameterBlocks (from the version's ledger) named ``names``."""
    return [b for b in Ledger.load(version / "ledger").blocks if b.name in names]


def _trajectory(version, names) -> list[dict[str, torch.Tensor]]:
    """The global blocks ``names`` at the start of every stored round, then the version's final ones."""
    starts = [r.global_start for r in load_rounds(version / "updates")]
    bundle, _ = load_version(version)
    return starts + [read_blocks(bundle.model, _locked_blocks(version, names))]


def backward_moves(lock: ForgetLock, theta_erased: dict, trajectory: list[dict]) -> list[float]:
    """Per round, the largest step back toward the excised side: max_i -sign(d_i) e_i^T (theta_t - theta_erased),
    over every locked direction (every erasure's layer) with d_i != 0 (positive: the model moved back into the
    erased knowledge)."""
    worst = []
    for theta in trajectory[1:]:
        back = 0.0
        for name, block in ((n, b) for n in lock.block_names for b in lock.layers(n)):
            e = block.basis.to(torch.float64)
            sign = torch.sign(block.displacement.to(torch.float64))
            coords = e.T @ (theta[name].to(torch.float64) - theta_erased[name].to(torch.float64))
            moved_back = -(sign * coords)[sign != 0]
            if moved_back.numel():
                back = max(back, float(moved_back.max()))
        worst.append(back)
    return worst


@pytest.mark.slow
def test_continued_run_never_moves_the_locked_directions_back(gate_versions, tmp_path):
    original, _ = gate_versions
    erased = erase(original, ErasureTarget(0), "ease", None, tmp_path / "erased", gates=LOOSE, publish_on_failure=True)
    erased_dir = erased.version_dir
    lock = ForgetLock.load(erased_dir / "forget_lock")
    assert sum(lock.block(n).rank for n in lock.block_names) > 0, "EASE published an empty lock"
    config = gate_federation_config()
    config.training.rounds, config.training.lr, config.training.lr_min = 4, 4e-3, 4e-3  # the same config, 4 rounds more
    config.ledger.store_updates_every = 1  # every round's start is kept: the trajectory below

    locked = run_flower_federation(config, tmp_path / "locked", continue_from=erased_dir, show_progress=False)
    control = tmp_path / "control"
    run_loopback(config, control, continue_from=erased_dir, lock=ForgetLock())  # an empty lock: nothing applied

    names = set(lock.block_names)
    bundle, _ = load_version(erased_dir)
    theta_erased = read_blocks(bundle.model, _locked_blocks(erased_dir, names))
    locked_trajectory, control_trajectory = _trajectory(locked, names), _trajectory(control, names)
    for trajectory in (locked_trajectory, control_trajectory):  # both start from the erased model
        assert all(torch.equal(trajectory[0][n], theta_erased[n]) for n in names)
    locked_back = backward_moves(lock, theta_erased, locked_trajectory)
    control_back = backward_moves(lock, theta_erased, control_trajectory)
    history = json.loads((locked / "history.json").read_text())
    interventions = [h["lock_interventions"] for h in history]
    print(f"largest step back per round: locked {np.round(locked_back, 8).tolist()}, "
          f"control {np.round(control_back, 8).tolist()}; lock interventions per round {interventions}")

    assert [h["participants"] for h in history] == [[1, 2]] * 4, "the erased client must not train again"
    carried = ForgetLock.load(locked / "forget_lock")  # the continued version keeps the lock for the next run
    assert carried.block_names == lock.block_names and carried.erasures == lock.erasures
    assert all(torch.equal(carried.block(n).basis, lock.block(n).basis) for n in names)
    assert sum(interventions) > 0
    assert max(locked_back) <= BACKWARD_TOLERANCE
    assert max(control_back) > 100 * BACKWARD_TOLERANCE, "without the lock the federation should drift back"
    rounds_before = gate_federation_config().training.rounds
    assert history[0]["round"] == json.loads((locked / "metadata.json").read_text())["first_round"] == rounds_before
