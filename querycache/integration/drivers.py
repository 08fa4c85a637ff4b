"""Small per-driver facts SQLAlchemy does not expose uniformly."""

from __future__ import annotations

from typing import Any

__all__ = ["in_transaction"]


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
