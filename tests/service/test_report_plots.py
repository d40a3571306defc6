"""Plots in report.pdf, drawn from the figures the worker recorded (no database needed); odd or missing figures
give fewer plots, never an error."""

from __future__ import annotations

import pytest

from service.reporting import summary
from service.reporting.pdf import render_pdf
from service.reporting.plots import report_plots

FIGURES = {
    "metrics": {split: {"i2t_r1": 3.0, "i2t_r5": 9.0, "i2t_r10": 15.0, "t2i_r1": 2.0, "t2i_r5": 8.0,
                        "t2i_r10": 14.0, "n_images": 60.0} for split in ("forget", "retain", "test")},
    "before": {split: {"i2t_r1": 6.0, "i2t_r5": 12.0, "i2t_r10": 20.0, "t2i_r1": 5.0, "t2i_r5": 11.0,
                       "t2i_r10": 19.0} for split in ("forget", "retain", "test")},
    "gates": [{"name": "forget_i2t_r1", "value": 3.0, "threshold": 4.0, "comparison": "<=", "passed": True},
              {"name": "mia_loss_auc", "value": 0.61, "threshold": 0.55, "comparison": "<=", "passed": False}],
    "angles": {"principal_angles_deg": [12.5, 45.0, 88.0, 90.0, 90.0]},
    "membership": {"similarity_auc": 0.62, "loss_auc": 0.58, "n_members": 12, "n_nonmembers": 20},
    "distributions": {"similarity": {
        "edges": [0.1, 0.2, 0.3, 0.4, 0.5], "members": [0, 2, 6, 4], "nonmembers": [5, 10, 5, 0],
        "n_members": 12, "n_nonmembers": 20, "members_mean": 0.36, "members_median": 0.35,
        "nonmembers_mean": 0.25, "nonmembers_median": 0.25, "members_split": "forget", "nonmembers_split": "test",
    }},
}
TITLES = ["recall", "gates", "angles", "similarity"]


def report(status: str = "published", result=None, failure=None) -> dict:
    """A report as ``build_report`` makes it, without a database."""
    figures, failed = result if isinstance(result, dict) else {}, failure if isinstance(failure, dict) else {}
    return {
        "generated_at": "2026-11-28T00:00:00Z",
        "request": {"id": "r1", "status": status, "scope": "client", "client_id": "0", "model": "m",
                    "requester": "alice", "created_at": "2026-11-28T00:00:00Z", "pair_ids": None},
        "legal_basis": {"code": "federation_exit", "description": "exit", "reason": None},
        "outcome": summary.verdict(status, figures, failed),
        "gates": summary.gate_rows(figures, failed),
        "timeline": [{"seq": 1, "at": "2026-11-28T00:00:00.000000Z", "type": "request.received",
                      "summary": "Request received", "payload": {}}],
        "lineage": {"model": "m", "ancestry": [{"version": 1, "status": "registered", "content_hash": "sha256:x"}],
                    "withdrawn": []},
        "verification": {"status": status, "result": result, "failure": failure},
        "certificate": {"available": False, "digest": None, "link": "/c"},
        "audit_chain": {"events": [{"seq": 1, "hash": "a" * 64}], "head": {"seq": 1, "hash": "a" * 64},
                        "verification": {"ok": True}, "rule": "hash = ...", "checkpoint": None},
        "verify_offline": [{"step": "look", "command": "true"}],
    }


def test_all_four_plots_from_published_figures():
    plots = report_plots(report(result=FIGURES))
    assert [key for key, _, _ in plots] == TITLES
    assert all(png.startswith(b"\x89PNG") for _, _, png in plots)
    with_plots, without = render_pdf(report(result=FIGURES)), render_pdf(report())
    assert with_plots.startswith(b"%PDF") and with_plots.count(b"/Subtype /Image") == 4
    assert without.count(b"/Subtype /Image") == 0


def test_similarity_plot_needs_only_the_distribution():
    """Without the AUC (no membership figures) the title loses it but the plot is drawn."""
    figures = {"distributions": FIGURES["distributions"]}
    assert [key for key, _, _ in report_plots(report(result=figures))] == TITLES[3:]
    failed = {**FIGURES, "gates": []}
    pdf = render_pdf(report("verification_failed", result=failed))
    assert pdf.startswith(b"%PDF") and pdf.count(b"/Subtype /Image") == 3


def similarity(**changes) -> dict:
    return {**FIGURES, "distributions": {"similarity": {**FIGURES["distributions"]["similarity"], **changes}}}


@pytest.mark.parametrize("result", [
    {key: value for key, value in FIGURES.items() if key != "distributions"},
    {**FIGURES, "distributions": {}},
    {**FIGURES, "distributions": "odd"},
    {**FIGURES, "distributions": {"similarity": []}},
    similarity(edges=None),
    similarity(edges=[0.1]),
    similarity(edges=[0.1, 0.3, 0.2, 0.4, 0.5]),  # not increasing
    similarity(edges=[0.1, 0.2, "x", 0.4, 0.5]),
    similarity(edges=[0.1, 0.2, 0.3, 0.4, float("nan")]),
    similarity(members=[0, 2, 6]),  # one count short of the bins
    similarity(members=[0, 2, -6, 4]),
    similarity(nonmembers=[5, 10, None, 0]),
    similarity(nonmembers=None),
    similarity(members=[0, 0, 0, 0]),  # an empty set: nothing to compare
    similarity(nonmembers=[True, 1, 1, 1]),
])
def test_missing_or_malformed_distributions_omit_the_similarity_plot(result):
    titles = [key for key, _, _ in report_plots(report(result=result))]
    assert titles == TITLES[:3]
    assert render_pdf(report(result=result)).count(b"/Subtype /Image") == 3


def test_failed_gates_are_plotted_from_the_failure():
    failure = {"kind": "verification", "failed_gates": ["mia_loss_auc"], "gates": FIGURES["gates"]}
    plots = report_plots(report("verification_failed", failure=failure))
    assert [key for key, _, _ in plots] == ["gates"]


@pytest.mark.parametrize("result", [{}, {"metrics": "odd", "gates": [{"name": "g"}], "angles": []},
                                    {"angles": {"principal_angles_deg": ["x"]}}])
def test_missing_or_odd_figures_give_no_plot(result):
    assert report_plots(report(result=result)) == []
