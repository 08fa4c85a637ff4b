"""What a database connection's current transaction has done to the cache.

One :class:`TxState` lives in the pool record's ``info`` of a DBAPI
connection from its first write (or setting) until its transaction ends. A
connection with no state is *clean*: its reads take the fast path.

* ``written``: tables written and not yet committed. Their invalidation is
  *pending*: applied when the outermost transaction commits (or the driver
  reports the write already committed, under autocommit), dropped when it
  rolls back. A savepoint rolled back keeps its tables pending: over-
  invalidating is safe, under-invalidating is not.
* ``images``: per written table, what its writes are known to have touched
  (:class:`~querycache.invalidation.images.Image`; ``None``: unknown rows).
* ``everything``: a write whose targets are unknown is pending.
* ``snapshot``: the transaction reads from a snapshot older than its
  statements (PostgreSQL REPEATABLE READ / SERIALIZABLE): reads bypass.
* ``tainted``: the connection ran ``SET ROLE``, ``SET search_path`` or the
  like; results may depend on it, so its reads bypass for good.
* ``failed``: a statement failed inside this PostgreSQL transaction; until it
  ends (rollback, or ``ROLLBACK TO SAVEPOINT``) every read goes to the driver,
  which raises what the database says (``InFailedSqlTransaction``).
* ``raw``: the DBAPI connection was handed to code outside SQLAlchemy since
  its checkout; what that code did is unknown, so reads bypass until checkin.
"""

from __future__ import annotations

from typing import Any

__all__ = ["STATE_KEY", "TxState", "state_of"]

STATE_KEY = "querycache.tx"


class TxState:
    """Pending invalidations and read restrictions of one connection."""

    __slots__ = (
        "ddl",
        "ddl_deltas",
        "everything",
        "failed",
        "images",
        "raw",
        "snapshot",
        "tainted",
        "written",
    )

    def __init__(self) -> None:
        self.written: set[str] = set()
        #: per written table, each write's image (None: unknown rows)
        self.images: dict[str, Any] = {}
        self.ddl = False
        #: what the DDL of this transaction adds to the catalog (None: unknown)
        self.ddl_deltas: list[Any] | None = None
        self.everything = False
        self.snapshot = False
        self.tainted = False
        self.failed = False
        self.raw = False

    @property
    def has_writes(self) -> bool:
        return self.everything or bool(self.written)

    def blocks_read_of(self, tables: frozenset[str]) -> str | None:
        """Why a read of ``tables`` must bypass the cache here, if it must."""
        if self.failed:
            return "transaction failed"
        if self.raw:
            return "connection used raw"
        if self.tainted:
            return "connection settings changed"
        if self.snapshot:
            return "snapshot isolation"
        if self.everything or not self.written.isdisjoint(tables):
            return "transaction wrote these tables"
        return None

    def take_writes(self) -> tuple[set[str], bool]:
        """Hand over the pending writes and forget them."""
        written, everything = self.written, self.everything
        self.written, self.everything, self.images = set(), False, {}
        return written, everything

    @property
    def idle(self) -> bool:
        """True when nothing remains worth keeping."""
        return not (
            self.written
            or self.everything
            or self.snapshot
            or self.tainted
            or self.ddl
            or self.failed
            or self.raw
        )


def state_of(info: dict[str, Any]) -> TxState:
    """The connection's state, created on first use."""
    state = info.get(STATE_KEY)
    if state is None:
        state = info[STATE_KEY] = TxState()
    return state
