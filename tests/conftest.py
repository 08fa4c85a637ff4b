"""Session-wide real servers: one PostgreSQL and one Redis for the whole run.

Tests that need a server take the fixture; a missing binary makes them fail
with the install hint from :mod:`querycache.testing`, never skip.
"""

from __future__ import annotations

import itertools

import pytest

from querycache.testing import PostgresServer, RedisServer

_db_names = itertools.count()


@pytest.fixture(scope="session")
def postgres():
    """A running :class:`PostgresServer` shared by the whole session."""
    with PostgresServer() as server:
        yield server


@pytest.fixture
def pg_url(postgres, request) -> str:
    """A psycopg URL to a fresh, empty database (with pg_stat_statements)."""
    name = f"t{next(_db_names)}_{request.node.name[:40]}".lower()
    name = "".join(c if c.isalnum() else "_" for c in name)
    return postgres.create_database(name)


@pytest.fixture(scope="session")
def redis_server():
    """A running :class:`RedisServer` shared by the whole session."""
    with RedisServer() as server:
        yield server
