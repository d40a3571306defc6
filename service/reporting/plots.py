"""The report's figures, drawn with matplotlib (Agg, no pyplot) from the figures a job recorded: R@K before and
after, the gates against their thresholds (with the no-op control), the principal angles, the membership
similarity distributions. Each returns PNG bytes, or None when the figures needed are missing."""

from __future__ import annotations

import math
from itertools import pairwise
from typing import Any

SPLITS = ("forget", "retain", "retained_heldout", "test")
RECALL_KEYS = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10")


def _figure_png(draw, size: tuple[float, float] = (7.0, 3.2)) -> bytes:
    """Draw on a fresh Agg figure (no pyplot, no global state) and return PNG bytes."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=size, dpi=110)
    FigureCanvasAgg(figure)
    draw(figure)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _as_dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _recall_plot(figures: dict[str, Any]) -> bytes | None:
    after, before = figures.get("metrics"), figures.get("before")
    after, before = (after if isinstance(after, dict) else {}), (before if isinstance(before, dict) else {})
    splits = [name for name in SPLITS if isinstance(after.get(name), dict)
              and any(_number(after[name].get(key)) is not None for key in RECALL_KEYS)]
    if not splits:
        return None

    def draw(figure):
        axes = figure.subplots(1, len(splits), sharey=True, squeeze=False)[0]
        for ax, split in zip(axes, splits, strict=True):
            keys = [key for key in RECALL_KEYS if _number(after[split].get(key)) is not None]
            positions = range(len(keys))
            width = 0.4
            ax.bar([p - width / 2 for p in positions],
                   [_number(_as_dict(before.get(split)).get(key)) or 0.0 for key in keys], width, label="before",
                   color="#9aa5b1")
            ax.bar([p + width / 2 for p in positions], [_number(after[split][key]) for key in keys], width,
                   label="after", color="#2f6fb0")
            ax.set_title(f"{split} split", fontsize=9)
            ax.set_xticks(list(positions), [key.replace("_", " ") for key in keys], rotation=60, fontsize=7)
            ax.tick_params(axis="y", labelsize=7)
        axes[0].set_ylabel("Recall@K (%)", fontsize=8)
        axes[0].legend(fontsize=7)

    return _figure_png(draw)


def _gate_plot(gates: list[dict[str, Any]]) -> bytes | None:
    """One row per gate (their scales differ): the value (green passed, red failed), the threshold or band (black),
    the no-op control's value (a grey diamond)."""
    gates = [g for g in gates or [] if _number(g.get("value")) is not None
             and any(_number(g.get(k)) is not None for k in ("threshold", "low", "high"))]
    if not gates:
        return None

    def draw(figure):
        axes = figure.subplots(len(gates), 1, squeeze=False)[:, 0]
        for ax, gate in zip(axes, gates, strict=True):
            value = _number(gate["value"])
            marks = [_number(gate.get(k)) for k in ("threshold", "low", "high")]
            marks = [m for m in marks if m is not None and math.isfinite(m)]
            control = _number(gate.get("control_value"))
            ax.barh([0], [value], color="#2e8b57" if gate.get("passed") else "#c0392b", height=0.6)
            for mark in marks:
                ax.axvline(mark, color="black", linewidth=2)
            if _number(gate.get("low")) is not None and _number(gate.get("high")) is not None:
                ax.axvspan(_number(gate["low"]), _number(gate["high"]), color="#dddddd", zorder=0)
            points = [value, *marks] + ([control] if control is not None else [])
            low, high = min(0.0, *points), max(*points, 1e-9)
            ax.set_xlim(low - 0.05 * (high - low), high + 0.25 * (high - low))
            if control is not None:
                ax.plot([control], [0], marker="D", color="#555555", markersize=5)
            ax.set_yticks([0], [str(gate.get("name"))], fontsize=7)
            ax.text(value, 0, f" {value:g}", va="center", fontsize=7)
            ax.tick_params(axis="x", labelsize=6)
        axes[0].set_title("Gates: value (green passed, red failed); black: threshold or band; diamond: no-op control",
                          fontsize=8)

    return _figure_png(draw, (7.0, 0.55 * len(gates) + 0.8))


def _angle_plot(angles: list[Any]) -> bytes | None:
    values = [float(a) for a in angles or [] if _number(a) is not None]
    if not values:
        return None

    def draw(figure):
        ax = figure.subplots()
        ax.hist(values, bins=min(30, max(5, len(values) // 4)), range=(0, 90), color="#7b5ea7")
        ax.set_xlabel("principal angle between forget and retained directions (degrees)", fontsize=8)
        ax.set_ylabel("directions", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_title(f"Principal angles ({len(values)} directions; 90 = exclusive to the erased data)", fontsize=9)

    return _figure_png(draw, (7.0, 2.8))


def _counts(value: Any, bins: int) -> list[float] | None:
    if not isinstance(value, list) or len(value) != bins:
        return None
    counts = [_number(c) for c in value]
    if any(c is None or not math.isfinite(c) or c < 0 for c in counts):
        return None
    return counts


def _similarity_plot(distribution: Any, membership: Any) -> bytes | None:
    """The similarity attack's score histograms (``distributions.similarity``): forget pairs (members)
    against held-out non-members, each normalised to a density so sets of different sizes compare."""
    distribution = _as_dict(distribution)
    edges = distribution.get("edges")
    if not isinstance(edges, list) or len(edges) < 2:
        return None
    edges = [_number(e) for e in edges]
    if any(e is None or not math.isfinite(e) for e in edges):
        return None
    widths = [high - low for low, high in pairwise(edges)]
    if any(w <= 0 for w in widths):
        return None
    bins = len(edges) - 1
    members, nonmembers = _counts(distribution.get("members"), bins), _counts(distribution.get("nonmembers"), bins)
    if members is None or nonmembers is None or sum(members) <= 0 or sum(nonmembers) <= 0:
        return None  # the plot is a comparison: both sets or nothing
    series = (("forget pairs (members)", members, "#c0392b", "members_mean"),
              ("held-out non-members", nonmembers, "#2f6fb0", "nonmembers_mean"))
    similarity_auc = _number(_as_dict(membership).get("similarity_auc"))

    def draw(figure):
        ax = figure.subplots()
        for label, counts, colour, mean_key in series:
            total = sum(counts)
            density = [c / (total * w) for c, w in zip(counts, widths, strict=True)]
            ax.stairs(density, edges, fill=True, alpha=0.25, color=colour)
            ax.stairs(density, edges, color=colour, linewidth=1.4, label=f"{label}, n={int(total)}")
            mean = _number(distribution.get(mean_key))
            if mean is not None and math.isfinite(mean):
                ax.axvline(mean, color=colour, linestyle="--", linewidth=1)
        ax.set_xlabel("cosine similarity of image and caption (dashed: means)", fontsize=8)
        ax.set_ylabel("density", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
        title = "Similarity attack"
        if similarity_auc is not None:
            title += f": AUC {similarity_auc:.3f} (0.5 = members indistinguishable from non-members)"
        ax.set_title(title, fontsize=9)

    return _figure_png(draw, (7.0, 3.0))


def report_plots(report: dict[str, Any]) -> list[tuple[str, str, bytes]]:
    """(key, title, PNG) for each plot the recorded figures allow: ``recall`` (R@K before/after per split),
    ``gates`` (against their thresholds), ``angles`` (principal-angle histogram) and ``similarity`` (the
    membership similarity distributions of forget pairs vs held-out non-members)."""
    verification = _as_dict(report.get("verification"))
    figures = _as_dict(verification.get("result"))
    angles = _as_dict(figures.get("angles")).get("principal_angles_deg")
    angles = angles if isinstance(angles, list) else None
    gates = [gate for gate in report.get("gates") or [] if isinstance(gate, dict)]
    plots = []
    for key, title, make in (
            ("recall", "Retrieval (Recall@K) before and after the erasure", lambda: _recall_plot(figures)),
            ("gates", "The gates against their thresholds", lambda: _gate_plot(gates)),
            ("angles", "Entanglement: principal angles", lambda: _angle_plot(angles)),
            ("similarity", "Membership inference: similarity of forget pairs vs non-members",
             lambda: _similarity_plot(_as_dict(figures.get("distributions")).get("similarity"),
                                      figures.get("membership")))):
        png = make()
        if png:
            plots.append((key, title, png))
    return plots
