"""The tuning grids and the defaults the benchmark evaluates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lethe_bench.tuning import GRIDS, is_default

TUNING_JSON = Path(__file__).resolve().parents[2] / "docs" / "results" / "tuning.json"


@pytest.mark.parametrize("method", sorted(GRIDS))
def test_each_method_default_is_the_setting_its_calibration_chose(method):
    """A default changed without re-tuning (or a grid that no longer holds it) fails here: the benchmark
    would then evaluate a setting the equal-tuning table never judged."""
    defaults = [setting for setting in GRIDS[method] if is_default(method, setting)]
    assert len(defaults) == 1, f"{method}: exactly one grid setting must be the default, got {defaults}"
    chosen = json.loads(TUNING_JSON.read_text())["methods"][method]["chosen"]
    assert defaults[0] == chosen


def test_a_setting_that_differs_in_one_key_is_not_the_default():
    assert is_default("ease", {"steps": 30}) and not is_default("ease", {"steps": 60})
    assert not is_default("ease", {"steps": 30, "lr": 5e-3})


def test_tuning_some_methods_never_overwrites_the_published_results(tmp_path, monkeypatch):
    """The published tuning holds every method: a run over a subset must be sent elsewhere, before it trains."""
    from lethe_bench import tuning

    def never(*args, **kwargs):
        raise AssertionError("references were trained before the refusal")

    monkeypatch.setattr(tuning, "ensure_references", never)
    for extra in ([], ["--json", str(tmp_path / "t.json")], ["--docs", str(tmp_path / "b.md")],
                  ["--json", "docs/results/tuning.json", "--docs", str(tmp_path / "b.md")]):  # named, yet published
        with pytest.raises(SystemExit) as refused:
            tuning.main(["--methods", "ease", *extra])
        assert refused.value.code == 2
    with pytest.raises(AssertionError, match="trained before"):  # sent elsewhere, it goes on to its work
        tuning.main(["--methods", "ease", "--json", str(tmp_path / "t.json"), "--docs", str(tmp_path / "b.md")])
