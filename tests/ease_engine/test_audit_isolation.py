"""No unlearning method can read the audit split: it is not reachable from what a method receives, and a
method that tried to load the federation's data again would be caught."""

from __future__ import annotations

import gc

import numpy as np
import pytest

from ease_engine.data.dataset import CaptionDataset
from ease_engine.federation.config import load_federation_data
from ease_engine.unlearning import METHODS, ErasureTarget, UnlearningContext

QUICK = {
    "ease": {"steps": 2}, "finetune": {"rounds": 1}, "pga": {"steps": 2, "repair_rounds": 0},
    "federaser": {}, "sfu": {"steps": 2, "repair_rounds": 0}, "multidelete": {"steps": 2},
    "retrain": {}, "noop": {}, "perturb": {},
}


def _reachable_datasets(root, limit: int = 200_000) -> list[CaptionDataset]:
    """Every CaptionDataset reachable from ``root`` through object references (breadth first)."""
    seen, queue, found = {id(root)}, [root], []
    while queue and len(seen) < limit:
        current = queue.pop(0)
        if isinstance(current, CaptionDataset):
            found.append(current)
        if isinstance(current, np.ndarray | str | bytes | int | float):
            continue
        for ref in gc.get_referents(current):
            if id(ref) not in seen and not isinstance(ref, type):
                seen.add(id(ref))
                queue.append(ref)
    return found


def test_audit_pairs_are_disjoint_from_what_methods_see(tiny_version):
    config, original = tiny_version
    data = load_federation_data(config)
    audit = set(data.audit.pair_ids)
    assert audit and not audit & set(data.train.pair_ids) and not audit & set(data.calibration.pair_ids)
    context = UnlearningContext.load(original)
    reachable = _reachable_datasets(context)
    assert reachable, "the walk sees the context's data sets"
    leaks = [d.name for d in reachable if audit & set(d.pair_ids)]
    assert leaks == [], f"audit pairs reachable from the method's context: {leaks}"


def test_the_walk_would_find_an_audit_handle(tiny_version):
    """Negative control: a context that did carry the audit split is caught."""
    config, original = tiny_version
    context = UnlearningContext.load(original)
    context.setup.calibration = load_federation_data(config).audit  # a leak, planted
    audit = set(load_federation_data(config).audit.pair_ids)
    assert any(audit & set(d.pair_ids) for d in _reachable_datasets(context))


@pytest.mark.parametrize("method", sorted(QUICK))
def test_no_method_reloads_the_federation_data(tiny_version, method, monkeypatch):
    """A method that loaded the data again (and with it the audit split) fails loudly here."""
    _, original = tiny_version
    context = UnlearningContext.load(original)

    def forbidden(*_args, **_kwargs):
        raise AssertionError(f"{method} loaded the federation's data (the audit split included)")

    import ease_engine.federation.config as config_module
    import ease_engine.federation.data_cache as cache_module

    monkeypatch.setattr(config_module, "load_federation_data", forbidden)
    monkeypatch.setattr(cache_module, "load_federation_data", forbidden)
    spec = METHODS[method]
    assert set(QUICK) == set(METHODS), "every registered method is checked"
    spec.unlearn(context, ErasureTarget(0), spec.params.model_validate(QUICK[method]))
