"""Registering federated checkpoints, reading and downloading versions."""

from __future__ import annotations

import hashlib
import io
import zipfile

import pytest
from service_test_helpers import row_counts


def _register(client, auth, path, name="clip-test", **extra):
    body = {"path": path, **extra}
    return client.post(f"/v1/models/{name}/versions", json=body, headers=auth("aggregator"))


def test_register_reads_json_and_hashes_the_directory(client, auth, make_version_dir, artifact_dir):
    directory = make_version_dir("clip-test/v1", manifest={"architecture": "ViT-B-32", "rounds": 5})
    response = _register(client, auth, "clip-test/v1")
    assert response.status_code == 201, response.text
    version = response.json()
    assert version["version"] == 1 and version["parent_version"] is None and version["status"] == "registered"
    assert version["manifest"] == {"architecture": "ViT-B-32", "rounds": 5}
    assert [c["client_id"] for c in version["clients"]] == ["0", "1", "2"]
    assert version["clients"][0] == {"client_id": "0", "n_samples": 10, "n_pair_ids": 10}
    files = {entry["path"]: entry["sha256"] for entry in version["files"]}
    assert set(files) == {"clients.json", "manifest.json", "model.safetensors"}
    assert files["model.safetensors"] == hashlib.sha256(b"fake weights").hexdigest()
    # THE content hash (lethe_format): every file but the manifest (which records it) and signatures
    lines = "".join(f"{path}\0{files[path]}\n" for path in sorted(files) if path != "manifest.json")
    expected = hashlib.sha256(lines.encode()).hexdigest()
    assert version["content_hash"] == f"sha256:{expected}"
    # the same content again: the existing version, 200
    again = _register(client, auth, str(directory))  # absolute path inside the artifact dir
    assert again.status_code == 200 and again.json()["version"] == 1


def test_second_version_chains_to_the_first(client, auth, make_version_dir):
    make_version_dir("clip-test/v1")
    make_version_dir("clip-test/v2", weights=b"other", manifest_name="metadata.json")
    assert _register(client, auth, "clip-test/v1").status_code == 201
    second = _register(client, auth, "clip-test/v2")
    assert second.status_code == 201
    assert (second.json()["version"], second.json()["parent_version"]) == (2, 1)
    models = client.get("/v1/models", headers=auth("requester")).json()
    assert models == [{"name": "clip-test", "created_at": models[0]["created_at"], "latest_version": 2,
                       "versions": [1, 2]}]
    listed = client.get("/v1/models/clip-test/versions", headers=auth("compliance")).json()
    assert [version["version"] for version in listed] == [1, 2]
    one = client.get("/v1/models/clip-test/versions/2", headers=auth("requester"))
    assert one.status_code == 200 and one.json()["links"]["download"].endswith("/versions/2/download")
    missing = client.get("/v1/models/clip-test/versions/9", headers=auth("requester"))
    assert missing.json()["error"]["code"] == "version_not_found"
    assert client.get("/v1/models/nope/versions/1", headers=auth("requester")).status_code == 404


@pytest.mark.parametrize(
    ("setup", "path", "code"),
    [
        (None, "../outside", "path_outside_artifact_dir"),
        (None, "/etc", "path_outside_artifact_dir"),
        ("symlink", "escape", "path_outside_artifact_dir"),
        (None, "clip-test/missing", "version_dir_missing"),
        ("file", "a-file", "version_dir_not_a_directory"),
        ("no-manifest", "clip-test/v1", "manifest_missing"),
        ("no-clients", "clip-test/v1", "clients_missing"),
        ("bad-clients", "clip-test/v1", "invalid_clients_json"),
        ("broken-json", "clip-test/v1", "invalid_json_file"),
    ],
)
def test_bad_version_directories_are_422_and_write_nothing(
    client, auth, db, make_version_dir, artifact_dir, tmp_path, setup, path, code
):
    if setup == "symlink":
        outside = tmp_path / "outside-dir"
        outside.mkdir()
        (artifact_dir / "escape").symlink_to(outside)
    elif setup == "file":
        (artifact_dir / "a-file").write_text("x")
    elif setup is not None:
        directory = make_version_dir("clip-test/v1")
        if setup == "no-manifest":
            (directory / "manifest.json").unlink()
        elif setup == "no-clients":
            (directory / "clients.json").unlink()
        elif setup == "bad-clients":
            (directory / "clients.json").write_text('{"members": []}')
        elif setup == "broken-json":
            (directory / "manifest.json").write_text("{not json")
    tokens_only = row_counts(db)
    response = _register(client, auth, path)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == code
    assert row_counts(db) == tokens_only


def test_register_validation(client, auth, make_version_dir):
    make_version_dir("clip-test/v1")
    assert _register(client, auth, "clip-test/v1", name="bad name!").status_code == 422
    unknown_parent = _register(client, auth, "clip-test/v1", parent_version=7)
    assert unknown_parent.status_code == 422
    assert unknown_parent.json()["error"]["code"] == "parent_version_not_found"
    unknown_field = _register(client, auth, "clip-test/v1", weights="heavy")
    assert unknown_field.json()["error"]["code"] == "validation_error"


def test_download_streams_a_zip_of_the_directory(client, auth, make_version_dir):
    make_version_dir("clip-test/v1", weights=bytes(range(256)) * 20_000)  # ~5 MB: several chunks
    _register(client, auth, "clip-test/v1")
    response = client.get("/v1/models/clip-test/versions/1/download", headers=auth("aggregator"))
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/zip"
    assert response.headers["x-content-hash"].startswith("sha256:")
    archive = zipfile.ZipFile(io.BytesIO(response.content))
    assert sorted(archive.namelist()) == ["clip-test-v1/clients.json", "clip-test-v1/manifest.json",
                                          "clip-test-v1/model.safetensors"]
    assert archive.read("clip-test-v1/model.safetensors") == bytes(range(256)) * 20_000
    assert archive.testzip() is None
