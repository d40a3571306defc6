"""Fixtures of the fault suite: the real Postgres (a schema of its own), a Redis the suite starts on its own
port, and a fresh ``Cluster`` (queue, dispatcher and workers of its own) per test."""

from __future__ import annotations

import shutil

import pytest

from service.db import Database
from tests.db_helpers import temporary_schemas
from tests.faults.cluster import Cluster, RedisServer


@pytest.fixture(scope="session")
def fault_pg_url():
    with temporary_schemas("lethe_faults") as make:
        yield make()


@pytest.fixture(scope="session")
def fault_database(fault_pg_url):
    database = Database(fault_pg_url)
    yield database
    database.dispose()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.kill()


@pytest.fixture
def make_cluster(tmp_path, fault_pg_url, fault_database, redis_server):
    made = []

    def make(**settings_env) -> Cluster:
        cluster = Cluster(tmp_path / f"c{len(made)}", fault_pg_url, fault_database, redis_server, settings_env)
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        cluster.stop()
