"""The report as HTML, the PDF's twin (the same sections from the same words: ``summary``), with its figures
inline. Jinja2, autoescaped: nothing a requester wrote can inject markup."""

from __future__ import annotations

import base64
from functools import lru_cache
from pathlib import Path
from typing import Any

from lethe_format.audit_chain import HASH_RULE_WORDS
from service.reporting import summary
from service.reporting.plots import report_plots

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"


@lru_cache(maxsize=1)
def environment():
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    environment = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html"]))
    environment.filters["when"] = summary.when
    return environment


def report_context(report: dict[str, Any]) -> dict[str, Any]:
    figures, _failure = summary.figures_of(report)
    return {
        "report": report, "hash_rule": HASH_RULE_WORDS, "facts": summary.page_one_facts(report), "figures": figures,
        "recall": summary.recall_rows(figures), "membership": summary.membership_rows(figures),
        "matched": summary.matched_rows(figures),
        "cost": summary.method_rows(report, figures),
        "plots": [(key, title, base64.b64encode(png).decode("ascii")) for key, title, png in report_plots(report)],
    }


def render_html(report: dict[str, Any]) -> str:
    return environment().get_template("report.html").render(**report_context(report))
