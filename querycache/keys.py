"""Cache keys: what makes two executions interchangeable.

A result is reusable when the same statement with the same parameter values
(of the same types) ran against the same database through the same driver.
Two identities come out of an engine's URL:

* the **result identity** — the URL without its password, driver included,
  because drivers return different raw rows for the same query (psycopg
  decodes JSON, asyncpg does not), plus a digest of any ``connect_args``
  (a ``search_path`` given there changes what a query returns), plus what
  each connection was observed to be after its connect events ran
  (:mod:`querycache.integration.identity`);
* the **scope** — backend, host, port and database, without driver or user:
  every engine on one database shares one scope, so a write through any of
  them invalidates what all of them cached.

The memory tier keys on a tuple (cheap to build, no hashing of the text
twice); the shared tier on a digest of the same parts, which keeps parameter
values and statement text out of Redis key names. Parameters of a type in
:data:`LOSSY` enter a key in their :func:`exact` form.
"""

from __future__ import annotations

import datetime as dt
import enum
import functools
import hashlib
import ipaddress
import os
import socket
import uuid
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from sqlalchemy.engine import URL

__all__ = [
    "LOSSY",
    "TRUSTED",
    "Opaque",
    "connection_settings",
    "exact",
    "exact_params",
    "private_memory",
    "redis_key",
    "result_identity",
    "scope_of",
]


#: tells this process's private identities from another's (ids repeat across processes)
_PROCESS = uuid.uuid4().hex[:12]


def result_identity(url: URL, engine_id: int, settings: str = "") -> str:
    """The URL with no password, plus ``settings`` (see :func:`connection_settings`):
    the engine's base identity, to which each connection adds what it was
    observed to be (:mod:`querycache.integration.identity`). A private
    in-memory SQLite database belongs to this process and engine only."""
    if _is_private_sqlite(url):
        return f"{url.drivername}:memory:{_PROCESS}:{engine_id}"
    identity = url.set(password=None).render_as_string(hide_password=False)
    return f"{identity}#{settings}" if settings else identity


def connection_settings(engine: Any) -> str:
    """A digest of what the engine's connections get beyond its URL (``connect_args``:
    a ``search_path``, a role, session options...), or ``""`` when nothing.

    Two engines on one URL whose connections differ must not share results. The
    digest is one-way (a password given in ``connect_args`` never shows) and the
    same in every process for the same settings. An engine built with its own
    ``creator`` cannot be inspected: its results are private to it.
    """
    creator = getattr(engine.pool, "_creator", None)
    code = getattr(creator, "__code__", None)
    if code is None or "cparams" not in code.co_freevars:
        return f"creator-{id(creator):x}"
    cells = dict(zip(code.co_freevars, creator.__closure__ or (), strict=False))
    cparams = dict(cells["cparams"].cell_contents)
    cargs = tuple(cells["cargs_tup"].cell_contents) if "cargs_tup" in cells else ()
    url_args, url_params = engine.dialect.create_connect_args(engine.url)
    extra = {k: v for k, v in cparams.items() if k not in url_params or not _same(url_params[k], v)}
    if not extra and cargs == tuple(url_args):
        return ""
    text = repr((sorted((k, repr(v)) for k, v in extra.items()), [repr(a) for a in cargs]))
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def _same(a: Any, b: Any) -> bool:
    try:
        return a is b or bool(a == b)
    except Exception:
        return False


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
    if backend == "postgresql":
        return _pg_scope(url)
    port = url.port or _DEFAULT_PORTS.get(backend, "")
    return f"{backend}://{_host(url.host or '')}:{port}/{url.database or ''}"


def _query_list(url: URL, key: str) -> list[str] | None:
    """A query parameter's values, libpq comma lists split (None: absent)."""
    value = url.query.get(key)
    if value is None:
        return None
    values = value if isinstance(value, tuple) else (value,)
    return [part.strip() for v in values for part in str(v).split(",")]


def _split_port(host: str) -> tuple[str, str]:
    """SQLAlchemy's multihost ``host=h1:p1&host=h2:p2``: ``("h1", "p1")``."""
    if host.startswith("["):  # [::1]:5432
        name, _, rest = host[1:].partition("]")
        return name, rest[1:] if rest.startswith(":") else ""
    if host.count(":") == 1 and not host.startswith("/"):
        name, _, port = host.partition(":")
        return name, port
    return host, ""


def _pg_scope(url: URL) -> str:
    """PostgreSQL: every endpoint (host or hostaddr, port) and the database, as
    libpq resolves them: query parameters override the URL's own host, port and
    database; ``host=h1,h2&port=p1,p2`` and ``host=h1:p1&host=h2:p2`` are one
    list; a missing part comes from ``PGHOST``/``PGPORT``/``PGDATABASE`` or the
    libpq defaults (local socket, 5432, the user's name)."""
    hosts = _query_list(url, "host")
    if hosts is None:
        hosts = [url.host] if url.host else []
    ports = _query_list(url, "port")
    if ports is None:
        ports = [str(url.port)] if url.port else []
    addrs = _query_list(url, "hostaddr") or []
    default_port = os.environ.get("PGPORT") or "5432"
    count = max(len(hosts), len(addrs), 1)
    endpoints = set()
    for i in range(count):
        host = hosts[i] if i < len(hosts) else (hosts[0] if len(hosts) == 1 else "")
        host, port = _split_port(host)
        if not port:
            port = ports[i] if i < len(ports) else (ports[0] if len(ports) == 1 else "")
        addr = addrs[i] if i < len(addrs) else (addrs[0] if len(addrs) == 1 else "")
        where = addr or host or os.environ.get("PGHOST", "")
        endpoints.add(f"{_host(where)}:{port or default_port}")
    database = (_query_list(url, "dbname") or _query_list(url, "database") or [""])[0]
    database = database or url.database or os.environ.get("PGDATABASE") or ""
    if not database:  # libpq's default database is the user's name
        database = url.username or os.environ.get("PGUSER") or _os_user()
    return f"postgresql://{','.join(sorted(endpoints))}/{database}"


def _os_user() -> str:
    try:
        import getpass

        return getpass.getuser()
    except Exception:
        return ""


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


def private_memory(url: URL) -> bool:
    """Whether each DBAPI connection of ``url`` is its own in-memory database."""
    return _is_private_sqlite(url)


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


#: Types whose ``==`` is exact (equal values mean the same to any database)
#: and whose ``repr`` is complete: they enter keys as they are.
TRUSTED = frozenset({type(None), bool, int, str, bytes, uuid.UUID, dt.date, dt.timedelta})

#: Types whose equal values the database may still tell apart: ``-0.0`` and
#: ``0.0``, ``Decimal("1.0")`` and ``Decimal("1.00")``, one instant in two time
#: zones; and containers, whose ``==`` ignores the types of their items. They
#: enter keys in their :func:`exact` form.
LOSSY = frozenset({float, Decimal, dt.datetime, dt.time, list, tuple, dict})


class Opaque(TypeError):
    """A parameter of a type querycache cannot key exactly: the execution bypasses."""


def exact(v: Any) -> Any:
    """A hashable form of ``v``, equal only for values the database cannot tell
    apart, with a complete ``repr`` (the Redis key digests it). Raises
    :class:`Opaque` for a type it does not know."""
    t = type(v)
    if t in TRUSTED:
        return (t, v)
    if t is float:
        return (t, v.hex())
    if t is Decimal:
        return (t, str(v))
    if t is dt.datetime or t is dt.time:
        return (t, v.isoformat(), v.fold, str(v.tzinfo))
    if t is list or t is tuple:
        return (t, tuple([exact(x) for x in v]))
    if t is dict:
        return (t, tuple(sorted(((repr(exact(k)), exact(x)) for k, x in v.items()), key=_first)))
    if t is bytearray or t is memoryview:
        return (t, bytes(v))
    if isinstance(v, enum.Enum):
        return (t, v.name, exact(v.value))
    if isinstance(v, uuid.UUID):  # asyncpg's own UUID class
        return (t, v.int)
    if t in ADDRESSES:
        return (t, str(v))
    wrapped = _WRAPPERS.get(f"{t.__module__}.{t.__qualname__}")
    if wrapped is not None:
        return (t, *[exact(part) for part in wrapped(v)])
    raise Opaque(f"parameter of type {t.__module__}.{t.__qualname__}")


def _first(item: tuple[str, Any]) -> str:
    return item[0]


#: the ``ipaddress`` value types (exact by their text; immutable)
ADDRESSES = frozenset(
    getattr(ipaddress, f"IPv{v}{kind}")
    for v in (4, 6)
    for kind in ("Address", "Network", "Interface")
)


def _range(v: Any) -> tuple[Any, ...]:
    return (
        v.lower,
        v.upper,
        str(getattr(v, "bounds", "")),
        bool(getattr(v, "lower_inc", False)),
        bool(getattr(v, "upper_inc", False)),
        bool(getattr(v, "empty", False) or getattr(v, "isempty", False)),
    )


#: Driver wrappers keyed by what they hold (their ``repr`` may be shortened).
_WRAPPERS: dict[str, Any] = {
    "psycopg.types.json.Json": lambda v: (v.obj,),
    "psycopg.types.json.Jsonb": lambda v: (v.obj,),
    "psycopg.types.range.Range": _range,
    "sqlalchemy.dialects.postgresql.ranges.Range": _range,
    "asyncpg.types.Range": _range,
}


def exact_params(params: Any) -> tuple[Any, ...]:
    """:func:`exact` of every parameter (names kept for a dict); raises
    :class:`Opaque` when one cannot be keyed."""
    if isinstance(params, Mapping):
        return tuple([(k, exact(v)) for k, v in params.items()])
    return tuple([exact(v) for v in params])


def stable_repr(params: Any) -> str:
    """A readable text form of parameters (for display: ``hash_params=False``)."""
    if isinstance(params, dict):
        return repr(sorted((k, type(v).__name__, v) for k, v in params.items()))
    return repr([(type(v).__name__, v) for v in params])


def redis_key(namespace: str, identity: str, statement: str, params: Any) -> str:
    """The shared-tier key: a digest of everything that selects the result
    (parameters in their :func:`exact` form; raises :class:`Opaque`).

    The namespace is a Redis Cluster hash tag so that an entry and the table
    versions it is checked against live in one slot.
    """
    h = hashlib.blake2b(digest_size=20)
    h.update(identity.encode())
    h.update(b"\0")
    h.update(statement.encode("utf-8", "surrogatepass"))
    h.update(b"\0")
    h.update(repr(exact_params(params)).encode("utf-8", "surrogatepass"))
    return f"qc:{{{namespace}}}:r:{h.hexdigest()}"
