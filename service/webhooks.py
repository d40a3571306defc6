"""Webhooks: the outcome of a request POSTed to its callback URL, HMAC-signed, retried with back-off.

A delivery row (``webhook_deliveries``) is written in the transaction that finishes the request
(``lifecycle``), like an outbox row, so a notification is never lost nor sent for a change that was rolled
back. The outbox dispatcher (``service.housekeeping``, every pass) sends the due rows: a 2xx answer marks a
row ``delivered``; anything else is retried after 10 s, 20 s, 40 s ... (at most 1 h apart) until
``LETHE_WEBHOOK_MAX_ATTEMPTS``, then ``failed``. The rows are the delivery log
(``GET /v1/erasure-requests/{id}/webhooks``). Delivery is at least once: receivers dedupe on
``X-Lethe-Delivery``.

The URL is the request's ``callback_url``, else its token's; the key is the token's webhook secret
(``lethe-admin token webhook``). Each POST carries::

    X-Lethe-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>

Receivers recompute it over the raw body (``verify_signature``) and refuse old timestamps (replays).
"""

from __future__ import annotations

import hashlib
import hmac
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from lethe_format.audit_chain import canonical_json
from service.db import OUTBOX_CHANNEL
from service.models import ApiToken, ErasureRequest, WebhookDelivery, WebhookStatus, as_utc, utcnow

SIGNATURE_HEADER = "X-Lethe-Signature"
FIRST_RETRY_SECONDS, MAX_RETRY_SECONDS = 10.0, 3600.0
Post = Callable[[str, bytes, dict[str, str]], int]  # (url, body, headers) -> HTTP status; raises on no answer


def signature_header(secret: str, body: bytes, timestamp: int | None = None) -> str:
    timestamp = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify_signature(secret: str, header: str, body: bytes, tolerance_seconds: float = 300,
                     now: float | None = None) -> bool:
    """What a receiver runs: the header's HMAC matches the raw body and its timestamp is recent."""
    try:
        parts = dict(item.split("=", 1) for item in header.split(","))
        timestamp = int(parts["t"])
    except (ValueError, KeyError):
        return False
    expected = signature_header(secret, body, timestamp).split("v1=", 1)[1]
    fresh = abs((time.time() if now is None else now) - timestamp) <= tolerance_seconds
    return fresh and hmac.compare_digest(expected, parts.get("v1", ""))


def notification_payload(request: ErasureRequest, event: str, delivery_id: uuid.UUID) -> dict[str, Any]:
    base = f"/v1/erasure-requests/{request.id}"
    failure = request.failure if isinstance(request.failure, dict) else {}
    return {
        "delivery_id": str(delivery_id), "event": event, "request_id": str(request.id), "status": request.status,
        "model": request.model_name, "result_version": (request.result or {}).get("version", {}).get("number")
        if isinstance(request.result, dict) else None,
        "failure_kind": failure.get("kind"), "occurred_at": as_utc(request.updated_at).isoformat(),
        "links": {"self": base, "report": f"{base}/report.json", "certificate": f"{base}/certificate"},
    }


def enqueue_notification(session: Session, request: ErasureRequest, event: str) -> WebhookDelivery | None:
    """A delivery row for this change of ``request`` (in the caller's transaction), if it has a callback URL
    and its token a webhook secret."""
    token = session.get(ApiToken, request.requester_token_id)
    url = request.callback_url or (token.callback_url if token is not None else None)
    if not url or token is None or not token.webhook_secret:
        return None
    delivery_id = uuid.uuid4()
    delivery = WebhookDelivery(request_id=request.id, token_id=token.id, event=event, url=url,
                               payload=notification_payload(request, event, delivery_id),
                               status=WebhookStatus.PENDING.value, attempts=0, next_attempt_at=utcnow())
    session.add(delivery)
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text(f"NOTIFY {OUTBOX_CHANNEL}"))  # wakes a dispatcher, as a new outbox row does
    return delivery


def retry_delay(attempts: int) -> timedelta:
    return timedelta(seconds=min(FIRST_RETRY_SECONDS * 2 ** max(attempts - 1, 0), MAX_RETRY_SECONDS))


def httpx_post(timeout: float) -> Post:
    def post(url: str, body: bytes, headers: dict[str, str]) -> int:
        import httpx

        return httpx.post(url, content=body, headers=headers, timeout=timeout, follow_redirects=False).status_code

    return post


_DUE = (select(WebhookDelivery)
        .where(WebhookDelivery.status == WebhookStatus.PENDING.value)
        .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.id))


def deliver_due(session: Session, post: Post, max_attempts: int, now: datetime | None = None,
                limit: int = 20) -> dict[str, int]:
    """Send the pending deliveries that are due (locked, skipping rows another dispatcher holds); commit."""
    now = now or utcnow()
    counts = {"delivered": 0, "retry": 0, "failed": 0}
    rows = session.scalars(_DUE.where(WebhookDelivery.next_attempt_at <= now).limit(limit)
                           .with_for_update(skip_locked=True)).all()
    secrets = {row.token_id: session.scalar(select(ApiToken.webhook_secret).where(ApiToken.id == row.token_id))
               for row in rows}
    for row in rows:
        body = canonical_json(row.payload).encode("utf-8")
        headers = {"Content-Type": "application/json", "User-Agent": "lethe-webhooks/1",
                   "X-Lethe-Event": row.event, "X-Lethe-Delivery": str(row.payload.get("delivery_id", row.id))}
        secret = secrets.get(row.token_id)
        row.attempts += 1
        try:
            if not secret:
                raise RuntimeError("the token has no webhook secret any more")
            headers[SIGNATURE_HEADER] = signature_header(secret, body)
            status = post(row.url, body, headers)
            row.last_status_code, row.last_error = status, None if 200 <= status < 300 else f"HTTP {status}"
        except Exception as exc:  # no answer (refused, timed out, bad URL)
            status = None
            row.last_status_code, row.last_error = None, f"{type(exc).__name__}: {exc}"[:500]
        if status is not None and 200 <= status < 300:
            row.status, row.delivered_at = WebhookStatus.DELIVERED.value, now
            counts["delivered"] += 1
        elif row.attempts >= max_attempts:
            row.status = WebhookStatus.FAILED.value
            counts["failed"] += 1
        else:
            row.next_attempt_at = now + retry_delay(row.attempts)
            counts["retry"] += 1
    session.commit()
    return counts


def deliveries_of(session: Session, request_id: uuid.UUID) -> list[WebhookDelivery]:
    return list(session.scalars(select(WebhookDelivery).where(WebhookDelivery.request_id == request_id)
                                .order_by(WebhookDelivery.id)))
