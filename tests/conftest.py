"""Session-wide real servers: one PostgreSQL and one Redis for the whole run.

Tests that need a server take the fixture; a missing binary makes them fail
with the install hint from :mod:`querycache.testing`, never skip.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from querycache.testing import PostgresServer, RedisServer

_db_names = itertools.count()


@pytest.fixture(scope="session")
def postgres():
    """A running :class:`PostgresServer` shared by the whole session."""
    with PostgresServer() as server:
        yield server


@pytest.fixture
def pg_url(postgres, request):
    """A psycopg URL to a fresh, empty database (with pg_stat_statements),
    dropped after the test (the server would otherwise hold every test's)."""
    name = f"t{next(_db_names)}_{request.node.name[:40]}".lower()
    name = "".join(c if c.isalnum() else "_" for c in name)
    yield postgres.create_database(name)
    postgres.drop_database(name)


@pytest.fixture(scope="session")
def redis_server():
    """A running :class:`RedisServer` shared by the whole session."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def fast_dir(tmp_path):
    """A fresh directory on tmpfs when there is one, else ``tmp_path``.

    For SQLite files in tests whose assertions are about time or crashes, not
    about the disk: a commit's fsync on a shared disk can take 100+ ms, which
    is noise to a wall-clock bound, and a SIGKILL loses nothing the page cache
    holds anyway.
    """
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path
        return
    path = Path(tempfile.mkdtemp(prefix="qc-test-", dir=shm))
    yield path
    shutil.rmtree(path, ignore_errors=True)
