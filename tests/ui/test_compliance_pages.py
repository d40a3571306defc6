"""The compliance officers' pages in a real headless browser (Debian's chromium, driven by Playwright): sign in
with a token, list the requests with status and due date, open the published one, download its report (a PDF
whose page 1 holds the verdict) and certificate, verify the audit chain. Screenshots go to a temporary folder,
or to ``LETHE_UI_SCREENSHOTS`` (``docs/screenshots`` holds the committed ones)::

    LETHE_UI_SCREENSHOTS=docs/screenshots python -m pytest tests/ui
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason="Debian's chromium is not installed (apt-get install chromium; ./run test "
                                       "installs it as root)")
playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is a dev dependency (pyproject [dev])")

from service.app import create_app  # noqa: E402
from service.auth import create_token  # noqa: E402
from service.db import Database  # noqa: E402
from service.settings import Settings  # noqa: E402
from tests.db_helpers import bearer, grant, reset_tables, temporary_schemas  # noqa: E402
from tests.pdf_text import pdf_pages  # noqa: E402
from tests.publication_helpers import federation_version_dir, publish  # noqa: E402
from workers.signing import ensure_key_pair  # noqa: E402

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
MODEL = "clip-demo"
OFFICER = "Łukasz Żółć"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]



@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The API on 127.0.0.1 (uvicorn in a thread) with the demo's situation: a federation version, the exclusive
    client's erasure published (v1 withdrawn) and a second request still queued."""
    import uvicorn
    from fastapi.testclient import TestClient

    root = tmp_path_factory.mktemp("ui")
    artifacts = root / "artifacts"
    key, public = ensure_key_pair(root / "keys" / "signing.pem")
    with temporary_schemas("lethe_ui") as make:
        url = make()
        db = Database(url)
        reset_tables(db)
        config = Settings(database_url=url, broker_url="memory://", artifact_dir=artifacts, outbox_poll_seconds=0,
                          signing_key=key, signing_public_key=public)
        app = create_app(config, database=db, sender=lambda name, payload: payload.get("task_id"))
        with db.transaction() as session:
            officer = create_token(session, OFFICER, "compliance")
            requester = create_token(session, "hospital-a", "requester")
            grant(session, requester, MODEL)
            aggregator = create_token(session, "aggregator", "aggregator")
        federation_version_dir(artifacts / MODEL / "v1")
        with TestClient(app) as client:
            assert client.post(f"/v1/models/{MODEL}/versions", json={"path": f"{MODEL}/v1"},
                               headers=bearer(aggregator)).status_code == 201
            body = {"scope": "client", "client_id": "0", "model": MODEL, "legal_basis": "federation_exit",
                    "reason": "hospital A leaves the federation", "subject_ref": "DSR-2026-0042"}
            published = client.post("/v1/erasure-requests", json=body, headers=bearer(requester)).json()["id"]
            queued = client.post("/v1/erasure-requests", json={**body, "client_id": "1", "subject_ref": "DSR-2026-0043",
                                                               "legal_basis": "art17_1_b"},
                                 headers=bearer(requester)).json()["id"]
        publish(db, artifacts, published, key)
        port = _free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 60
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.started, "uvicorn did not start"
        try:
            yield {"base": f"http://127.0.0.1:{port}", "officer": officer, "requester": requester,
                   "published": published, "queued": queued, "public_key": public}
        finally:
            server.should_exit = True
            thread.join(timeout=30)
            db.dispose()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    with playwright_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, timeout=120_000)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def shots(tmp_path) -> Path:
    folder = Path(os.environ.get("LETHE_UI_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_an_officer_signs_in_opens_the_request_and_downloads_its_report(served, browser, shots, tmp_path):
    context = browser.new_context(accept_downloads=True, viewport={"width": 1280, "height": 860})
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto(f"{served['base']}/ui")
    page.screenshot(path=str(shots / "sign-in.png"))
    page.fill("#token", "not-a-token")
    page.click("button[type=submit]")
    assert "unknown, revoked" in page.inner_text("[role=alert]")  # a wrong token does not get in
    page.fill("#token", served["officer"])
    page.click("button[type=submit]")
    page.wait_for_url("**/ui/requests")
    table = page.inner_text("#requests")
    assert served["published"] in table and served["queued"] in table
    assert "published" in table and "queued" in table and "2026" in table  # status and due date columns
    page.screenshot(path=str(shots / "requests.png"), full_page=True)

    page.click(f"text={served['published']}")
    page.wait_for_url(f"**/ui/requests/{served['published']}")
    assert "PASSED" in page.inner_text("#verdict")
    assert "forget_vs_nonmember_i2t_r1" in page.inner_text("#gates")
    page.screenshot(path=str(shots / "request.png"), full_page=True)
    with page.expect_download() as download_info:
        page.click("#download-pdf")
    report = tmp_path / "report.pdf"
    download_info.value.save_as(report)
    first = pdf_pages(report.read_bytes())[0]
    if os.environ.get("LETHE_UI_SCREENSHOTS") and shutil.which("pdftoppm"):  # page 1 beside the page shots
        subprocess.run(["pdftoppm", "-r", "70", "-png", "-f", "1", "-l", "1", "-singlefile", str(report),
                        str(shots / "report-page-1")], check=True, timeout=120)
    assert "Verdict: PASSED" in first and "hospital-a" in first and OFFICER not in first  # names the requester
    with page.expect_download() as download_info:
        page.click("#download-certificate")
    certificate = tmp_path / "certificate.json"
    download_info.value.save_as(certificate)
    from lethe_format.certificate import verify_certificate

    checks = verify_certificate(json.loads(certificate.read_text()), served["public_key"].read_bytes())
    assert [check.ok for check in checks] == [True, True]

    page.click("text=Audit chain")
    page.wait_for_url("**/ui/audit")
    assert page.inner_text("#chain-status").startswith("Intact")
    page.screenshot(path=str(shots / "audit.png"), full_page=True)
    page.click("text=Sign out")
    page.wait_for_url("**/ui")
    page.goto(f"{served['base']}/ui/requests")
    assert page.url.endswith("/ui")  # signed out: back to the sign-in page
    context.close()


def test_a_requester_sees_only_its_requests_and_not_the_audit_page(served, browser):
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto(f"{served['base']}/ui")
    page.fill("#token", served["requester"])
    page.click("button[type=submit]")
    page.wait_for_url("**/ui/requests")
    assert "Audit chain" not in page.inner_text("header")
    response = page.goto(f"{served['base']}/ui/audit")
    assert response.status == 403
    context.close()

