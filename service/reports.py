"""The audit report of one erasure request, for compliance officers (JSON; the PDF renders it)."""

from __future__ import annotations

import math
from itertools import pairwise
from typing import Any

from sqlalchemy.orm import Session

from service.audit import chain_head, events_for_request, format_timestamp, verify_chain
from service.models import ErasureRequest, ModelVersion
from service.schemas import LEGAL_BASIS_DESCRIPTIONS, LegalBasis

HASH_RULE = (
    'hash = sha256(prev_hash + canonical_json({"seq", "type", "request_id", "payload", "created_at"})), '
    'canonical_json = json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False), created_at as '
    "UTC YYYY-MM-DDTHH:MM:SS.ffffffZ; the first event's prev_hash is 64 zeros."
)
SIGNATURE_SUFFIXES = (".sig", ".sigstore", ".sigstore.json")


def version_summary(version: ModelVersion | None) -> dict[str, Any] | None:
    if version is None:
        return None
    return {
        "version": version.version,
        "status": version.status,
        "path": version.path,
        "content_hash": version.content_hash,
        "parent_version": version.parent.version if version.parent else None,
        "created_at": format_timestamp(version.created_at),
        "created_by_request": str(version.created_by_request_id) if version.created_by_request_id else None,
    }


def ancestry(version: ModelVersion | None, limit: int = 1000) -> list[dict[str, Any]]:
    chain = []
    while version is not None and len(chain) < limit:
        chain.append(version_summary(version))
        version = version.parent
    return chain


def _signature(version: ModelVersion | None) -> dict[str, Any] | None:
    if version is None:
        return None
    files = [entry for entry in (version.files or []) if entry["path"].endswith(SIGNATURE_SUFFIXES)]
    return {
        "files": files,
        "manifest_signature": version.manifest.get("signature"),
        "how_to_verify": (
            "Download the version (GET /v1/models/{name}/versions/{v}/download), fetch the public key from "
            "GET /v1/keys, and verify with the OpenSSF model-signing tool: "
            "`model_signing verify key <model dir> --signature <sig file> --public_key key.pem`."
        ),
    }


def build_report(session: Session, request: ErasureRequest, request_view: dict[str, Any]) -> dict[str, Any]:
    events = events_for_request(session, request.id)
    head_seq, head_hash = chain_head(session)
    verification = verify_chain(session)
    basis = LegalBasis(request.legal_basis)
    result_version = request.result_version
    manifest = result_version.manifest if result_version else {}
    return {
        "report_format": "lethe.erasure-report/1",
        "request": request_view,
        "legal_basis": {"code": basis.value, "description": LEGAL_BASIS_DESCRIPTIONS[basis],
                        "reason": request.reason},
        "timeline": [
            {"seq": event.seq, "type": event.event_type, "at": format_timestamp(event.created_at),
             "payload": event.payload}
            for event in events
        ],
        "lineage": {
            "model": request.model_name,
            "base_version": version_summary(request.base_version),
            "result_version": version_summary(result_version),
            "ancestry": ancestry(result_version or request.base_version),
        },
        "method": manifest.get("method") or (request.result or {}).get("method"),
        "parameters": manifest.get("parameters") or (request.result or {}).get("parameters"),
        "verification": {"status": request.status, "result": request.result, "failure": request.failure},
        "signature": _signature(result_version),
        "audit_chain": {
            "rule": HASH_RULE,
            "events": [
                {"seq": event.seq, "type": event.event_type, "prev_hash": event.prev_hash, "hash": event.hash}
                for event in events
            ],
            "head": {"seq": head_seq, "hash": head_hash},
            "verification": verification.as_dict(),
            "how_to_verify": "GET /v1/audit/verify re-walks the whole chain; each event here links to the "
                             "previous one by prev_hash, and the head is the last event's hash.",
        },
    }


# --------------------------------------------------------------------------- plots (matplotlib, Agg)

SPLITS = ("forget", "retain", "test")
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
    gates = [g for g in gates or [] if _number(g.get("value")) is not None and _number(g.get("threshold")) is not None]
    if not gates:
        return None

    def draw(figure):
        axes = figure.subplots(len(gates), 1, squeeze=False)[:, 0]
        for ax, gate in zip(axes, gates, strict=True):  # one row each: the gates have different scales
            value, threshold = _number(gate["value"]), _number(gate["threshold"])
            ax.barh([0], [value], color="#2e8b57" if gate.get("passed") else "#c0392b", height=0.6)
            ax.axvline(threshold, color="black", linewidth=2)
            low, high = min(0.0, value, threshold), max(value, threshold, 1e-9)
            ax.set_xlim(low - 0.05 * (high - low), high + 0.25 * (high - low))
            ax.set_yticks([0], [f"{gate.get('name')} {gate.get('comparison', '')} {threshold:g}"], fontsize=7)
            ax.text(value, 0, f" {value:g}", va="center", fontsize=7)
            ax.tick_params(axis="x", labelsize=6)
        axes[0].set_title("Verification gates: value (green passed, red failed); black line: threshold", fontsize=9)

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


def report_plots(report: dict[str, Any]) -> list[tuple[str, bytes]]:
    """(title, PNG) for each plot the recorded figures allow: R@K before/after per split, gates against
    their thresholds, the principal-angle histogram (``angles.principal_angles_deg``) and the membership
    inference similarity distributions of forget pairs vs held-out non-members (``distributions.similarity``)."""
    verification = report.get("verification") or {}
    figures = verification.get("result") if isinstance(verification.get("result"), dict) else {}
    failure = verification.get("failure") if isinstance(verification.get("failure"), dict) else {}
    gates = figures.get("gates") or failure.get("gates") or []
    gates = [gate for gate in gates if isinstance(gate, dict)] if isinstance(gates, list) else []
    angles = figures.get("angles")
    angles = angles.get("principal_angles_deg") if isinstance(angles, dict) else None
    angles = angles if isinstance(angles, list) else None
    plots = []
    for title, make in (("Retrieval before and after the erasure", lambda: _recall_plot(figures)),
                        ("Verification gates", lambda: _gate_plot(gates)),
                        ("Entanglement: principal angles", lambda: _angle_plot(angles)),
                        ("Membership inference: similarity of forget pairs vs non-members",
                         lambda: _similarity_plot(_as_dict(figures.get("distributions")).get("similarity"),
                                                  figures.get("membership")))):
        png = make()
        if png:
            plots.append((title, png))
    return plots


def render_pdf(report: dict[str, Any]) -> bytes:
    """The report as a PDF: the text sections and the plots drawn from the worker's figures."""
    import io
    import json

    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_auto_page_break(auto=True, margin=15)
    pdf.add_page()
    pdf.set_font("Helvetica", "B", 16)
    pdf.cell(0, 10, "Lethe erasure report", new_x="LMARGIN", new_y="NEXT")
    request = report["request"]

    def heading(text: str) -> None:
        pdf.ln(3)
        pdf.set_font("Helvetica", "B", 12)
        pdf.cell(0, 8, text, new_x="LMARGIN", new_y="NEXT")
        pdf.set_font("Helvetica", "", 9)

    def line(text: str) -> None:
        safe = text.encode("latin-1", "replace").decode("latin-1")
        pdf.multi_cell(0, 5, safe, new_x="LMARGIN", new_y="NEXT")

    heading("Request")
    for key in ("id", "status", "scope", "client_id", "model", "requester", "created_at", "finished_at"):
        line(f"{key}: {request.get(key)}")
    if request.get("pair_ids"):
        line(f"pair_ids ({len(request['pair_ids'])}): {', '.join(request['pair_ids'][:20])}")
    heading("Legal basis")
    line(f"{report['legal_basis']['code']}: {report['legal_basis']['description']}")
    line(f"reason: {report['legal_basis']['reason'] or '-'}")
    heading("Timeline")
    for event in report["timeline"]:
        line(f"#{event['seq']} {event['at']} {event['type']}")
    heading("Lineage")
    for entry in report["lineage"]["ancestry"]:
        line(f"v{entry['version']} ({entry['status']}) {entry['content_hash']}")
    heading("Verification")
    line(json.dumps(report["verification"], indent=1, sort_keys=True)[:6000])
    for title, png in report_plots(report):
        heading(title)
        pdf.image(io.BytesIO(png), w=pdf.epw)
    heading("Audit chain")
    for event in report["audit_chain"]["events"]:
        line(f"#{event['seq']} {event['hash']}")
    head = report["audit_chain"]["head"]
    line(f"head #{head['seq']} {head['hash']}; chain verified: {report['audit_chain']['verification']['ok']}")
    line(report["audit_chain"]["rule"])
    return bytes(pdf.output())
