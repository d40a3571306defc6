"""``clients.json``: the federation's clients, their pair ids and what happened to them.

    {"clients": {"<client id>": {"n_samples": 1839, "pair_ids": ["...", ...],
                                 "excluded": false, "erased": false, "erased_pair_hashes": []}}}

- ``n_samples``: the pairs the client trains on now (``len(pair_ids)`` when pair ids are listed);
- ``excluded``: the client took no part in training this version (a retrain reference);
- ``erased``: an erasure removed the whole client: its ``pair_ids`` are gone and only
  ``erased_pair_hashes`` remain;
- ``erased_pair_hashes``: sha256 (hex, of the UTF-8 pair id) of every pair erased from this
  client, by client or samples scope: enough to check that a given pair was erased, without
  keeping the id itself (:func:`pair_id_hash`).

The whole file is validated before anything is written (:meth:`ClientsIndex.parse`), and
:meth:`ClientsIndex.check_target` is the one validation of an erasure target.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, StringConstraints, ValidationError, model_validator

from lethe_format.errors import FormatError, TargetError
from lethe_format.jsonio import read_json_object
from lethe_format.layout import CLIENTS

Identifier = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")]
Sha256Hex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Scope = Literal["client", "samples"]
MAX_EXAMPLES = 10


def pair_id_hash(pair_id: str) -> str:
    """sha256 (hex) of a pair id's UTF-8 bytes: ``printf %s ID | sha256sum``."""
    return hashlib.sha256(pair_id.encode("utf-8")).hexdigest()


class ClientEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    n_samples: int = Field(ge=0)
    pair_ids: list[Identifier] = Field(default_factory=list)
    excluded: bool = False
    erased: bool = False
    erased_pair_hashes: list[Sha256Hex] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> ClientEntry:
        if len(set(self.pair_ids)) != len(self.pair_ids):
            raise ValueError("pair_ids has duplicates")
        if self.pair_ids and self.n_samples != len(self.pair_ids):
            raise ValueError(f"n_samples is {self.n_samples} but {len(self.pair_ids)} pair_ids are listed")
        if self.erased and (self.pair_ids or self.n_samples):
            raise ValueError("an erased client lists no pair_ids and has n_samples 0")
        return self

    @property
    def live(self) -> bool:
        """Takes part in the version: neither excluded from training nor erased."""
        return not (self.excluded or self.erased)


class ClientsIndex(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    clients: dict[Identifier, ClientEntry]
    _pair_sets: dict[str, frozenset[str]] = PrivateAttr(default_factory=dict)

    # ------------------------------------------------------------------ reading and writing
    @classmethod
    def parse(cls, raw: Any) -> ClientsIndex:
        """Validate a decoded ``clients.json``; :class:`FormatError` ``invalid_clients_json`` names the
        first problems (client id and field)."""
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            problems = []
            for error in exc.errors()[:5]:
                where = ".".join(str(part) for part in error["loc"]) or "(top level)"
                problems.append(f"{where}: {error['msg']}")
            raise FormatError(
                "invalid_clients_json",
                "clients.json is invalid (" + "; ".join(problems) + "). Expected "
                '{"clients": {"<id>": {"n_samples": N, "pair_ids": ["...", ...]}}}.',
                {"problems": problems},
            ) from None

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def from_pairs(cls, pairs_by_client: dict[str, Sequence[str]], excluded: Iterable[str] = ()) -> ClientsIndex:
        """A federation's index: each client's pair ids (``excluded`` clients trained nothing)."""
        skip = set(excluded)
        return cls(clients={
            str(client): ClientEntry(n_samples=len(pairs), pair_ids=[str(p) for p in pairs], excluded=client in skip)
            for client, pairs in pairs_by_client.items()
        })

    # ------------------------------------------------------------------ queries
    def entry(self, client_id: str) -> ClientEntry | None:
        return self.clients.get(str(client_id))

    def pair_set(self, client_id: str) -> frozenset[str]:
        """The client's current pair ids as a set (cached: the index is immutable)."""
        client_id = str(client_id)
        if client_id not in self._pair_sets:
            entry = self.clients.get(client_id)
            self._pair_sets[client_id] = frozenset(entry.pair_ids if entry else ())
        return self._pair_sets[client_id]

    def live_clients(self) -> list[str]:
        return [cid for cid, entry in self.clients.items() if entry.live]

    def erased_clients(self) -> list[str]:
        return [cid for cid, entry in self.clients.items() if entry.erased]

    # ------------------------------------------------------------------ the erasure target
    def check_target(self, scope: Scope, client_id: str, pair_ids: Sequence[str] | None = None,
                     where: str = "this model version") -> None:
        """Raise :class:`TargetError` unless the version can serve this erasure: the client is in it,
        took part in training and is not erased; in samples scope the pair ids are its current ones,
        not all of them (erase the client instead) and at least one."""
        client_id = str(client_id)
        details: dict[str, Any] = {"client_id": client_id}
        entry = self.clients.get(client_id)
        if entry is None:
            raise TargetError("unknown_client", f"Client '{client_id}' is not in {where}.", details)
        if entry.excluded:
            raise TargetError("client_excluded", f"Client '{client_id}' took no part in training {where}: it "
                              "contributed nothing to erase.", details)
        if entry.erased:
            raise TargetError("client_already_erased", f"Client '{client_id}' was already erased from {where}.",
                              details, status=409)
        if scope == "client":
            if pair_ids:
                raise TargetError("pair_ids_not_allowed", "Scope 'client' erases the whole client: leave the pair "
                                  "ids out.", details)
            return
        if not pair_ids:
            raise TargetError("pair_ids_required", "Scope 'samples' needs at least one pair id.", details)
        wanted = [str(p) for p in pair_ids]
        owned = self.pair_set(client_id)
        missing = [p for p in wanted if p not in owned]
        if missing:
            erased = set(entry.erased_pair_hashes)
            already = [p for p in missing if pair_id_hash(p) in erased]
            if len(already) == len(missing):
                raise TargetError("pair_ids_already_erased", f"{len(already)} of the pair ids were already erased "
                                  f"from client '{client_id}' in {where}.",
                                  {**details, "count": len(already), "examples": already[:MAX_EXAMPLES]}, status=409)
            raise TargetError("pair_ids_not_in_client", f"{len(missing)} of {len(wanted)} pair ids are not pairs of "
                              f"client '{client_id}' in {where}.",
                              {**details, "count": len(missing), "examples": missing[:MAX_EXAMPLES]})
        if len(set(wanted)) == len(owned):
            raise TargetError("pair_ids_cover_client", f"The pair ids are all of client '{client_id}''s pairs; "
                              "erase the client instead (scope 'client').", details)

    def after_erasure(self, scope: Scope, client_id: str, pair_ids: Sequence[str] | None = None) -> ClientsIndex:
        """The index of the version an erasure produces (check the target first): the erased pairs leave
        ``pair_ids`` and only their hashes stay in ``erased_pair_hashes``; client scope marks it erased."""
        client_id = str(client_id)
        entry = self.clients[client_id]
        gone = list(entry.pair_ids) if scope == "client" else [str(p) for p in pair_ids or ()]
        hashes = sorted(set(entry.erased_pair_hashes) | {pair_id_hash(p) for p in gone})
        remaining = [] if scope == "client" else [p for p in entry.pair_ids if p not in set(gone)]
        updated = ClientEntry(
            n_samples=0 if scope == "client" else len(remaining),
            pair_ids=remaining,
            excluded=entry.excluded,
            erased=scope == "client" or entry.erased,
            erased_pair_hashes=hashes,
        )
        return ClientsIndex(clients={**self.clients, client_id: updated})


def read_clients(directory: Path) -> ClientsIndex:
    """The validated ``clients.json`` of a version directory (:class:`FormatError` if missing or invalid)."""
    path = Path(directory) / CLIENTS
    if not path.is_file():
        raise FormatError("clients_missing", "The version has no clients.json (the federation's clients and "
                          "their pair ids).")
    return ClientsIndex.parse(read_json_object(path, code="invalid_clients_json"))
