"""The JSON figures a job records on its request (the report's plots are drawn from them) and the time it
spends per stage."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ease_engine.erasure import repair_record
from lethe_format import layout
from workers import metrics


@dataclass
class StageClock:
    """Time spent per stage (into the histogram and the recorded figures)."""

    current: str | None = None
    since: float = field(default_factory=time.perf_counter)
    seconds: dict[str, float] = field(default_factory=dict)

    def enter(self, stage: str | None) -> None:
        now = time.perf_counter()
        if self.current is not None and stage != self.current:
            spent = now - self.since
            self.seconds[self.current] = round(self.seconds.get(self.current, 0.0) + spent, 3)
            metrics.STAGE_DURATION.labels(self.current).observe(spent)
        if stage != self.current:
            self.current, self.since = stage, now


def job_figures(base_number: int, method: str, result, gates, out_dir: Path | None) -> dict[str, Any]:
    """The figures of an erasure result (``ease_engine.erasure.ErasureResult``) on base version
    ``base_number``; ``out_dir``: the written version (its manifest gives the parameters), if any."""
    report = result.report.model_dump(mode="json")
    parameters = None
    if out_dir is not None and (out_dir / layout.MANIFEST).is_file():
        parameters = json.loads((out_dir / layout.MANIFEST).read_text()).get("erasure", {}).get("parameters")
    details = dict(getattr(result.outcome, "details", {}) or {})
    details.update(repair_record(details))  # with the steps it took and its measures, as the manifest has it
    displacement = details.get("displacement")
    if isinstance(displacement, dict):
        # the history is long, and the repair criterion is in repair_stop (the manifest's record)
        details["displacement"] = {key: value for key, value in displacement.items()
                                   if key not in ("history", "repair_criterion")}
    cost = getattr(result.outcome, "cost", None)
    return {
        "method": method,
        "parameters": parameters,
        "passed": bool(result.report.passed),
        "verdict": report.get("verdict"),
        "reasons": report.get("reasons", []),
        "gate_config": gates.model_dump(mode="json"),
        "gates": report["gates"],
        "metrics": report["metrics"],
        "before": report["before"],
        "matched": report.get("matched", {}),
        "probe": report.get("probe", {}),
        "membership": report.get("membership"),
        "membership_before": report.get("membership_before"),
        "residual": report.get("residual", {}),
        "reference": report.get("reference", {}),
        "distributions": report.get("distributions", {}),
        **details,
        "cost": dict(vars(cost)) if cost is not None else None,
        "wall_seconds": getattr(result.outcome, "wall_seconds", None),
        "base_version": base_number,
    }
