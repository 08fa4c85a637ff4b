"""Cache keys: what makes two executions interchangeable.

A result is reusable when the same statement with the same parameter values
(of the same types) ran against the same database through the same driver.
Two identities come out of an engine's URL:

* the **result identity** — the URL without its password, driver included,
  because drivers return different raw rows for the same query (psycopg
  decodes JSON, asyncpg does not);
* the **scope** — backend, host, port and database, without driver or user:
  every engine on one database shares one scope, so a write through any of
  them invalidates what all of them cached.

The memory tier keys on a tuple (cheap to build, no hashing of the text
twice); the shared tier on a digest of the same parts, which keeps parameter
values and statement text out of Redis key names.
"""

from __future__ import annotations

import functools
import hashlib
import os
import socket
from typing import Any

from sqlalchemy.engine import URL

__all__ = ["param_key", "redis_key", "result_identity", "scope_of"]


def result_identity(url: URL, engine_id: int) -> str:
    """The URL with no password; in-memory SQLite databases are per engine."""
    if _is_private_sqlite(url):
        return f"{url.drivername}:memory:{engine_id}"
    return url.set(password=None).render_as_string(hide_password=False)


_DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306, "mariadb": 3306}
_LOCAL = {"", "localhost", "127.0.0.1", "::1", "ip6-localhost"}


def scope_of(url: URL, engine_id: int) -> str:
    """The invalidation scope: which database's tables a name refers to.

    Spellings of one server agree: ``localhost``, ``127.0.0.1`` and a local
    socket are one host, a hostname is resolved to its address, a missing
    port is the backend's default; a SQLite file is its real path whether
    given as a path or a ``file:`` URI.
    """
    backend = url.get_backend_name()
    if backend == "sqlite":
        if _is_private_sqlite(url):
            return f"sqlite:memory:{engine_id}"
        database = url.database or ""
        if database.startswith("file:"):
            path = database[5:].split("?", 1)[0]
            if "mode=memory" in database:
                return f"sqlite:memory:{path}"
            database = path
        return f"sqlite:{os.path.realpath(database)}"
    port = url.port or _DEFAULT_PORTS.get(backend, "")
    return f"{backend}://{_host(url.host or '')}:{port}/{url.database or ''}"


@functools.lru_cache(maxsize=256)
def _host(host: str) -> str:
    name = host.lower().strip("[]")
    if name in _LOCAL or name.startswith("127.") or name.startswith("/"):
        return "local"
    try:
        address = socket.getaddrinfo(name, None)[0][4][0]
    except (OSError, UnicodeError):
        return name
    return "local" if address in _LOCAL or address.startswith("127.") else address


def _is_private_sqlite(url: URL) -> bool:
    if url.get_backend_name() != "sqlite":
        return False
    database = url.database or ""
    if database in ("", ":memory:"):
        return True
    # a URI names a shared in-memory database only with cache=shared
    return (
        database.startswith("file:")
        and "mode=memory" in database
        and ("cache=shared" not in database)
    )


def param_key(params: Any) -> tuple[Any, ...]:
    """A type-exact form of one execution's DBAPI parameters.

    ``1``, ``1.0``, ``True`` and ``Decimal(1)`` are equal in Python but may not
    be for the database, so each value's type is part of the key. The result
    is unhashable when a value is (lists, dicts); callers that hash it fall
    back to :func:`stable_repr` on ``TypeError``.
    """
    if type(params) is dict:
        return (tuple(params.items()), tuple([type(v) for v in params.values()]))
    return (params, tuple([type(v) for v in params]))


def stable_repr(params: Any) -> str:
    """A deterministic text form of parameters, for unhashable values."""
    if isinstance(params, dict):
        return repr(sorted((k, type(v).__name__, v) for k, v in params.items()))
    return repr([(type(v).__name__, v) for v in params])


def redis_key(namespace: str, identity: str, statement: str, params: Any) -> str:
    """The shared-tier key: a digest of everything that selects the result.

    The namespace is a Redis Cluster hash tag so that an entry and the table
    versions it is checked against live in one slot.
    """
    h = hashlib.blake2b(digest_size=20)
    h.update(identity.encode())
    h.update(b"\0")
    h.update(statement.encode("utf-8", "surrogatepass"))
    h.update(b"\0")
    h.update(stable_repr(params).encode("utf-8", "surrogatepass"))
    return f"qc:{{{namespace}}}:r:{h.hexdigest()}"
