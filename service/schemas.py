"""Request and response bodies (pydantic v2). Request bodies forbid unknown fields (422)."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from service.models import RequestStatus, Role, Stage


class LegalBasis(StrEnum):
    """Why the data must go. The six grounds of GDPR Art. 17(1), plus a federation member's exit
    (contractual, not a data-subject request). A closed list so reports can name the ground;
    details go into the free-text ``reason``."""

    ART17_1_A = "art17_1_a"
    ART17_1_B = "art17_1_b"
    ART17_1_C = "art17_1_c"
    ART17_1_D = "art17_1_d"
    ART17_1_E = "art17_1_e"
    ART17_1_F = "art17_1_f"
    FEDERATION_EXIT = "federation_exit"


LEGAL_BASIS_DESCRIPTIONS = {
    LegalBasis.ART17_1_A: "GDPR Art. 17(1)(a): the data are no longer necessary for the purposes of "
                          "processing",
    LegalBasis.ART17_1_B: "GDPR Art. 17(1)(b): the data subject withdraws consent and there is no other "
                          "legal ground",
    LegalBasis.ART17_1_C: "GDPR Art. 17(1)(c): the data subject objects under Art. 21 and there are no "
                          "overriding legitimate grounds",
    LegalBasis.ART17_1_D: "GDPR Art. 17(1)(d): the data have been unlawfully processed",
    LegalBasis.ART17_1_E: "GDPR Art. 17(1)(e): erasure is required by a legal obligation",
    LegalBasis.ART17_1_F: "GDPR Art. 17(1)(f): the data were collected in relation to information society "
                          "services offered to a child (Art. 8(1))",
    LegalBasis.FEDERATION_EXIT: "A federation member leaves and its contribution must be removed "
                                "(contractual; not a data-subject request)",
}


MAX_INT32 = 2**31 - 1  # version numbers and counts are 32-bit integer columns
MAX_OFFSET = 1_000_000


def storable_text(value: str) -> str:
    """Refuse what no column can store and no answer can echo: NUL and lone surrogates (JSON ``\\ud800``)."""
    if "\x00" in value:
        raise ValueError("must not contain a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode (a lone surrogate was sent)") from None
    return value


def _int_to_str(value: Any) -> Any:
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


Text = Annotated[str, AfterValidator(storable_text)]
Identifier = Annotated[
    str, BeforeValidator(_int_to_str), StringConstraints(strip_whitespace=True, min_length=1, max_length=200,
                                                         pattern=r"^[^\x00-\x1f\x7f]+$"),
    AfterValidator(storable_text),
]
ModelNameText = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$"),
                          AfterValidator(storable_text)]


class ErasureRequestCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"scope": "client", "client_id": "2", "model": "default", "legal_basis": "federation_exit",
         "reason": "Hospital B leaves the federation", "subject_ref": "DSR-2026-0042"},
        {"scope": "samples", "client_id": "1", "pair_ids": ["img-0042", "img-0043"], "model": "default",
         "legal_basis": "art17_1_b", "reason": "The patient withdrew consent",
         "callback_url": "https://dsr.example.org/hooks/lethe"},
    ]})

    scope: Literal["client", "samples"] = Field(
        description="'client': remove everything a federation client contributed; 'samples': remove the "
                    "listed image-text pairs of that client."
    )
    client_id: Identifier = Field(description="The client id as in the model version's clients.json.")
    pair_ids: list[Identifier] | None = Field(
        default=None, max_length=100_000, description="Required for scope 'samples'; absent for 'client'."
    )
    model: ModelNameText = Field(description="Registered model name.")
    legal_basis: LegalBasis
    reason: Annotated[Text, StringConstraints(max_length=4000)] | None = None
    subject_ref: Annotated[Text, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)] | None = \
        Field(default=None, description="Your reference of the data subject (e.g. your DSR ticket or customer "
                                        "id). Only its SHA-256 is stored; list requests by it with "
                                        "?subject_ref=.", examples=["DSR-2026-0042"])
    callback_url: Annotated[Text, StringConstraints(max_length=2000)] | None = Field(
        default=None, description="Where the outcome is POSTed when the request finishes (HMAC-signed with the "
                                  "token's webhook secret; default: the token's callback URL).",
        examples=["https://dsr.example.org/hooks/lethe"])

    @field_validator("callback_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None:
            parsed = urlsplit(value)
            if parsed.scheme not in ("http", "https") or not parsed.hostname:
                raise ValueError("must be an absolute http(s) URL")
        return value

    @model_validator(mode="after")
    def _pair_ids_match_scope(self) -> ErasureRequestCreate:
        if self.scope == "samples" and not self.pair_ids:
            raise ValueError("scope 'samples' needs a non-empty 'pair_ids' list")
        if self.scope == "client" and self.pair_ids:
            raise ValueError("scope 'client' erases the whole client: leave 'pair_ids' out")
        if self.pair_ids:
            self.pair_ids = list(dict.fromkeys(self.pair_ids))  # drop duplicates, keep order
        return self


class Links(BaseModel):
    self: str
    report: str
    report_pdf: str
    report_html: str
    certificate: str
    cancel: str


class VersionRef(BaseModel):
    model: str
    version: int
    content_hash: str


class ErasureRequestOut(BaseModel):
    id: uuid.UUID
    status: RequestStatus
    stage: Stage | None = None
    progress: float
    scope: str
    client_id: str
    pair_ids: list[str] | None = None
    model: str
    base_version: VersionRef | None = None
    legal_basis: LegalBasis
    reason: str | None = None
    requester: str
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    due_at: datetime | None = Field(None, description="When the answer is due: receipt + LETHE_RESPONSE_DAYS "
                                                      "(GDPR Art. 12(3)), later if extended")
    due_extension_reason: str | None = None
    subject_ref_sha256: str | None = Field(None, description="SHA-256 of the data-subject reference given")
    callback_url: str | None = None
    result_version: VersionRef | None = None
    result: dict[str, Any] | None = None
    failure: dict[str, Any] | None = None
    links: Links


class ErasureRequestAccepted(BaseModel):
    id: uuid.UUID
    status: RequestStatus
    links: Links


class ErasureRequestPage(BaseModel):
    items: list[ErasureRequestOut]
    limit: int
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page (same filters); null: last "
                                                "page")
    offset: int | None = Field(None, description="Deprecated offset paging: the offset given")
    next_offset: int | None = Field(None, description="Deprecated offset paging: the next offset")


class DueExtension(BaseModel):
    model_config = ConfigDict(extra="forbid")

    days: int = Field(ge=1, le=60, description="Days added to the due date; at most 60 in all (GDPR Art. 12(3): "
                                               "two further months where necessary)")
    reason: Annotated[Text, StringConstraints(strip_whitespace=True, min_length=1, max_length=2000)] = Field(
        description="Why the extension is necessary (told to the data subject within the first month)")


class VersionRegister(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: Annotated[Text, StringConstraints(min_length=1, max_length=1024)] = Field(
        description="Version directory, relative to LETHE_ARTIFACT_DIR (or absolute inside it). It must "
                    "hold manifest.json (or metadata.json) and clients.json. At most 1024 characters, each "
                    "component at most 255 bytes."
    )
    parent_version: int | None = Field(
        default=None, ge=1, le=MAX_INT32,
        description="Defaults to the manifest's 'parent_version', else the latest version.",
    )

    @model_validator(mode="after")
    def _components_fit(self) -> VersionRegister:
        if any(len(part.encode("utf-8")) > 255 for part in self.path.split("/")):
            raise ValueError("path: a component is longer than 255 bytes")
        return self


class ClientSummary(BaseModel):
    client_id: str
    n_samples: int | None = None
    n_pair_ids: int


class ModelVersionOut(BaseModel):
    model: str
    version: int
    parent_version: int | None
    status: str
    path: str
    content_hash: str
    created_at: datetime
    created_by_request: uuid.UUID | None = None
    withdrawn_by_request: uuid.UUID | None = Field(None, description="The erasure that withdrew it (it held the "
                                                                     "erased data); downloads answer 410")
    withdrawn_at: datetime | None = None
    artifacts_deleted_at: datetime | None = Field(None, description="Its files were deleted after the retention "
                                                                    "window")
    manifest: dict[str, Any]
    clients: list[ClientSummary]
    files: list[dict[str, Any]]
    links: dict[str, str]


class ModelOut(BaseModel):
    name: str
    created_at: datetime
    latest_version: int | None
    versions: list[int]


class GrantCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: ModelNameText = Field(description="The model name.")
    client_id: Identifier = Field(description="A client id of the model's clients.json, or '*' for every client.")


class GrantOut(BaseModel):
    token_id: int
    model: str
    client_id: str
    created_at: datetime


class TokenOut(BaseModel):
    id: int
    name: str
    role: Role
    token: str


class WebhookDeliveryOut(BaseModel):
    id: int
    event: str
    url: str
    status: Literal["pending", "delivered", "failed"]
    attempts: int
    next_attempt_at: datetime
    last_status_code: int | None = None
    last_error: str | None = None
    created_at: datetime
    delivered_at: datetime | None = None
