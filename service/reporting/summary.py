"""What the report says in words, shared by the PDF and the HTML twin: the verdict and its reasons, one row per
gate (plain description, value, threshold or band, the no-op control), the timeline's sentences (with stage
names), and the evidence tables. Tolerant of figures with missing keys (older jobs, failed ones)."""

from __future__ import annotations

import math
from typing import Any

VERDICT_WORDS = {
    "passed": "PASSED: the erased data's influence was removed and the verification gates confirm it.",
    "failed": "FAILED: a verification gate failed; nothing was published and the parent version stays as it was.",
    "inconclusive": "INCONCLUSIVE: verification could not tell the erased model from the unchanged parent; "
                    "nothing was published and nothing is presented as verified.",
    "pending": "NOT FINISHED: the request has not been carried out yet.",
    "error": "NOT CARRIED OUT: the job stopped with an error; nothing was published.",
    "rejected": "REJECTED: the request could not be carried out on the current model version.",
    "cancelled": "CANCELLED before it was carried out.",
}
STATUS_VERDICT = {"published": "passed", "verification_failed": "failed", "inconclusive": "inconclusive",
                  "failed": "error", "rejected": "rejected", "cancelled": "cancelled"}
STAGE_WORDS = {"loading": "loading the model and the data", "excising": "excising the erased contribution",
               "displacing": "displacing the erased knowledge", "verifying": "verifying the gates",
               "signing": "signing the new version"}
SPLIT_WORDS = {"forget": "erased pairs (forget)", "retain": "kept training pairs (retain)",
               "retained_heldout": "held-out pairs of kept clients", "test": "unseen test pairs"}
GATE_HINTS = (  # a plain description when a gate carries none, by the start of its name
    ("forget", "Retrieval on the erased pairs: how much the model still recalls them (lower: forgotten)"),
    ("retain", "Retrieval on the kept training pairs: the model's usefulness for the data that stays"),
    ("retained_heldout", "Retrieval on held-out pairs of the kept clients: usefulness on new data"),
    ("test", "Retrieval on unseen test pairs: general usefulness"),
    ("mia", "Membership inference: whether an attacker can still tell the erased pairs from non-members"),
    ("membership", "Membership inference: whether an attacker can still tell the erased pairs from non-members"),
    ("matched", "Retrieval of erased pairs vs matched non-members in one gallery"),
    ("residual", "Residual knowledge of the erased pairs"),
)


def as_dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def fmt(value: Any, digits: int = 3) -> str:
    """A number for a person: a few significant digits; '-' when missing."""
    value_number = number(value)
    if value_number is None:
        return "-" if value is None else str(value)
    if value_number == int(value_number) and abs(value_number) < 1e6:
        return str(int(value_number))
    return f"{value_number:.{digits}g}" if abs(value_number) < 0.001 else f"{value_number:.{digits}f}".rstrip("0")


def when(timestamp: str | None) -> str:
    """An ISO timestamp for a person: ``2026-12-01 17:01:22 UTC``."""
    if not timestamp:
        return "-"
    text = str(timestamp).replace("T", " ")
    return text[:19] + " UTC" if len(text) >= 19 else text


def figures_of(report: dict[str, Any]) -> tuple[dict, dict]:
    verification = as_dict(report.get("verification"))
    return as_dict(verification.get("result")), as_dict(verification.get("failure"))


def verdict(status: str, figures: dict, failure: dict) -> dict[str, Any]:
    """``{"verdict", "summary", "reasons"}``: the job's own verdict when it gave one, else the status's."""
    name = figures.get("verdict") or failure.get("verdict") or STATUS_VERDICT.get(status, "pending")
    reasons = [str(r) for r in (figures.get("reasons") or failure.get("reasons") or []) if r]
    if not reasons and failure.get("message"):
        reasons.append(str(failure["message"]))
    failed = [str(name) for name in failure.get("failed_gates") or []]
    if failed and not any("gate" in reason for reason in reasons):
        reasons.append("failed gates: " + ", ".join(failed))
    return {"verdict": name, "summary": VERDICT_WORDS.get(name, name), "reasons": reasons}


def _gate_description(gate: dict) -> str:
    if gate.get("description"):
        return str(gate["description"])
    name = str(gate.get("name", ""))
    return next((hint for prefix, hint in GATE_HINTS if name.startswith(prefix)), name.replace("_", " "))


def band_text(gate: dict) -> str:
    low, high = number(gate.get("low")), number(gate.get("high"))
    if low is not None and high is not None:
        return f"within [{fmt(low)}, {fmt(high)}]"
    comparison, threshold = gate.get("comparison"), gate.get("threshold")
    symbol = {"<=": "≤", ">=": "≥", "<": "<", ">": ">", "within": "within"}.get(comparison, comparison or "")
    return f"{symbol} {fmt(threshold)}".strip() if threshold is not None else symbol or "-"


def gate_rows(figures: dict, failure: dict) -> list[dict[str, Any]]:
    """One row per gate, in the job's order."""
    gates = figures.get("gates") or failure.get("gates") or []
    rows = []
    for gate in gates if isinstance(gates, list) else []:
        if not isinstance(gate, dict):
            continue
        control = gate.get("control_value")
        control_passed = gate.get("control_passed")
        rows.append({
            "name": str(gate.get("name", "?")), "kind": gate.get("kind"), "description": _gate_description(gate),
            "value": gate.get("value"), "low": gate.get("low"), "high": gate.get("high"),
            "comparison": gate.get("comparison"), "threshold": gate.get("threshold"),
            "passed": bool(gate.get("passed")), "control_value": control, "control_passed": control_passed,
            "value_text": fmt(gate.get("value")), "band_text": band_text(gate),
            "control_text": "-" if control is None else fmt(control) + (
                "" if control_passed is None else (" (passes)" if control_passed else " (fails)")),
            "result_text": "pass" if gate.get("passed") else "FAIL",
        })
    return rows


def event_sentence(event_type: str, payload: dict) -> str:
    stage = STAGE_WORDS.get(str(payload.get("stage")), payload.get("stage"))
    version = as_dict(payload.get("version"))
    sentences = {
        "request.received": "Request received",
        "request.queued": "Queued for a worker",
        "request.running": f"Started: {stage}",
        "request.stage": f"Stage: {stage}",
        "request.resumed": "Started over (the worker running it stopped)",
        "request.rebased": f"Moved onto version {payload.get('to_version')} ({payload.get('reason', '')})",
        "request.published": f"Published version {version.get('number', '?')}",
        "request.verification_failed": "A verification gate failed; nothing published",
        "request.inconclusive": "Verification inconclusive; nothing published",
        "request.failed": "Stopped with an error",
        "request.rejected": "Rejected",
        "request.cancelled": "Cancelled",
        "request.due_extended": f"Due date extended by {payload.get('days')} days: {payload.get('reason', '')}",
        "model.version_registered": f"Version {payload.get('version')} registered",
        "model.version_withdrawn": f"Version {payload.get('version')} withdrawn (it holds the erased data)",
        "model.version_artifacts_deleted": f"Files of withdrawn version {payload.get('version')} deleted",
        "model.version_restored": f"Version {payload.get('version')} restored by an admin",
    }
    return sentences.get(event_type, event_type)


def recall_rows(figures: dict) -> list[dict[str, str]]:
    """R@1/5/10 (image->text, text->image) before -> after, per split."""
    after, before = as_dict(figures.get("metrics")), as_dict(figures.get("before"))
    rows = []
    for split in [s for s in ("forget", "retain", "retained_heldout", "test") if s in after] + \
            [s for s in after if s not in SPLIT_WORDS]:
        now, then = as_dict(after.get(split)), as_dict(before.get(split))
        cells = {}
        for key in ("i2t_r1", "i2t_r5", "t2i_r1", "t2i_r5"):
            cells[key] = f"{fmt(then.get(key), 3)} → {fmt(now.get(key), 3)}"
        rows.append({"split": SPLIT_WORDS.get(split, split), **cells})
    return rows


def membership_rows(figures: dict) -> list[dict[str, str]]:
    after, before = as_dict(figures.get("membership")), as_dict(figures.get("membership_before"))
    rows = []
    for key in sorted(k for k, v in after.items() if number(v) is not None and k.endswith("auc")):
        rows.append({"attack": key.replace("_", " "), "before": fmt(before.get(key)), "after": fmt(after[key])})
    return rows


def matched_rows(figures: dict) -> list[dict[str, str]]:
    matched = as_dict(figures.get("matched"))
    rows = []
    for who in ("parent", "candidate"):
        entry = as_dict(matched.get(who))
        if entry:
            rows.append({"model": "before (parent)" if who == "parent" else "after (new version)",
                         "members": fmt(entry.get("members")), "nonmembers": fmt(entry.get("nonmembers"))})
    return rows


def key_value_rows(values: Any, prefix: str = "") -> list[tuple[str, str]]:
    """Flat ``(name, value)`` rows of nested settings (parameters, cost, stage times): never raw JSON."""
    rows: list[tuple[str, str]] = []
    for key, value in as_dict(values).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            rows += key_value_rows(value, name + ".")
        elif isinstance(value, list):
            shown = ", ".join(fmt(item) for item in value[:12]) + (" ..." if len(value) > 12 else "")
            rows.append((name, shown))
        else:
            rows.append((name, fmt(value)))
    return rows


def repair_facts(record: Any) -> dict[str, Any] | None:
    """How the method's repair stopped (EASE's record, ``ease_engine.erasure.repair_record``), in words said from
    what happened (the steps taken, whether the criterion was met), its measures as one line, never raw JSON; None
    where the method has no such record."""
    record = as_dict(record)
    if not record:
        return None
    criterion = as_dict(record.get("criterion"))
    steps = record.get("steps")
    if not steps:
        stopped = "no displacement ran"
    elif not criterion:
        stopped = f"after the tuned steps ({fmt(steps)})"
    elif criterion.get("reached"):
        stopped = f"once the retained utility was back at the parent's (step {fmt(steps)})"
    else:
        stopped = f"at its most steps ({fmt(steps)}), short of the parent's retained utility"
    facts: dict[str, Any] = {"stopped": stopped, "rule": record.get("why"), "steps": steps}
    if criterion:
        facts["parent's mean recall"] = criterion.get("parent_mean_recall")
        facts["target mean recall"] = criterion.get("target_mean_recall")
        tolerance = as_dict(criterion.get("tolerance"))
        if tolerance:  # records before 2026-12-05's seventh stop have neither
            facts["parent's standard error"] = criterion.get("parent_standard_error")
            facts["tolerance"] = (f"{fmt(tolerance.get('points'))} points"
                                  + (" (the parent's standard error)" if tolerance.get("rule") == "standard_error"
                                     else ""))
        facts["measured"] = "; ".join(f"step {fmt(m.get('step'))}: {fmt(m.get('mean_recall'))}"
                                      for m in criterion.get("measures") or [] if isinstance(m, dict))
    return facts


def method_rows(report: dict[str, Any], figures: dict[str, Any]) -> list[tuple[str, str]]:
    """The report's "method, parameters and cost" table (the HTML page and the PDF alike)."""
    return key_value_rows({"cost": figures.get("cost"), "stage seconds": figures.get("stage_seconds"),
                           "parameters": report.get("parameters"), "repair": repair_facts(figures.get("repair_stop"))})


def page_one_facts(report: dict[str, Any]) -> list[list[str]]:
    """Page 1's table: what was erased, legal basis, dates, the new version and its digests, the parent's status."""
    request, lineage = report["request"], report["lineage"]
    pairs = request.get("pair_ids")
    erased = "everything" if request["scope"] == "client" else f"{len(pairs or [])} image-text pairs"
    result, base = lineage.get("result_version"), lineage.get("base_version")
    signature, certificate = report.get("signature") or {}, report["certificate"]
    legal = report["legal_basis"]
    due = when(request.get("due_at")) if request.get("due_at") else "-"
    if request.get("due_extension_reason"):
        due += f" (extended: {request['due_extension_reason']})"
    rows = [
        ["What was erased", f"{erased} that federation client {request['client_id']} contributed (scope "
                            f"{request['scope']})"],
        ["Data-subject reference", f"sha256 {request['subject_ref_sha256']}" if request.get("subject_ref_sha256")
         else "none given"],
        ["Legal basis", legal["description"]],
        ["Reason given", legal.get("reason") or "-"],
        ["Requested by", request["requester"]],
        ["Requested", when(request["created_at"])],
        ["Completed", when(request.get("finished_at")) if request.get("finished_at") else "not yet"],
        ["Due", due],
    ]
    if result:
        rows += [["New version", f"v{result['version']} ({result['status']})"],
                 ["Its content hash", result["content_hash"]],
                 ["Signature digest (model.sig)", f"sha256:{signature['digest']}" if signature.get("digest")
                  else "no signature file"],
                 ["Certificate digest", f"sha256:{certificate['digest']}" if certificate["digest"]
                  else "no certificate"]]
    withdrawn = {entry["version"]: entry for entry in lineage.get("withdrawn") or []}
    if base:
        parent = withdrawn.get(base["version"]) or base
        status = parent["status"] + (" by this request" if parent.get("withdrawn_by_request") == str(request["id"])
                                     else "")
        rows.append(["Parent version", f"v{parent['version']}: {status}"])
    others = [f"v{number}" for number in withdrawn if not base or number != base["version"]]
    if others:
        rows.append(["Also withdrawn", ", ".join(others) + " (they held the erased data)"])
    return rows
