"""Small per-driver facts SQLAlchemy does not expose uniformly."""

from __future__ import annotations

import sys
from typing import Any

from querycache.invalidation.transactions import STATE_KEY, state_of

__all__ = [
    "BEGAN_KEY",
    "called_from_outside",
    "clear_flag",
    "foreign_transaction",
    "in_transaction",
    "mark_raw",
    "note_began",
    "set_flag",
    "transaction_ended",
    "transaction_failed",
]


def in_transaction(fairy: Any) -> bool | None:
    """Whether the DBAPI connection is inside a database transaction.

    Asked after a write: if it is not, the driver (autocommit, SQLite outside
    a transaction, AUTOCOMMIT isolation) has already committed it. ``None``
    means the driver gives no answer.
    """
    try:
        conn = fairy.dbapi_connection
        flag = getattr(conn, "in_transaction", None)  # sqlite3
        if isinstance(flag, bool):
            return flag
        info = getattr(conn, "info", None)  # psycopg 3
        status = getattr(info, "transaction_status", None)
        if status is not None:
            return int(status) != 0  # TransactionStatus.IDLE
        inner = getattr(conn, "_connection", None)  # SQLAlchemy's async adapters
        if inner is not None:
            if hasattr(inner, "is_in_transaction"):  # asyncpg
                return bool(inner.is_in_transaction())
            flag = getattr(getattr(inner, "_conn", None), "in_transaction", None)  # aiosqlite
            if isinstance(flag, bool):
                return flag
    except Exception:
        return None
    return None


# -- transactions the cache did not drive ------------------------------------------

BEGAN_KEY = "querycache.began"
"""Set in a DBAPI connection's ``info`` once a statement went to its driver
through SQLAlchemy; cleared when the transaction ends."""

# modules whose access to a connection's DBAPI object is the machinery itself;
# ``sqlalchemy.ext.asyncio`` and ``sqlalchemy.util`` (greenlet_spawn) hand it to
# user code (``AsyncConnection.get_raw_connection()``, ``AsyncEngine.raw_connection()``)
_INTERNAL = ("sqlalchemy.engine", "sqlalchemy.pool", "sqlalchemy.dialects", "sqlalchemy.orm")
_INTERNAL += ("sqlalchemy.connectors", "querycache.")


def foreign_transaction(fairy: Any) -> bool:
    """Whether the driver is inside a transaction that no statement sent
    through SQLAlchemy started (raw DBAPI use); only asked on a miss."""
    return BEGAN_KEY not in fairy.info and in_transaction(fairy) is True


def set_flag(info: dict[str, Any], name: str) -> None:
    """Set the :class:`TxState` flag ``name`` (``failed``, ``raw``)."""
    setattr(state_of(info), name, True)


def clear_flag(info: dict[str, Any] | None, name: str) -> None:
    """Clear the :class:`TxState` flag ``name``; drop a state left idle."""
    state = info.get(STATE_KEY) if info is not None else None
    if state is not None and getattr(state, name):
        setattr(state, name, False)
        if state.idle:
            info.pop(STATE_KEY, None)  # type: ignore[union-attr]


def called_from_outside(depth: int = 2) -> bool:
    """Whether the caller ``depth`` frames up is code outside SQLAlchemy's
    engine, pool, dialects and ORM (and outside querycache)."""
    try:
        name = sys._getframe(depth).f_globals.get("__name__", "")
    except ValueError:
        return True
    return not name.startswith(_INTERNAL)


def transaction_failed(fairy: Any) -> bool:
    """After an error on PostgreSQL: is the connection's transaction aborted
    (the driver is still in a transaction, so it is in the failed state)?"""
    return in_transaction(fairy) is not False


def transaction_ended(info: dict[str, Any] | None) -> None:
    """The connection's transaction ended (commit, rollback, two-phase end):
    forget that SQLAlchemy began it and that it failed."""
    if info is not None:
        info.pop(BEGAN_KEY, None)
        clear_flag(info, "failed")


def mark_raw(fairy: Any) -> None:
    """Mark a DBAPI connection handed to code outside SQLAlchemy (until checkin)."""
    try:
        set_flag(fairy.info, "raw")
    except NotImplementedError:  # SQLAlchemy's first-connect probe
        pass


def note_began(fairy: Any) -> None:
    """Record that statements sent through SQLAlchemy (or querycache's own)
    may have begun the connection's current transaction."""
    try:
        fairy.info[BEGAN_KEY] = True
    except (NotImplementedError, AttributeError):
        pass
