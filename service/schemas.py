"""Request and response bodies (pydantic v2). Request bodies forbid unknown fields (422)."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, model_validator

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


def _int_to_str(value: Any) -> Any:
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


Identifier = Annotated[
    str, BeforeValidator(_int_to_str), StringConstraints(strip_whitespace=True, min_length=1, max_length=200)
]


class ErasureRequestCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scope: Literal["client", "samples"] = Field(
        description="'client': remove everything a federation client contributed; 'samples': remove the "
                    "listed image-text pairs of that client."
    )
    client_id: Identifier = Field(description="The client id as in the model version's clients.json.")
    pair_ids: list[Identifier] | None = Field(
        default=None, max_length=100_000, description="Required for scope 'samples'; absent for 'client'."
    )
    model: Annotated[str, StringConstraints(min_length=1, max_length=200)] = Field(
        description="Registered model name."
    )
    legal_basis: LegalBasis
    reason: Annotated[str, StringConstraints(max_length=4000)] | None = None

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
    offset: int
    next_offset: int | None


class VersionRegister(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: Annotated[str, StringConstraints(min_length=1, max_length=4096)] = Field(
        description="Version directory, relative to LETHE_ARTIFACT_DIR (or absolute inside it). It must "
                    "hold manifest.json (or metadata.json) and clients.json."
    )
    parent_version: int | None = Field(
        default=None, ge=1,
        description="Defaults to the manifest's 'parent_version', else the latest version.",
    )


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
    manifest: dict[str, Any]
    clients: list[ClientSummary]
    files: list[dict[str, Any]]
    links: dict[str, str]


class ModelOut(BaseModel):
    name: str
    created_at: datetime
    latest_version: int | None
    versions: list[int]


class TokenOut(BaseModel):
    id: int
    name: str
    role: Role
    token: str
