"""The schema of ``report.json`` (``ErasureReport``): what the PDF and the HTML twin render."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.schemas import ErasureRequestOut

REPORT_FORMAT = "lethe.erasure-report/2"


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class LegalBasisOut(BaseModel):
    code: str
    description: str
    reason: str | None = None


class Outcome(BaseModel):
    verdict: str = Field(description="passed, failed, inconclusive, or (not verified) pending, error, rejected, "
                                     "cancelled")
    summary: str = Field(description="The verdict in plain words")
    reasons: list[str] = Field(description="Why (inconclusive, failed, error); empty when passed")


class GateRow(BaseModel):
    name: str
    kind: str | None = Field(None, description="forgetting or utility")
    description: str = Field(description="What the gate measures, in plain words")
    value: float | None = None
    low: float | None = None
    high: float | None = None
    comparison: str | None = Field(None, description="within, <= or >=")
    threshold: float | None = None
    passed: bool
    control_value: float | None = Field(None, description="The same gate on the unchanged parent (no-op control)")
    control_passed: bool | None = None
    value_text: str
    band_text: str
    control_text: str
    result_text: str


class TimelineEntry(BaseModel):
    seq: int
    type: str
    at: str
    summary: str = Field(description="The event in words, with the stage name")
    payload: dict[str, Any]


class VersionSummary(BaseModel):
    version: int
    status: str
    path: str
    content_hash: str
    parent_version: int | None = None
    created_at: str
    created_by_request: str | None = None
    withdrawn_by_request: str | None = None
    withdrawn_at: str | None = None
    artifacts_deleted_at: str | None = None


class Lineage(BaseModel):
    model: str
    base_version: VersionSummary | None = None
    result_version: VersionSummary | None = None
    ancestry: list[VersionSummary]
    withdrawn: list[VersionSummary] = Field(description="Versions this request withdrew (they held the erased data)")


class SignatureInfo(BaseModel):
    files: list[dict[str, Any]]
    digest: str | None = Field(None, description="sha256 of the version's model.sig")
    manifest_signature: Any = None
    how_to_verify: str


class CertificateInfo(BaseModel):
    available: bool
    digest: str | None = Field(None, description="sha256 of the certificate as served (its canonical JSON)")
    subject: str | None = None
    link: str


class Checkpoint(BaseModel):
    seq: int
    hash: str
    created_at: str


class AuditChainInfo(BaseModel):
    rule: str
    events: list[dict[str, Any]]
    head: dict[str, Any]
    verification: dict[str, Any]
    checkpoint: Checkpoint | None = Field(None, description="The signed checkpoint of this publication")
    how_to_verify: str


class VerifyStep(BaseModel):
    step: str
    command: str


class Verification(BaseModel):
    status: str
    result: _Open | None = Field(None, description="The figures the job recorded (workers/figures.py)")
    failure: _Open | None = None


class ErasureReport(BaseModel):
    report_format: Literal["lethe.erasure-report/2"] = REPORT_FORMAT
    generated_at: datetime
    request: ErasureRequestOut
    legal_basis: LegalBasisOut
    outcome: Outcome
    gates: list[GateRow]
    timeline: list[TimelineEntry]
    lineage: Lineage
    method: str | None = None
    parameters: dict[str, Any] | None = None
    verification: Verification
    signature: SignatureInfo | None = None
    certificate: CertificateInfo
    audit_chain: AuditChainInfo
    verify_offline: list[VerifyStep]
