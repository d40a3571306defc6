"""The contribution ledger, recorded while the federation trains (EASE.md, "The ledger").

Per client k and block l it keeps
- the exact contribution ``C_k^l = sum_t p_k Delta_k^(t,l)`` (what FedAvg added on k's behalf; after a
  data subject's erasure, minus what was excised on k's behalf: :meth:`Ledger.debited`), and
- an orthonormal basis ``U_k^l`` (d_l x r, r <= rank_cap) of the span of k's weighted
  round updates ``p_k Delta_k^(t,l)``, with singular values ``S_k^l``, by incremental SVD
  truncated at ``energy``.

Weighting the basis updates by p_k (rather than using the raw Delta) keeps the singular
values on the scale of what each client actually moved the global model, so that bases of
different clients can be stacked as ``[U_k S_k]`` (closure 1) without re-weighting.

Storage per client is at most (rank_cap + 1) * |theta| numbers plus the singular values;
once every block has reached ``rank_cap`` it stops growing with rounds.

It also keeps the federation's starting point theta_0 (``initial``): FedAvg gives
theta_T = theta_0 + sum_k C_k exactly, so what a client taught is measurable in any later model as
its component along that client's contribution (verification's ledger residual).

On disk (a folder ``ledger/`` inside a version):
    ledger.json            blocks, clients, sample counts, rounds, settings, model fingerprint
    client-<k>.safetensors ``C/<block>``, ``U/<block>``, ``S/<block>``
    initial.safetensors    theta_0 per block (absent in ledgers written before it existed)
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import load_file, save_file

from ease_engine.atomic import write_json
from ease_engine.linalg.incremental_svd import empty_basis
from ease_engine.linalg.incremental_svd import update as incremental_svd_update
from ease_engine.models.blocks import ParameterBlock

LEDGER_FORMAT = "lethe-ledger/1"
INITIAL_FILE = "initial.safetensors"


class LedgerError(ValueError):
    """A ledger is missing, corrupt or does not belong to the model it is used with."""


class LedgerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    rank_cap: int = Field(8, ge=1)
    energy: float = Field(0.999, gt=0, le=1)
    store_updates_every: int = Field(
        0,
        ge=0,
        description="also keep every client's raw update (and the global model) of every N-th round, "
        "in updates/round-NNNN.safetensors; FedEraser needs them. 0 keeps none.",
    )


@dataclass
class ClientRecord:
    contribution: dict[str, torch.Tensor]
    basis: dict[str, torch.Tensor]
    singular_values: dict[str, torch.Tensor]
    n_samples: int = 0
    rounds: list[int] = field(default_factory=list)


class Ledger:
    def __init__(
        self,
        blocks: Sequence[ParameterBlock],
        clients: Sequence[int],
        config: LedgerConfig,
        model_fingerprint: str,
        n_samples: dict[int, int] | None = None,
        initial: dict[str, torch.Tensor] | None = None,
    ) -> None:
        self.blocks = list(blocks)
        self.config = config
        self.model_fingerprint = model_fingerprint
        self.initial = None if initial is None else {k: v.detach().reshape(-1).to(torch.float32).cpu().clone()
                                                      for k, v in initial.items()}
        self.records: dict[int, ClientRecord] = {}
        for k in clients:
            self.records[int(k)] = ClientRecord(
                contribution={b.name: torch.zeros(b.numel) for b in self.blocks},
                basis={b.name: empty_basis(b.numel)[0] for b in self.blocks},
                singular_values={b.name: empty_basis(b.numel)[1] for b in self.blocks},
                n_samples=int((n_samples or {}).get(int(k), 0)),
            )

    @property
    def clients(self) -> list[int]:
        return sorted(self.records)

    def record(self, client: int, round_index: int, weighted_update: dict[str, torch.Tensor]) -> None:
        """Add client ``client``'s weighted update ``p_k Delta_k^t`` of round ``round_index``."""
        rec = self.records[client]
        for block in self.blocks:
            vec = weighted_update[block.name].detach().reshape(-1).to(torch.float32).cpu()
            if not torch.any(vec):  # a block the client did not move (the rows of words it never uses): no-op
                continue
            rec.contribution[block.name] += vec
            rec.basis[block.name], rec.singular_values[block.name] = incremental_svd_update(
                rec.basis[block.name],
                rec.singular_values[block.name],
                vec,
                rank_cap=self.config.rank_cap,
                energy=self.config.energy,
            )
        rec.rounds.append(int(round_index))

    def without_client(self, client: int) -> Ledger:
        """A copy without ``client``'s record (a client erased as a whole); records are shared, not copied."""
        ledger = copy.copy(self)
        ledger.records = {k: v for k, v in self.records.items() if k != int(client)}
        return ledger

    def debited(self, client: int, removed: dict[str, torch.Tensor]) -> Ledger:
        """A copy where ``client``'s recorded contribution no longer holds ``removed`` (per block, what an
        erasure took out of the weights on its behalf while the client stays): a later excision computed from
        it does not take the same part out twice. The basis is kept (it still spans what the client sent)."""
        record = self.client(client)
        contribution = {name: c - removed[name].reshape(-1).to(c) if name in removed else c
                        for name, c in record.contribution.items()}
        ledger = copy.copy(self)
        ledger.records = {**self.records, int(client): dataclasses.replace(
            record, contribution=contribution, basis=dict(record.basis),
            singular_values=dict(record.singular_values), rounds=list(record.rounds))}
        return ledger

    def client(self, client: int) -> ClientRecord:
        try:
            return self.records[int(client)]
        except KeyError:
            raise LedgerError(f"client {client} is not in the ledger (clients: {self.clients})") from None

    # ------------------------------------------------------------------ size
    def client_nbytes(self, client: int) -> int:
        rec = self.records[client]
        tensors = [*rec.contribution.values(), *rec.basis.values(), *rec.singular_values.values()]
        return sum(t.numel() * t.element_size() for t in tensors)

    def nbytes(self) -> int:
        return sum(self.client_nbytes(k) for k in self.records)

    def ranks(self, client: int) -> dict[str, int]:
        return {name: int(u.shape[1]) for name, u in self.records[client].basis.items()}

    # ------------------------------------------------------------------ disk
    def save(self, directory: str | Path) -> None:
        """Write into ``directory`` (the caller makes the enclosing write atomic)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for k, rec in self.records.items():
            tensors = {}
            for b in self.blocks:
                tensors[f"C/{b.name}"] = rec.contribution[b.name].contiguous()
                tensors[f"U/{b.name}"] = rec.basis[b.name].contiguous()
                tensors[f"S/{b.name}"] = rec.singular_values[b.name].contiguous()
            save_file(tensors, str(directory / f"client-{k}.safetensors"))
        if self.initial is not None:
            save_file({name: value.contiguous() for name, value in self.initial.items()},
                      str(directory / INITIAL_FILE))
        write_json(
            directory / "ledger.json",
            {
                "format": LEDGER_FORMAT,
                "model_fingerprint": self.model_fingerprint,
                "config": self.config.model_dump(),
                "blocks": [b.to_json() for b in self.blocks],
                "clients": {
                    str(k): {"n_samples": rec.n_samples, "rounds": rec.rounds, "nbytes": self.client_nbytes(k)}
                    for k, rec in self.records.items()
                },
            },
        )

    @classmethod
    def load(cls, directory: str | Path, expected_fingerprint: str | None = None) -> Ledger:
        directory = Path(directory)
        index_path = directory / "ledger.json"
        if not index_path.is_file():
            raise LedgerError(
                f"no ledger at {directory} ({index_path.name} missing): the version was "
                "made without a ledger; rerun the federation with ledger.enabled = true"
            )
        index = json.loads(index_path.read_text())
        if index.get("format") != LEDGER_FORMAT:
            raise LedgerError(f"{index_path}: unsupported ledger format {index.get('format')!r}")
        if expected_fingerprint is not None and index["model_fingerprint"] != expected_fingerprint:
            raise LedgerError(
                f"the ledger in {directory} belongs to another model (fingerprint {index['model_fingerprint']}, "
                f"this model {expected_fingerprint})"
            )
        blocks = [ParameterBlock.from_json(b) for b in index["blocks"]]
        initial = load_file(str(directory / INITIAL_FILE)) if (directory / INITIAL_FILE).is_file() else None
        ledger = cls(blocks, [], LedgerConfig(**index["config"]), index["model_fingerprint"], initial=initial)
        for key, info in index["clients"].items():
            path = directory / f"client-{key}.safetensors"
            if not path.is_file():
                raise LedgerError(f"ledger file {path} is missing")
            tensors = load_file(str(path))
            ledger.records[int(key)] = ClientRecord(
                contribution={b.name: tensors[f"C/{b.name}"] for b in blocks},
                basis={b.name: tensors[f"U/{b.name}"] for b in blocks},
                singular_values={b.name: tensors[f"S/{b.name}"] for b in blocks},
                n_samples=int(info["n_samples"]),
                rounds=list(info["rounds"]),
            )
        return ledger
