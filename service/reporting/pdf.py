"""The report as a PDF a compliance officer can file (fpdf2, DejaVu fonts: any script prints).

Page 1: the verdict, what was erased, the dates, the new version with its signature and certificate digests,
the parent's status, and every gate as a table row. Then the evidence (retrieval before/after, membership
inference, entanglement, cost), the timeline with stage names, lineage and audit chain, and the commands
that verify everything offline. No raw JSON anywhere (report.json is served beside it). A heading never ends a
page: each section starts on a new page when its heading and first block would not fit."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from lethe_format.audit_chain import HASH_RULE_WORDS
from service.reporting import summary
from service.reporting.plots import report_plots

VERDICT_COLOURS = {"passed": (46, 139, 87), "failed": (192, 57, 43), "inconclusive": (200, 130, 20)}


def font_directory() -> Path:
    """DejaVu, shipped with matplotlib (a dependency of the service): Unicode coverage for names in any script."""
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def _pdf_class():
    from fpdf import FPDF

    class ReportPDF(FPDF):
        footer_text = ""

        def footer(self):
            self.set_y(-12)
            self.set_font("DejaVu", "", 7)
            self.set_text_color(110, 110, 110)
            self.cell(0, 5, f"{self.footer_text} · page {self.page_no()} of {{nb}}", align="C")
            self.set_text_color(0, 0, 0)

    return ReportPDF


class _Writer:
    def __init__(self, report: dict[str, Any]):
        self.report = report
        self.pdf = _pdf_class()(format="A4")
        fonts = font_directory()
        for style, name in (("", "DejaVuSans.ttf"), ("B", "DejaVuSans-Bold.ttf"), ("I", "DejaVuSans-Oblique.ttf")):
            self.pdf.add_font("DejaVu", style, fonts / name)
        self.pdf.add_font("DejaVuMono", "", fonts / "DejaVuSansMono.ttf")
        self.pdf.set_auto_page_break(auto=True, margin=16)
        self.pdf.set_margins(14, 12, 14)
        request = report["request"]
        self.pdf.footer_text = f"Lethe erasure report · request {request['id']} · generated {report['generated_at']}"
        self.pdf.set_title(f"Erasure report {request['id']}")
        self.pdf.set_author("Lethe")

    # ------------------------------------------------------------------ primitives

    def font(self, size: float = 9, style: str = "", mono: bool = False) -> None:
        self.pdf.set_font("DejaVuMono" if mono else "DejaVu", "" if mono else style, size)

    def heading(self, text: str, keep_with: float = 30.0, size: float = 12) -> None:
        """A section heading, on a new page if it and ``keep_with`` mm of its content would not fit."""
        pdf = self.pdf
        if pdf.get_y() + 9 + keep_with > pdf.page_break_trigger:
            pdf.add_page()
        pdf.ln(2)
        self.font(size, "B")
        pdf.cell(0, 7, text, new_x="LMARGIN", new_y="NEXT")
        self.font(9)

    def text(self, text: str, size: float = 9, style: str = "", mono: bool = False, height: float = 4.6) -> None:
        self.font(size, style, mono)
        self.pdf.multi_cell(0, height, text, align="L", new_x="LMARGIN", new_y="NEXT")
        self.font(9)

    def table(self, rows: list[list[str]], widths: tuple[float, ...], size: float = 8, wrap_chars: bool = False,
              headings: bool = True, mono_columns: tuple[int, ...] = ()) -> None:
        from fpdf.fonts import FontFace

        self.font(size)
        with self.pdf.table(col_widths=widths, text_align="LEFT", first_row_as_headings=headings,
                            line_height=size * 0.5, padding=1, wrapmode="CHAR" if wrap_chars else "WORD",
                            headings_style=FontFace(emphasis="BOLD", fill_color=(235, 238, 242))) as table:
            for index, values in enumerate(rows):
                row = table.row()
                for column, value in enumerate(values):
                    style = FontFace(family="DejaVuMono", size_pt=size - 0.5) \
                        if column in mono_columns and (index or not headings) else None
                    row.cell(str(value), style=style)
        self.pdf.ln(1.5)

    def image(self, png: bytes) -> None:
        from PIL import Image

        with Image.open(io.BytesIO(png)) as picture:
            height = self.pdf.epw * picture.height / picture.width
        if self.pdf.get_y() + height > self.pdf.page_break_trigger:
            self.pdf.add_page()
        self.pdf.image(io.BytesIO(png), w=self.pdf.epw)

    # ------------------------------------------------------------------ page 1

    def verdict_page(self) -> None:
        report, pdf = self.report, self.pdf
        request, outcome = report["request"], report["outcome"]
        pdf.add_page()
        self.font(16, "B")
        pdf.cell(0, 9, "Erasure report", new_x="LMARGIN", new_y="NEXT")
        self.text(f"Request {request['id']} · model {request['model']} · status {request['status']}", 8.5)
        pdf.ln(1)
        colour = VERDICT_COLOURS.get(outcome["verdict"], (90, 90, 90))
        pdf.set_fill_color(*colour)
        pdf.set_text_color(255, 255, 255)
        self.font(11, "B")
        pdf.multi_cell(0, 6, f"Verdict: {outcome['summary']}", fill=True, padding=2, align="L", new_x="LMARGIN",
                       new_y="NEXT")
        pdf.set_text_color(0, 0, 0)
        pdf.set_fill_color(255, 255, 255)
        for reason in outcome["reasons"]:
            self.text(f"• {reason}", 8.5)
        pdf.ln(1.5)
        self.table(summary.page_one_facts(report), (42, pdf.epw - 42), size=7.8, headings=False, wrap_chars=True)
        self.heading("Verification gates", keep_with=20, size=10.5)
        rows = [["Gate", "What it measures", "Value", "Threshold", "No-op control", "Result"]]
        rows += [[gate["name"], gate["description"], gate["value_text"], gate["band_text"], gate["control_text"],
                  gate["result_text"]] for gate in report["gates"]]
        if len(rows) == 1:
            self.text("No gate figures were recorded for this request (it did not reach verification).", 8.5)
        else:
            self.table(rows, (45, 58, 14, 23, 25, 13), size=7.2)  # the gate column fits main's longest names
            self.text("No-op control: the same gate measured on the unchanged parent version. A forgetting gate "
                      "that the parent passes as well proves nothing; verification then says inconclusive.", 7, "I")

    # ------------------------------------------------------------------ the evidence

    def evidence(self) -> None:
        report = self.report
        figures, _failure = summary.figures_of(report)
        plots = {key: (title, png) for key, title, png in report_plots(report)}
        recall = summary.recall_rows(figures)
        if recall:
            self.pdf.add_page()
            self.heading("Evidence: retrieval before → after the erasure", keep_with=40)
            self.text("Recall@K in percent: how often the matching caption (image→text) or image (text→image) is "
                      "among the top K. On the erased pairs it should fall; elsewhere it should hold.", 8)
            rows = [["Data", "image→text R@1", "image→text R@5", "text→image R@1", "text→image R@5"]]
            rows += [[r["split"], r["i2t_r1"], r["i2t_r5"], r["t2i_r1"], r["t2i_r5"]] for r in recall]
            self.table(rows, (56, 31, 31, 31, 31), size=8)
            if "recall" in plots:
                self.image(plots["recall"][1])
        membership, matched = summary.membership_rows(figures), summary.matched_rows(figures)
        if membership or matched or "similarity" in plots:
            self.heading("Evidence: membership inference", keep_with=45)
            self.text("An attacker's power to tell the erased pairs from pairs never trained on (AUC 0.5: none).", 8)
            if membership:
                self.table([["Attack", "AUC before", "AUC after"]] +
                           [[r["attack"], r["before"], r["after"]] for r in membership], (80, 50, 50))
            if matched:
                self.table([["Model", "R@K of erased pairs", "R@K of matched non-members"]] +
                           [[r["model"], r["members"], r["nonmembers"]] for r in matched], (60, 60, 60))
            if "similarity" in plots:
                self.image(plots["similarity"][1])
        for key, words in (("gates", "The gates against their thresholds"),
                           ("angles", "Entanglement: principal angles between erased and kept directions")):
            if key in plots:
                self.heading(words, keep_with=50)
                self.image(plots[key][1])
        cost = summary.method_rows(self.report, figures)
        if cost:
            self.heading("Method, parameters and cost", keep_with=25)
            self.text(f"Method: {self.report.get('method') or '-'}", 8.5)
            self.table([["Figure", "Value"]] + [list(row) for row in cost], (90, self.pdf.epw - 90), size=7.5)

    def records(self) -> None:
        report = self.report
        self.heading("Timeline", keep_with=25)
        self.table([["#", "When (UTC)", "What happened"]] +
                   [[str(e["seq"]), e["at"].replace("T", " ").rstrip("Z"), e["summary"]] for e in report["timeline"]],
                   (12, 44, self.pdf.epw - 56), size=7.5)
        lineage = report["lineage"]
        self.heading("Lineage", keep_with=20)
        self.table([["Version", "Status", "Content hash"]] +
                   [[f"v{v['version']}", v["status"] + (" (withdrawn by this request)" if v.get("withdrawn_by_request")
                                                        == str(report["request"]["id"]) else ""), v["content_hash"]]
                    for v in lineage["ancestry"]], (14, 50, self.pdf.epw - 64), size=7.2, wrap_chars=True,
                   mono_columns=(2,))
        chain = report["audit_chain"]
        self.heading("Audit chain", keep_with=25)
        checkpoint = chain.get("checkpoint")
        verification = chain["verification"]
        rows = [["Head", f"event {chain['head']['seq']}, {chain['head']['hash']}"],
                ["Chain verified now", "yes" if verification.get("ok") else "NO: " + str(verification.get(
                    "first_broken_link"))],
                ["Signed checkpoint", f"event {checkpoint['seq']}, {checkpoint['hash']} ({checkpoint['created_at']})"
                 if checkpoint else "none (no publication)"]]
        self.table(rows, (40, self.pdf.epw - 40), size=7.5, headings=False, wrap_chars=True)
        self.text(f"How the chain is made: {HASH_RULE_WORDS}", 7)

    def verify_section(self) -> None:
        self.heading("How to verify this report offline", keep_with=40)
        self.text("Set LETHE to the service's address and TOKEN to a compliance token, then run:", 8.5)
        for number, step in enumerate(self.report["verify_offline"], start=1):
            if self.pdf.get_y() + 14 > self.pdf.page_break_trigger:
                self.pdf.add_page()
            self.text(f"{number}. {step['step']}", 8.5, "B")
            self.pdf.set_fill_color(244, 244, 244)
            self.font(7.2, mono=True)
            self.pdf.multi_cell(0, 3.8, step["command"], fill=True, padding=1.2, align="L", new_x="LMARGIN",
                                new_y="NEXT")
            self.pdf.ln(1)
        self.text("The figures behind this report, machine-readable: GET "
                  f"/v1/erasure-requests/{self.report['request']['id']}/report.json.", 8)

    def render(self) -> bytes:
        self.verdict_page()
        self.evidence()
        self.records()
        self.verify_section()
        return bytes(self.pdf.output())


def render_pdf(report: dict[str, Any]) -> bytes:
    """The report (``ErasureReport`` as JSON) as PDF bytes."""
    return _Writer(report).render()
