"""The process the write-behind crash test kills: a fork server and its children.

Run as ``python -m tests.wb_crash_child``: it imports everything once, then
for each ``spawn <json>`` line on stdin forks a child (printing its pid) that
submits and flushes until it is killed (``mode: work``), or applies what is
journaled and exits (``mode: drain``). Forking from a warm parent keeps a
kill-and-restart cycle in milliseconds, so a test can afford 50 of them.

A work child appends a line to ``acks`` after each ``submit`` returned
(``I<k>``: the insert of key k, ``U<k>``: its update) and one byte to
``marks`` around each batch: ``C`` before the database commit, ``D`` after
it, ``A`` after the journal ack; so after a kill the last byte tells where it
landed.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import traceback

from sqlalchemy import Column, Integer, MetaData, Table, create_engine, insert, update

from querycache import QueryCache

md = MetaData()
log = Table("log", md, Column("k", Integer, nullable=False), Column("n", Integer, nullable=False))
GROUP = 3


def _append(fd: int, data: bytes) -> None:
    os.write(fd, data)  # one write(2) per record: whole or absent after a kill


def child(cfg: dict) -> None:
    marks = os.open(cfg["marks"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    acks = os.open(cfg["acks"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    cache = QueryCache(namespace=cfg["namespace"], discover_views=False)  # a faster start
    engine = cache.wrap(create_engine(cfg["db"]))
    dialect = engine.dialect
    commit = dialect.do_commit

    def do_commit(dbapi_connection):  # instrumentation only: the commit itself is unchanged
        _append(marks, b"C")
        time.sleep(0.001)  # widen the window of a kill inside the commit call
        commit(dbapi_connection)
        _append(marks, b"D")
        time.sleep(0.002)  # widen the window between database commit and journal ack

    dialect.do_commit = do_commit
    wb = cache.write_behind(
        engine, journal=cfg["journal"], queue=cfg["queue"], batch_size=8, flush_interval=0.005
    )
    ack = wb.journal.ack

    def acked(seqs):
        ack(seqs)
        _append(marks, b"A")

    wb.journal.ack = acked  # type: ignore[method-assign]
    if cfg["mode"] == "drain":
        wb.close()
        with open(cfg["done"], "w") as f:
            f.write("ok")
        return
    k = cfg["start"]
    deadline = time.monotonic() + 20
    rounds = 0
    while time.monotonic() < deadline:
        keys = list(range(k, k + GROUP))
        k += GROUP
        for key in keys:
            wb.submit(insert(log).values(k=key, n=0))
            _append(acks, b"I%09d\n" % key)
        for key in keys:
            wb.submit(update(log).where(log.c.k == key).values(n=log.c.n + 1))
            _append(acks, b"U%09d\n" % key)
        rounds += 1
        if rounds % 3 == 0:
            wb.flush()


def main() -> None:
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped at once
    for line in sys.stdin:
        cmd, _, arg = line.strip().partition(" ")
        if cmd != "spawn":
            break
        cfg = json.loads(arg)
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                child(cfg)
            except BaseException:
                with open(cfg["errors"], "a") as f:
                    f.write(traceback.format_exc())
                code = 1
            os._exit(code)
        print(pid, flush=True)


if __name__ == "__main__":
    main()
