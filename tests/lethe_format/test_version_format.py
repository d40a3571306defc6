"""The shared version format: THE content hash, clients.json and the one target rule."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from lethe_format import (
    ClientsIndex,
    FormatError,
    TargetError,
    build_manifest,
    content_hash,
    directory_digests,
    hashed_files,
    pair_id_hash,
    read_clients,
    read_json_object,
)
from lethe_format.layout import CLIENTS, MANIFEST, SIGNATURE


def _version(tmp_path, clients=None):
    directory = tmp_path / "v1"
    (directory / "ledger").mkdir(parents=True)
    (directory / "open_clip_model.safetensors").write_bytes(b"weights")
    (directory / "ledger" / "client-0.safetensors").write_bytes(b"ledger")
    clients = clients or {"0": ["a", "b", "c"], "1": ["d", "e"]}
    (directory / CLIENTS).write_text(json.dumps(ClientsIndex.from_pairs(clients).to_json()))
    return directory


def _by_hand(directory, skip=(MANIFEST, SIGNATURE)) -> str:
    combined = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        relative = path.relative_to(directory).as_posix()
        if relative not in skip:
            combined.update(f"{relative}\0{hashlib.sha256(path.read_bytes()).hexdigest()}\n".encode())
    return "sha256:" + combined.hexdigest()


def test_content_hash_is_the_documented_formula_and_ignores_manifest_and_signature(tmp_path):
    directory = _version(tmp_path)
    before = content_hash(directory_digests(directory))
    assert before == _by_hand(directory)
    (directory / SIGNATURE).write_bytes(b"signature")
    manifest = build_manifest(directory_digests(directory), {"name": "v0", "content_hash": "sha256:0"}, {})
    (directory / MANIFEST).write_text(json.dumps(manifest))
    digests = directory_digests(directory)
    assert content_hash(digests) == before == manifest["content_hash"]
    assert set(hashed_files(digests)) == {"open_clip_model.safetensors", "ledger/client-0.safetensors", CLIENTS}
    assert content_hash(manifest["files"]) == before


def test_one_changed_byte_changes_the_hash(tmp_path):
    directory = _version(tmp_path)
    before = content_hash(directory_digests(directory))
    (directory / "ledger" / "client-0.safetensors").write_bytes(b"ledgeR")
    assert content_hash(directory_digests(directory)) != before


def test_links_and_special_files_are_refused(tmp_path):
    directory = _version(tmp_path)
    secret = tmp_path / "secret"
    secret.write_text("do not serve")
    (directory / "evil").symlink_to(secret)
    with pytest.raises(FormatError) as caught:
        directory_digests(directory)
    assert caught.value.code == "version_contains_link" and str(tmp_path) not in caught.value.message
    (directory / "evil").unlink()
    (directory / "dir-link").symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(FormatError):
        directory_digests(directory)
    (directory / "dir-link").unlink()
    os.mkfifo(directory / "pipe")
    with pytest.raises(FormatError) as caught:
        directory_digests(directory)
    assert caught.value.code == "version_contains_special_file"


@pytest.mark.parametrize(("raw", "fragment"), [
    ({"members": []}, "clients"),
    ({"clients": {"0": {"n_samples": "many", "pair_ids": []}}}, "n_samples"),
    ({"clients": {"0": {"n_samples": True}}}, "n_samples"),
    ({"clients": {"0": {"n_samples": -1}}}, "n_samples"),
    ({"clients": {"0": {"n_samples": 2, "pair_ids": ["a", "a"]}}}, "duplicates"),
    ({"clients": {"0": {"n_samples": 3, "pair_ids": ["a", "b"]}}}, "n_samples is 3"),
    ({"clients": {"0": {"n_samples": 1, "pair_ids": [7]}}}, "pair_ids"),
    ({"clients": {"0": {"n_samples": 1, "pair_ids": ["a\u0000b"]}}}, "pair_ids"),
    ({"clients": {"0": {"n_samples": 0, "colour": "red"}}}, "colour"),
    ({"clients": {"0": {"n_samples": 1, "erased": True, "pair_ids": ["a"]}}}, "erased client"),
    ({"clients": {"0": {"n_samples": 0, "erased_pair_hashes": ["xyz"]}}}, "erased_pair_hashes"),
])
def test_invalid_clients_json_is_rejected_with_a_named_field(raw, fragment):
    with pytest.raises(FormatError) as caught:
        ClientsIndex.parse(raw)
    assert caught.value.code == "invalid_clients_json" and fragment in caught.value.message


def test_strict_json_refuses_nan_and_non_objects(tmp_path):
    path = tmp_path / "manifest.json"
    path.write_text('{"score": NaN}')
    with pytest.raises(FormatError, match="finite"):
        read_json_object(path)
    path.write_text("[1, 2]")
    with pytest.raises(FormatError, match="object"):
        read_json_object(path)
    path.write_text('{"score": 1.5}')
    assert read_json_object(path) == {"score": 1.5}


def test_target_rule_codes():
    index = ClientsIndex.parse({"clients": {
        "0": {"n_samples": 3, "pair_ids": ["a", "b", "c"]},
        "1": {"n_samples": 2, "pair_ids": ["d", "e"], "excluded": True},
    }})
    index.check_target("client", "0")
    index.check_target("samples", "0", ["a", "b"])
    cases = [
        (("client", "9"), "unknown_client", 422),
        (("client", "1"), "client_excluded", 422),
        (("samples", "0", []), "pair_ids_required", 422),
        (("samples", "0", ["a", "zz"]), "pair_ids_not_in_client", 422),
        (("samples", "0", ["a", "b", "c"]), "pair_ids_cover_client", 422),
        (("client", "0", ["a"]), "pair_ids_not_allowed", 422),
    ]
    for args, code, status in cases:
        with pytest.raises(TargetError) as caught:
            index.check_target(*args)
        assert (caught.value.code, caught.value.status) == (code, status)
    with pytest.raises(TargetError) as caught:
        index.check_target("client", "9")
    assert "0" not in caught.value.message and caught.value.details == {"client_id": "9"}  # lists no other client


def test_after_erasure_keeps_only_hashes_and_blocks_a_second_erasure():
    index = ClientsIndex.from_pairs({"0": ["a", "b", "c"], "1": ["d", "e"]})
    samples = index.after_erasure("samples", "0", ["a"])
    assert samples.entry("0").pair_ids == ["b", "c"] and samples.entry("0").n_samples == 2
    assert samples.entry("0").erased_pair_hashes == [hashlib.sha256(b"a").hexdigest()] == [pair_id_hash("a")]
    with pytest.raises(TargetError) as caught:
        samples.check_target("samples", "0", ["a"])
    assert (caught.value.code, caught.value.status) == ("pair_ids_already_erased", 409)
    client = samples.after_erasure("client", "0")
    entry = client.entry("0")
    assert entry.erased and entry.pair_ids == [] and entry.n_samples == 0
    assert entry.erased_pair_hashes == sorted(pair_id_hash(p) for p in "abc")
    assert '"a"' not in json.dumps(client.to_json()["clients"]["0"])
    with pytest.raises(TargetError) as caught:
        client.check_target("client", "0")
    assert (caught.value.code, caught.value.status) == ("client_already_erased", 409)
    assert client.live_clients() == ["1"] and ClientsIndex.parse(client.to_json()) == client


def test_read_clients_of_a_directory(tmp_path):
    directory = _version(tmp_path)
    assert read_clients(directory).pair_set("0") == {"a", "b", "c"}
    (directory / CLIENTS).unlink()
    with pytest.raises(FormatError) as caught:
        read_clients(directory)
    assert caught.value.code == "clients_missing"
