"""An erasure of an erased version: the parent's Forget Lock holds the erasure itself, and is carried forward.

The version being erased may hold a lock (every earlier erasure in its lineage, ``ForgetLock``). Before the
new version is verified, the erasure's own move (new weights minus the parent's) is filtered through that
lock exactly as a later round's client update would be, so an erasure cannot move the model back toward what
an earlier one excised. Where the filter changed anything, the method's own lock is re-anchored at the
published weights, and in samples scope the ledger debit counts only what stayed excised. The new version then
publishes the parent's layers and its own (``ForgetLock.chained``, in ``ease_engine.erasure``).
"""

from __future__ import annotations

from pathlib import Path

from ease_engine.federation.version import read_version_lock
from ease_engine.linalg.forget_lock import ForgetLock
from ease_engine.models.blocks import read_blocks, write_blocks
from ease_engine.unlearning import UnlearningContext, UnlearningError, UnlearningOutcome


def inherited_lock(version_dir: Path) -> ForgetLock | None:
    """The Forget Lock the version at ``version_dir`` holds (None if it holds none)."""
    try:
        return read_version_lock(version_dir)
    except ValueError as exc:
        raise UnlearningError(f"the Forget Lock of version {version_dir.name} cannot be read ({exc}); "
                              "restore the version from its signed copy") from None


def hold_earlier_erasures(context: UnlearningContext, outcome: UnlearningOutcome, lock: ForgetLock) -> int:
    """Filter the erasure's own move through the parent's ``lock`` (the module docstring); returns the lock's
    interventions (0: the move already kept clear of every earlier erasure's directions; the weights are then
    untouched). Blocks the lock left as they were keep their weights bit for bit.

    In samples scope, whatever the lock put back in a block that the excision debited (``ledger_debit``) is
    taken off the debit: the ledger then still counts, in the client's contribution, what remains in the
    weights. That attributes the lock's correction to the excision where both act on one block."""
    blocks = context.setup.blocks
    after = read_blocks(outcome.bundle.model, blocks)
    move = {name: after[name] - context.original_values[name] for name in after}
    held, counts = lock.apply_to_updates(move, theta_current=context.original_values)
    changed = {name for name, count in counts.items() if count}
    if not changed:
        return 0
    published = {name: (context.original_values[name] + held[name].to(after[name].dtype).reshape(after[name].shape)
                        if name in changed else after[name]) for name in after}
    write_blocks(outcome.bundle.model, blocks, published)
    for name in changed & set(outcome.ledger_debit or {}):
        put_back = (published[name] - after[name]).reshape(outcome.ledger_debit[name].shape)
        outcome.ledger_debit[name] = outcome.ledger_debit[name] - put_back.to(outcome.ledger_debit[name].dtype)
    return sum(counts.values())


__all__ = ["hold_earlier_erasures", "inherited_lock"]
