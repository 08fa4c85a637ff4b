"""Durable journals of write-behind entries, behind one small interface.

An entry is appended (durably) by ``submit``, claimed in order by the one
worker holding the journal's lease, and leaves the journal when it is acked
(applied, or found already applied) or buried (moved to the dead letters).
Entry ids (``seq``) are integers that only grow, so "nothing at or below
``low_water() - 1`` is journaled" lets the applied-ids table forget.

:class:`SqliteJournal` is a SQLite file (WAL, ``synchronous=FULL``: every
append is fsynced before ``submit`` returns); :class:`~querycache.queues.
redis_journal.RedisJournal` is a Redis stream with a consumer group.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DeadLetter", "Journal", "Journaled", "SqliteJournal"]


@dataclass(frozen=True, slots=True)
class Journaled:
    """An entry as claimed from a journal."""

    seq: int
    data: bytes


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An entry that failed permanently, with its error."""

    id: str
    sql: str
    error: str
    failed_at: float


class Journal(ABC):
    """What the write-behind front and worker need from a journal."""

    #: identifies this journal in the applied-ids table (<= 64 characters)
    name: str
    #: changes whenever a new lease is taken (None: no lease)
    lease_id: object = None

    @abstractmethod
    def append(self, data: bytes) -> int:
        """Store one entry durably; its seq."""

    @abstractmethod
    def acquire(self) -> bool:
        """Take (or renew) the worker lease; False when another process holds it.
        A new lease starts claiming from the oldest unacked entry."""

    @abstractmethod
    def claim(self, limit: int) -> list[Journaled]:
        """The next entries (in seq order) not yet claimed under this lease."""

    @abstractmethod
    def ack(self, seqs: list[int]) -> None:
        """Remove entries that the database holds."""

    @abstractmethod
    def bury(self, entry: Journaled, sql: str, error: str) -> None:
        """Move an entry to the dead letters."""

    @abstractmethod
    def pending(self) -> int:
        """Entries still journaled (claimed or not)."""

    @abstractmethod
    def oldest(self) -> float | None:
        """Submission time of the oldest journaled entry."""

    @abstractmethod
    def low_water(self) -> int:
        """A seq such that no journaled entry has a smaller one (now or later)."""

    @abstractmethod
    def high_water(self) -> int:
        """The largest seq journaled now (0: none)."""

    @abstractmethod
    def settled(self, through: int) -> bool:
        """True when no entry with seq <= ``through`` is journaled any more."""

    @abstractmethod
    def dead_letters(self) -> list[DeadLetter]: ...

    @abstractmethod
    def retry(self, ids: list[str] | None = None) -> int:
        """Re-queue dead letters (all, or ``ids``) as new entries; how many."""

    @abstractmethod
    def drop(self, ids: list[str] | None = None) -> int:
        """Delete dead letters (all, or ``ids``); how many."""

    @abstractmethod
    def release(self) -> None:
        """Give the lease up (it also ends with the process)."""

    @abstractmethod
    def close(self) -> None: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries (seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS dead (seq INTEGER PRIMARY KEY, data BLOB NOT NULL,
    sql TEXT NOT NULL, error TEXT NOT NULL, failed_at REAL NOT NULL);
"""


class SqliteJournal(Journal):
    """A journal in a SQLite file; one worker at a time (an ``flock`` lease),
    any number of submitting threads and processes."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(_SCHEMA)  # idempotent, so no transaction is needed
        db.execute("INSERT OR IGNORE INTO meta VALUES ('id', ?)", (uuid.uuid4().hex,))
        (ident,) = db.execute("SELECT value FROM meta WHERE key = 'id'").fetchone()
        self._db = db
        self.name = f"sqlite:{ident}"
        self._lease: int | None = None
        self._claimed = 0

    def _one(self, sql: str, args: tuple[object, ...] = ()) -> tuple[object, ...] | None:
        with self._lock:
            row: tuple[object, ...] | None = self._db.execute(sql, args).fetchone()
            return row

    def append(self, data: bytes) -> int:
        with self._lock:
            cur = self._db.execute(
                "INSERT INTO entries (at, data) VALUES (?, ?)", (time.time(), data)
            )
            return int(cur.lastrowid or 0)

    def acquire(self) -> bool:
        if self._lease is not None:
            return True
        fd = os.open(str(self.path) + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._lease, self._claimed = fd, 0
        self.lease_id = object()
        return True

    def claim(self, limit: int) -> list[Journaled]:
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, data FROM entries WHERE seq > ? ORDER BY seq LIMIT ?",
                (self._claimed, limit),
            ).fetchall()
        if rows:
            self._claimed = rows[-1][0]
        return [Journaled(seq, bytes(data)) for seq, data in rows]

    def ack(self, seqs: list[int]) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("DELETE FROM entries WHERE seq = ?", [(s,) for s in seqs])
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def bury(self, entry: Journaled, sql: str, error: str) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "INSERT OR REPLACE INTO dead VALUES (?, ?, ?, ?, ?)",
                    (entry.seq, entry.data, sql, error, time.time()),
                )
                self._db.execute("DELETE FROM entries WHERE seq = ?", (entry.seq,))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def pending(self) -> int:
        row = self._one("SELECT count(*) FROM entries")
        return int(row[0]) if row else 0  # type: ignore[call-overload]

    def oldest(self) -> float | None:
        row = self._one("SELECT min(at) FROM entries")
        return float(row[0]) if row and row[0] is not None else None  # type: ignore[arg-type]

    def low_water(self) -> int:
        row = self._one("SELECT min(seq) FROM entries")
        if row and row[0] is not None:
            return int(row[0])  # type: ignore[call-overload]
        # empty: every later entry gets a seq above the last one handed out
        row = self._one("SELECT seq FROM sqlite_sequence WHERE name = 'entries'")
        return int(row[0]) + 1 if row else 0  # type: ignore[call-overload]

    def high_water(self) -> int:
        row = self._one("SELECT max(seq) FROM entries")
        return int(row[0]) if row and row[0] is not None else 0  # type: ignore[call-overload]

    def settled(self, through: int) -> bool:
        return self._one("SELECT 1 FROM entries WHERE seq <= ? LIMIT 1", (through,)) is None

    def dead_letters(self) -> list[DeadLetter]:
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, sql, error, failed_at FROM dead ORDER BY seq"
            ).fetchall()
        return [DeadLetter(str(s), sql, err, at) for s, sql, err, at in rows]

    def _dead_rows(self, ids: list[str] | None) -> list[tuple[int, bytes]]:
        rows = self._db.execute("SELECT seq, data FROM dead ORDER BY seq").fetchall()
        if ids is not None:
            wanted = {str(i) for i in ids}
            rows = [r for r in rows if str(r[0]) in wanted]
        return rows

    def retry(self, ids: list[str] | None = None) -> int:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                rows = self._dead_rows(ids)
                now = time.time()
                for seq, data in rows:
                    self._db.execute("INSERT INTO entries (at, data) VALUES (?, ?)", (now, data))
                    self._db.execute("DELETE FROM dead WHERE seq = ?", (seq,))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return len(rows)

    def drop(self, ids: list[str] | None = None) -> int:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                rows = self._dead_rows(ids)
                self._db.executemany("DELETE FROM dead WHERE seq = ?", [(r[0],) for r in rows])
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return len(rows)

    def release(self) -> None:
        if self._lease is not None:
            fd, self._lease = self._lease, None
            self.lease_id = None
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def close(self) -> None:
        self.release()
        with self._lock:
            self._db.close()
