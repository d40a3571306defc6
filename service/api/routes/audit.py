"""/v1/audit: verify the hash chain."""

from __future__ import annotations

from fastapi import APIRouter

from service.api.deps import ComplianceOnly, SessionDep
from service.audit import verify_chain
from service.auth import Principal

router = APIRouter(prefix="/v1/audit", tags=["audit"])


@router.get("/verify")
def verify(session: SessionDep, _principal: Principal = ComplianceOnly):
    """Walk the whole chain; ``ok`` false names the first broken link (seq, expected, found)."""
    return verify_chain(session).as_dict()
