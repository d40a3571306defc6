"""The bench's reference cache: what a cached retrain reference was trained without is part of its path."""

import dataclasses

from lethe_bench import references
from lethe_bench.scenarios import SCENARIOS
from lethe_format import layout


def test_a_retrain_without_another_client_is_not_reused(tmp_path, monkeypatch):
    """Erasing another client of the same federation reuses the original but trains its own retrain; a cache
    keyed by the config alone would hand back the retrain without the first client."""
    trained = []

    def fake_run(config, out, show_progress=False, setup=None):
        trained.append((out.name, list(config.training.exclude_clients)))
        out.mkdir(parents=True)
        (out / layout.METRICS).write_text("{}")

    monkeypatch.setattr(references, "run_federation", fake_run)
    first = dataclasses.replace(SCENARIOS["dirichlet"], client=4)
    second = dataclasses.replace(first, client=3)
    a = references.ensure_references(tmp_path, first, 0, quick=True, log=lambda _: None)
    b = references.ensure_references(tmp_path, second, 0, quick=True, log=lambda _: None)
    again = references.ensure_references(tmp_path, first, 0, quick=True, log=lambda _: None)
    assert a.original == b.original and a.retrain != b.retrain and again == a
    assert trained == [("original", []), ("retrain-without-client4", [4]), ("retrain-without-client3", [3])]
    assert (a.target.client, b.target.client) == (4, 3)
