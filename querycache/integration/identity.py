"""What a DBAPI connection really is, observed once its connect events ran.

Two connections on one URL can differ in ways the URL does not show: a
``connect`` event that sets ``search_path`` (SQLAlchemy's multi-tenant
recipe), a role, a time zone, an ATTACHed SQLite file, a private in-memory
database. Results are keyed by the connection's **result identity**: the
engine's base identity (URL without password, ``connect_args`` digest) plus a
digest of what one query read from the connection the first time the pool
handed it out (the pool's ``checkout`` event runs after every ``connect``
listener, also those added after ``wrap()``). Equal settings give equal
identities in every process, so the shared tier is still shared.

The identity is interned to a small int stored in the pool record's ``info``
under :data:`IDENT_KEY`; the hit paths read it from there (one dict lookup).
A connection without it (observation failed, or its connect events left a
transaction open whose ``SET`` a rollback would undo) is never served nor
stored; it is observed again at its next checkout.

What cannot be observed makes results private to the connection: temporary
tables or an attached in-memory database (SQLite ``PRAGMA database_list``,
PostgreSQL ``pg_my_temp_schema()``), a custom SQLite ``text_factory`` or
``row_factory``. A private in-memory SQLite database (``sqlite://``) is one
database per DBAPI connection: each gets its own identity *and* scope.
"""

from __future__ import annotations

import hashlib
import itertools
import sqlite3
import threading
import uuid
from typing import TYPE_CHECKING, Any

from sqlalchemy import event
from sqlalchemy.pool import StaticPool

from querycache.integration.drivers import in_transaction

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from querycache.integration.engine import EngineBinding

__all__ = ["IDENT_KEY", "SCOPE_KEY", "ConnectionIdentities", "Idents", "observe"]

#: ``record.info`` key: the interned result identity of this DBAPI connection
IDENT_KEY = "_qc_ident"
#: ``record.info`` key: the invalidation scope of a private in-memory connection
SCOPE_KEY = "_qc_scope"

#: settings that change what a query returns or how values come back
PG_SETTINGS = (
    "search_path",
    "TimeZone",
    "DateStyle",
    "IntervalStyle",
    "extra_float_digits",
    "bytea_output",
    "standard_conforming_strings",
    "lc_monetary",
    "lc_numeric",
    "lc_time",
    "client_encoding",
    "default_transaction_read_only",
    "default_transaction_isolation",
    "default_text_search_config",
    "row_security",
    "transform_null_equals",
    "array_nulls",
    "xmloption",
    "xmlbinary",
    "quote_all_identifiers",
    "session_replication_role",
)
_PG_QUERY = "SELECT current_user, session_user, pg_my_temp_schema()::int, " + ", ".join(
    f"current_setting('{name}')" for name in PG_SETTINGS
)
_SQLITE_PRAGMAS = (
    "reverse_unordered_selects",
    "full_column_names",
    "short_column_names",
    "foreign_keys",
    "recursive_triggers",
    "legacy_alter_table",
    "query_only",
    "trusted_schema",
    "defer_foreign_keys",
    "encoding",
)
_SQLITE_QUERY = (
    "SELECT (SELECT group_concat(name || '=' || file, char(10)) FROM pragma_database_list), "
    "'a' LIKE 'A', "  # case_sensitive_like cannot be read, only seen at work
    + ", ".join(f"(SELECT * FROM pragma_{p})" for p in _SQLITE_PRAGMAS)
)
_PLAIN_TEXT = (str, bytes, bytearray)


def observe(dbapi_connection: Any, dialect_name: str) -> tuple[str, bool]:
    """What ``dbapi_connection`` is beyond its URL: ``(settings text, private)``.

    One query on the raw DBAPI connection (inside the greenlet for async
    drivers). ``private`` means the connection holds state no other connection
    has (temporary objects, an in-memory attachment, Python-side row
    conversion): its results must not be shared with any other connection.
    """
    if dialect_name == "postgresql":
        row = _one(dbapi_connection, _PG_QUERY)
        private = bool(row[2])  # temporary objects: this session only
        return repr((row[0], row[1], *row[3:])), private
    if dialect_name == "sqlite":
        row = _one(dbapi_connection, _SQLITE_QUERY)
        attached = [line.partition("=") for line in (row[0] or "").split("\n") if line]
        # an attached in-memory database or temporary objects: this connection only
        private = any(name != "main" and not file for name, _, file in attached)
        raw = getattr(dbapi_connection, "driver_connection", dbapi_connection)
        text_factory = getattr(raw, "text_factory", str)
        row_factory = getattr(raw, "row_factory", None)
        if text_factory not in _PLAIN_TEXT or row_factory not in (None, sqlite3.Row):
            private = True
        name = getattr(text_factory, "__name__", "?")
        return repr((row[1:], name, [(n, f) for n, _, f in attached if n != "main"])), private
    return "", False  # another backend: nothing observed, the URL is the identity


def _one(dbapi_connection: Any, sql: str) -> tuple[Any, ...]:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(sql)
        return tuple(cursor.fetchone())
    finally:
        cursor.close()


class Idents:
    """Result identities interned to small ints (one table per cache)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids: dict[str, int] = {}
        #: ident → identity string (the Redis key digests the string)
        self.identity: dict[int, str] = {}

    def intern(self, identity: str) -> int:
        """The small int standing for ``identity`` in memory keys."""
        with self._lock:
            ident = self._ids.get(identity)
            if ident is None:
                ident = self._ids[identity] = len(self._ids) + 1
                self.identity[ident] = identity
            return ident


class _View:
    """A pool record seen as a fairy (``dbapi_connection``) for :func:`in_transaction`."""

    __slots__ = ("dbapi_connection",)

    def __init__(self, dbapi_connection: Any) -> None:
        self.dbapi_connection = dbapi_connection


class ConnectionIdentities:
    """The per-engine bookkeeping: observes new connections, keeps the common ident.

    ``binding.ident`` is the ident every observed connection shares, or 0 when
    none was observed yet or two differ (then paths that cannot see the
    connection, the ORM hook, step aside; the others key on the connection's
    own ident).
    """

    def __init__(self, binding: EngineBinding, engine: Engine, private_memory: bool) -> None:
        self.binding = binding
        self.base = binding.identity
        self.dialect_name = engine.dialect.name
        self.private_memory = private_memory
        # a private in-memory database shared by all sessions only with StaticPool
        # (one connection); otherwise each thread or checkout has its own
        self.uniform_possible = not private_memory or isinstance(engine.pool, StaticPool)
        self.common: int | None = None
        self.lock = threading.Lock()
        self._count = itertools.count()
        event.listen(engine.pool, "checkout", self.on_checkout)

    def on_checkout(self, dbapi_connection: Any, record: Any, proxy: Any) -> None:
        """Pool ``checkout``: observe a DBAPI connection the first time (never raises)."""
        info = record.info
        if IDENT_KEY in info:
            return
        try:
            self._observe(dbapi_connection, info)
        except Exception as exc:
            info.pop(IDENT_KEY, None)
            self.binding.core.failed("observing a connection", exc)

    def _observe(self, dbapi_connection: Any, info: dict[str, Any]) -> None:
        core = self.binding.core
        if self.dialect_name not in ("postgresql", "sqlite"):
            self._settle(core.idents.intern(self.base), info)  # nothing to observe: the URL
            return
        busy = in_transaction(_View(dbapi_connection))
        if busy is not False:
            # its connect events left a transaction open (or the driver cannot
            # say): a rollback may undo what they set; observe next time
            self._diverge()
            return
        try:
            text, private = observe(dbapi_connection, self.dialect_name)
        finally:
            dbapi_connection.rollback()  # our SELECT may have begun a transaction
        scope = None
        if self.private_memory:
            n = next(self._count)
            identity = f"{self.base}:{n}"
            scope = self.binding.scope if n == 0 else f"{self.binding.scope}#{n}"
        elif private:
            identity = f"{self.base}|private:{uuid.uuid4().hex}"
        elif text:
            digest = hashlib.blake2b(text.encode(), digest_size=8).hexdigest()
            identity = f"{self.base}|{digest}"
        else:
            identity = self.base
        if scope is not None:
            info[SCOPE_KEY] = scope
            self.binding.scopes.add(scope)
        self._settle(core.idents.intern(identity), info)

    def _settle(self, ident: int, info: dict[str, Any]) -> None:
        with self.lock:
            if self.common is None:
                self.common = ident
                if self.uniform_possible:
                    self.binding.ident = ident
            elif ident != self.common:
                self.binding.ident = 0
        info[IDENT_KEY] = ident

    def _diverge(self) -> None:
        with self.lock:
            self.binding.ident = 0
            if self.common is None:
                self.common = -1
