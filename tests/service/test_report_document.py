"""The report a person can read: page 1 of the PDF holds the verdict, the gate table and the signature digest;
no page carries raw JSON; any script prints; headings stay with their content; the HTML twin says the same."""

from __future__ import annotations

import re

import pytest
from service_test_helpers import MODEL, bearer, submit

from service.auth import create_token
from tests.db_helpers import grant
from tests.pdf_text import pdf_pages
from tests.publication_helpers import GATES, figures, publish
from workers.signing import ensure_key_pair

NAME = "Łukasz Żółć"
RAW_JSON = re.compile(r'[{\[]\s*"|"\s*:\s*[{\["\d]')  # an object or list of strings, or "key": value
HEADINGS = ("Verification gates", "Evidence: retrieval before → after the erasure", "Evidence: membership inference",
            "Timeline", "Lineage", "Audit chain", "How to verify this report offline")


@pytest.fixture
def signing_key(tmp_path):
    private, _ = ensure_key_pair(tmp_path / "keys" / "signing.pem")
    return private


@pytest.fixture
def polish(db) -> str:
    with db.transaction() as session:
        token = create_token(session, NAME, "requester")
        grant(session, token, MODEL)
        return token


def _published(client, auth, polish, db, artifact_dir, signing_key, result=None, **body) -> str:
    request_id = submit(client, bearer(polish), reason=f"{NAME} asked; <script>alert(1)</script>", **body)
    publish(db, artifact_dir, request_id, signing_key, result)
    return request_id


def test_page_one_holds_the_verdict_the_gates_and_the_signature_digest(client, auth, registered_model, polish, db,
                                                                         artifact_dir, signing_key):
    request_id = _published(client, auth, polish, db, artifact_dir, signing_key)
    report = client.get(f"/v1/erasure-requests/{request_id}/report.json", headers=auth("compliance")).json()
    signature_digest = report["signature"]["digest"]
    assert re.fullmatch(r"[0-9a-f]{64}", signature_digest)
    response = client.get(f"/v1/erasure-requests/{request_id}/report.pdf", headers=auth("compliance"))
    assert response.status_code == 200 and response.headers["content-type"] == "application/pdf"
    pages = pdf_pages(response.content)
    first = pages[0]
    assert "Verdict: PASSED" in first
    assert "What it measures" in first and "No-op control" in first
    for gate in GATES:  # every gate is a row of page 1's table, with its value and its control's
        assert gate["name"] in first, gate["name"]
    assert "38.5" in first and "within [-4, 4]" in first and "≥ 38" in first
    assert signature_digest in first.replace(" ", "") or signature_digest in first
    assert report["certificate"]["digest"] in first
    assert NAME in first  # the requester's name survives (DejaVu, not Latin-1)
    assert "v1: withdrawn by this request" in first and "art" not in first.lower().split("legal basis")[0][:0]
    assert "Due" in first and "Requested" in first and "Completed" in first
    assert len(pages) >= 3 and all(f"of {len(pages)}" in page for page in pages)  # page numbers
    for number, page in enumerate(pages, start=1):
        assert not RAW_JSON.search(page), f"page {number} carries raw JSON: {RAW_JSON.search(page).group(0)!r}"
        lines = [line.strip() for line in page.splitlines() if line.strip()]
        body = [line for line in lines if not line.startswith("Lethe erasure report ·")]
        assert body and body[-1] not in HEADINGS, f"page {number} ends with the heading {body[-1]!r}"
    text = "\n".join(pages)
    assert "Stage: excising the erased contribution" in text  # the timeline names its stages
    assert "lethe-admin verify-certificate certificate.json --public-key key.pem" in text
    # how the repair stopped, in words (its measures on one line, not the record's JSON)
    flat = " ".join(text.split())
    assert "once the retained utility was back at the parent's" in flat and "wholly exclusive" in flat
    assert "step 30: 40.25; step 40: 43.5; step 50: 44.4" in flat


def test_an_inconclusive_outcome_is_said_with_its_reasons(client, auth, registered_model, polish, db, artifact_dir,
                                                         signing_key):
    request_id = submit(client, bearer(polish))
    result = figures("inconclusive")
    result["reasons"] = ["the parent shows no measurable knowledge of the erased pairs"]
    from service import lifecycle

    with db.transaction() as session:
        request = lifecycle.load_for_update(session, request_id)
        lifecycle.mark_running(session, request, "verifying", 0.5)
        request.result = result
        lifecycle.mark_inconclusive(session, request, result["reasons"], result["gates"])
    pages = pdf_pages(client.get(f"/v1/erasure-requests/{request_id}/report.pdf", headers=auth("compliance")).content)
    assert "Verdict: INCONCLUSIVE" in pages[0]
    assert "the parent shows no measurable knowledge of the erased pairs" in pages[0]
    assert "PASSED" not in "\n".join(pages)
    assert "New version" not in pages[0]  # nothing was published


def test_a_request_without_figures_still_renders(client, auth, registered_model, polish):
    request_id = submit(client, bearer(polish))
    pages = pdf_pages(client.get(f"/v1/erasure-requests/{request_id}/report.pdf", headers=auth("compliance")).content)
    assert "NOT FINISHED" in pages[0] and "No gate figures were recorded" in pages[0]


def test_the_html_twin_says_the_same_and_escapes_what_requesters_wrote(client, auth, registered_model, polish, db,
                                                                       artifact_dir, signing_key):
    request_id = _published(client, auth, polish, db, artifact_dir, signing_key)
    response = client.get(f"/v1/erasure-requests/{request_id}/report.html", headers=auth("compliance"))
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    html = response.text
    assert "Verdict: PASSED" in html and NAME in html
    assert all(gate["name"] in html for gate in GATES)
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;" in html
    assert html.count("data:image/png;base64,") == 4  # recall, gates, angles, similarity
    assert "once the retained utility was back at the parent&#39;s" in html and "step 50: 44.4" in html


def test_report_json_follows_its_schema(client, auth, registered_model, polish, db, artifact_dir, signing_key):
    from service.reporting.schema import ErasureReport

    request_id = _published(client, auth, polish, db, artifact_dir, signing_key)
    body = client.get(f"/v1/erasure-requests/{request_id}/report.json", headers=auth("compliance")).json()
    report = ErasureReport.model_validate(body)
    assert report.outcome.verdict == "passed" and len(report.gates) == len(GATES)
    assert report.gates[0].control_value == 38.5 and report.gates[0].band_text == "within [-4, 4]"
    assert [v.version for v in report.lineage.withdrawn] == [1]
    assert report.lineage.model == MODEL


def test_how_the_repair_stopped_is_said_from_what_happened():
    """The words follow the steps taken and whether the criterion was met, never the setting alone."""
    from service.reporting.summary import repair_facts

    met = figures()["repair_stop"]
    assert repair_facts(met)["stopped"] == "once the retained utility was back at the parent's (step 50)"
    short = {**met, "steps": 120, "criterion": {**met["criterion"], "reached": False}}
    assert repair_facts(short)["stopped"] == "at its most steps (120), short of the parent's retained utility"
    fixed = {"requested": "auto", "until": "steps", "why": "no block is wholly exclusive", "steps": 30}
    assert repair_facts(fixed)["stopped"] == "after the tuned steps (30)" and "measured" not in repair_facts(fixed)
    assert repair_facts({**met, "steps": 0})["stopped"] == "no displacement ran"
    assert repair_facts(None) is None and repair_facts([{"round": 1}]) is None  # a baseline's own history
    # the tolerance says where it came from; a record from before it was recorded says nothing of it
    within_error = {**met, "criterion": {**met["criterion"], "parent_standard_error": 2.4,
                                         "tolerance": {"rule": "standard_error", "points": 2.4}}}
    assert repair_facts(within_error)["tolerance"] == "2.4 points (the parent's standard error)"
    in_points = {**met, "criterion": {**met["criterion"], "parent_standard_error": 2.4,
                                      "tolerance": {"rule": "points", "points": 0.0}}}
    assert repair_facts(in_points)["tolerance"] == "0 points"
    assert repair_facts(in_points)["parent's standard error"] == 2.4  # on record whatever the rule
    assert "tolerance" not in repair_facts(met) and "parent's standard error" not in repair_facts(met)
