"""The staleness bound under every Redis fault (the channel lease).

One writer commits ``UPDATE counter SET v = v + 1`` every 10 ms through its
cache and records, per value, the monotonic time its ``COMMIT`` returned;
reader threads read the counter through other caches (memory tier, Redis,
database) and record, per read, its start time and the value it got. A read
that started at ``t`` and got ``v`` is *stale* when a newer value's commit had
returned before ``t - staleness_bound``. ``CLOCK_MONOTONIC`` is system-wide on
Linux, so times from different processes compare directly.

While the workload runs, the Redis server goes through, in order: ``SIGSTOP``
for 3 s, ``DEBUG SLEEP``, ``CLIENT PAUSE`` (all commands), a graceful stop and
start, a kill and start (both on the same port, empty), and a partition of one
reading cache (its sockets shut down and every reconnection pointed at a dead
port), healed later. Caches in different OS processes and in one process: the
writer's process holds the writing cache and a reading cache, two more
processes one reading cache each; with ``staleness_bound=0.02`` and the
default.

Must hold: zero stale reads, zero exceptions reaching the caller (readers and
writer), the caches served reads (counted on the database side), and every
reading cache reports the time it spent without a lease.

Each case runs ~15-20 s. ``QC_STALENESS_LONG=1`` runs the long variant (each
fault 3 s, ``-m slow``).

Run as a script (``python tests/test_staleness.py '<json>'``) this file is one
OS process of the test: it builds its caches, prints ``ready``, starts its
threads on ``go``, obeys ``partition <i> <port>`` / ``heal <i>`` and prints its
results on ``stop``.
"""

from __future__ import annotations

import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository and tests importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import pytest
import sqlalchemy as sa
from redis_worker import COUNTER, SqliteTrace, connected_cache, create_counter, poll

from querycache import QueryCache
from querycache.testing import RedisServer, free_port

#: wall-clock bounds and throughput floors: `make test` runs these alone (see Makefile)
pytestmark = pytest.mark.serial

HERE = Path(__file__).resolve()
LONG = os.environ.get("QC_STALENESS_LONG") == "1"
POINT = sa.select(COUNTER.c.v).where(COUNTER.c.id == 1)
READ_SQL = "FROM counter"


# -- the child process -----------------------------------------------------------------------


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


class Partition:
    """Cut one cache off Redis inside its process, without a proxy: every socket
    of its clients is shut down and every (re)connection goes to a dead port."""

    def __init__(self, cache: QueryCache) -> None:
        self.cache = cache
        clients = cache.redis.clients
        self.url = clients._url
        self.port = clients.sync.connection_pool.connection_kwargs["port"]

    def _connections(self) -> list[Any]:
        pool = self.cache.redis.clients.sync.connection_pool
        conns = list(pool._available_connections) + list(pool._in_use_connections)
        pubsub = self.cache.bus.pubsub
        if pubsub is not None and pubsub.connection is not None:
            conns.append(pubsub.connection)
        return conns

    def cut(self, dead_port: int) -> None:
        clients = self.cache.redis.clients
        clients._url = f"redis://127.0.0.1:{dead_port}/0"
        clients.sync.connection_pool.connection_kwargs["port"] = dead_port
        for conn in self._connections():
            conn.port = dead_port
            sock = conn._sock
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def heal(self) -> None:
        clients = self.cache.redis.clients
        clients._url = self.url
        clients.sync.connection_pool.connection_kwargs["port"] = self.port
        for conn in self._connections():
            conn.port = self.port


class Role:
    """The caches of one process, their threads and what they saw."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.commits: list[tuple[int, float]] = []
        self.reads: list[list[tuple[float, int]]] = []
        self.caches: list[QueryCache] = []
        self.engines: list[sa.Engine] = []
        self.traces: list[SqliteTrace] = []
        self.threads: list[threading.Thread] = []
        for spec in cfg["caches"]:
            cache = connected_cache(
                redis_url=cfg["redis_url"],
                namespace=cfg["namespace"],
                **({"staleness_bound": cfg["bound"]} if cfg["bound"] else {}),
            )
            engine = sa.create_engine(cfg["db_url"])
            trace = SqliteTrace(engine)  # before wrap(), which may connect
            cache.wrap(engine)
            with engine.connect() as conn:  # warm: pool, Redis, tokens
                conn.execute(POINT).scalar_one()
            self.caches.append(cache)
            self.engines.append(engine)
            self.traces.append(trace)
            if spec.get("writer"):
                self.threads.append(threading.Thread(target=self._writer, args=(engine,)))
            for _ in range(spec.get("readers", 0)):
                seen: list[tuple[float, int]] = []
                self.reads.append(seen)
                self.threads.append(threading.Thread(target=self._reader, args=(engine, seen)))
        self.partitions = {i: Partition(c) for i, c in enumerate(self.caches)}
        self.reads_before = [t.count(READ_SQL) for t in self.traces]

    def _writer(self, engine: sa.Engine) -> None:
        v = 0
        while not self.stop.is_set():
            try:
                with engine.begin() as conn:
                    conn.execute(sa.update(COUNTER).where(COUNTER.c.id == 1).values(v=v + 1))
            except Exception as exc:
                self.errors.append(f"write: {type(exc).__name__}: {exc}"[:300])
                continue
            v += 1
            self.commits.append((v, time.monotonic()))
            self.stop.wait(0.01)  # pacing: a commit every ~10 ms

    def _reader(self, engine: sa.Engine, seen: list[tuple[float, int]]) -> None:
        while not self.stop.is_set():
            t0 = time.monotonic()
            try:
                with engine.connect() as conn:
                    value = conn.execute(POINT).scalar_one()
            except Exception as exc:
                self.errors.append(f"read: {type(exc).__name__}: {exc}"[:300])
                continue
            seen.append((t0, int(value)))
            self.stop.wait(0.0005)  # pacing, leaves the GIL to the other threads

    def results(self) -> dict[str, Any]:
        reports = [c.report().as_dict() for c in self.caches]
        return {
            "commits": self.commits,
            "reads": self.reads,
            "errors": self.errors,
            "db_reads": [t.count(READ_SQL) - b for t, b in zip(self.traces, self.reads_before)],
            "lease": [r["lease"] for r in reports],
            "cache_errors": [
                {k: v for k, v in r["errors"].items() if not k.startswith("redis ")}
                for r in reports
            ],
        }

    def close(self) -> None:
        for c in self.caches:
            c.close()
        for e in self.engines:
            e.dispose()


def child_main(argv: list[str]) -> int:
    role = Role(json.loads(argv[1]))
    _emit({"event": "ready"})
    try:
        for line in sys.stdin:
            cmd = line.split()
            if cmd == ["go"]:
                for t in role.threads:
                    t.start()
            elif cmd and cmd[0] == "partition":
                role.partitions[int(cmd[1])].cut(int(cmd[2]))
            elif cmd and cmd[0] == "heal":
                role.partitions[int(cmd[1])].heal()
            elif cmd == ["stop"]:
                role.stop.set()
                for t in role.threads:
                    t.join(30)
                _emit({"event": "done", **role.results()})
                break
    finally:
        role.close()
    return 0


# -- the parent --------------------------------------------------------------------------------


class Child:
    def __init__(self, cfg: dict[str, Any], log: Path) -> None:
        self._err = open(log, "w+")  # noqa: SIM115 - closed in close()
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE), json.dumps(cfg)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._err,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put("")

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def expect(self, event: str, timeout: float = 60.0) -> dict[str, Any]:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"child: no {event!r} within {timeout}s") from None
        if not line:
            self.proc.wait(10)
            raise AssertionError(
                f"child exited ({self.proc.returncode}) before {event!r}:\n"
                + self.log.read_text()[-3000:]
            )
        msg = json.loads(line)
        assert msg["event"] == event, msg
        return msg

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self._err.close()


def stale_reads(
    commits: list[tuple[int, float]], reads: list[tuple[float, int]], bound: float
) -> list[tuple[float, int, int, float]]:
    """Reads that got a value older than one whose commit returned more than
    ``bound`` before the read started: ``(start, seen, required, age)``."""
    times = [t for _, t in commits]
    out = []
    j = 0
    for start, value in sorted(reads):
        while j < len(times) and times[j] <= start - bound:
            j += 1
        required = j  # values are 1..n in commit order
        if value < required:
            out.append((start, value, required, start - times[value]))
    return out


def faults(server: RedisServer, partition: Any, heal: Any, short: float) -> list[tuple[str, float]]:
    """Put the server through every fault; returns ``(name, monotonic start)``."""
    done: list[tuple[str, float]] = []
    settle = 0.4

    def at(name: str) -> None:
        done.append((name, time.monotonic()))

    admin = server.client(socket_timeout=30)
    time.sleep(settle)  # pacing: the workload runs undisturbed first
    at("SIGSTOP 3 s")
    server.pause()
    time.sleep(3.0)
    server.resume()
    time.sleep(settle)

    at("DEBUG SLEEP")
    sleeper = threading.Thread(target=lambda: admin.execute_command("DEBUG", "SLEEP", short))
    sleeper.start()
    sleeper.join(30)
    time.sleep(settle)

    at("CLIENT PAUSE")
    server.client().client_pause(int(short * 1000), all=True)
    time.sleep(short + settle)

    at("stop/start")
    assert server.proc is not None
    server.proc.terminate()
    server.proc.wait(10)
    time.sleep(short / 2)
    server.start()
    time.sleep(settle + 0.2)

    at("kill/start")
    server.kill()
    time.sleep(short / 2)
    server.start()
    time.sleep(settle + 0.2)

    at("partition")
    partition(free_port())
    time.sleep(short + 0.3)
    heal()
    time.sleep(settle + 0.4)
    at("end")
    return done


def phase_of(t: float, phases: list[tuple[str, float]]) -> str:
    name = "warm-up"
    for n, start in phases:
        if t >= start:
            name = n
    return name


#: caches per process: the writer's process also holds a reader cache (two
#: caches in one process); two more processes hold one reader cache each
LAYOUT = [[{"writer": True, "readers": 1}, {"readers": 2}], [{"readers": 2}], [{"readers": 2}]]


@pytest.mark.parametrize("bound", [0.02, None], ids=["bound=0.02", "default bound"])
@pytest.mark.parametrize(
    "length", [pytest.param("short"), pytest.param("long", marks=pytest.mark.slow)]
)
def test_no_read_older_than_the_bound_under_every_redis_fault(tmp_path, bound, length):
    if length == "long" and not LONG:
        pytest.skip("long variant: set QC_STALENESS_LONG=1")
    url = f"sqlite:///{tmp_path / 'shared.sqlite'}"
    create_counter(url)
    server = RedisServer(extra={"enable-debug-command": "local"}).start()
    base = {
        "db_url": url,
        "redis_url": server.url,
        "namespace": "st" + uuid.uuid4().hex[:10],
        "bound": bound,
    }
    layout = LAYOUT
    children = [
        Child({**base, "caches": caches}, tmp_path / f"child{i}.log")
        for i, caches in enumerate(layout)
    ]
    # the partitioned cache: a reader (a writer cut off is the declared window)
    victim, victim_cache = children[1], 0
    try:
        for c in children:
            c.expect("ready")
        for c in children:
            c.send("go")
        phases = faults(
            server,
            lambda port: victim.send(f"partition {victim_cache} {port}"),
            lambda: victim.send(f"heal {victim_cache}"),
            short=3.0 if length == "long" else 0.5,
        )
        for c in children:
            c.send("stop")
        results = [c.expect("done") for c in children]
    finally:
        for c in children:
            c.close()
        server.stop()

    commits = [tuple(x) for r in results for x in r["commits"]]
    assert len(commits) > 100, f"the writer hardly wrote ({len(commits)} commits)"
    assert [v for v, _ in commits] == list(range(1, len(commits) + 1))
    bound_s = bound if bound is not None else QueryCache().staleness_bound
    errors = [e for r in results for e in r["errors"]]
    assert not errors, f"{len(errors)} errors reached the caller: {errors[:5]}"
    stale: list[tuple[str, Any]] = []
    total_reads = 0
    for r in results:
        for seen in r["reads"]:
            reads = [(float(t), int(v)) for t, v in seen]
            total_reads += len(reads)
            assert len(reads) > 200, "a reader hardly read"
            stale += [(phase_of(s[0], phases), s) for s in stale_reads(commits, reads, bound_s)]
    assert not stale, (
        f"{len(stale)} of {total_reads} reads older than {bound_s * 1000:.0f} ms after a "
        f"commit; first (phase, (start, seen, required, age)): {stale[:5]}"
    )
    for r in results:
        assert not any(r["cache_errors"]), r["cache_errors"]
    # the caches served reads: fewer executions on the database than reads
    db_reads = sum(n for r in results for n in r["db_reads"])
    assert db_reads < total_reads * 0.8, (db_reads, total_reads)
    # every reading cache lost its lease during the faults, and says so
    reader_leases = [
        lease
        for r, caches in zip(results, layout)
        for lease, spec in zip(r["lease"], caches)
        if spec.get("readers") and not spec.get("writer")
    ]
    for lease in reader_leases:
        assert lease["enabled"] and lease["staleness_bound"] == bound_s
        assert lease["lapses"] >= 3, lease
        assert lease["seconds_without_lease"] >= 3.0, lease  # SIGSTOP alone is 3 s


# -- the setting ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, error",
    [
        (0, ValueError),
        (-1, ValueError),
        (float("nan"), ValueError),
        (float("inf"), ValueError),
        ("0.1", TypeError),
        (True, TypeError),
        (None, TypeError),
    ],
)
def test_staleness_bound_is_validated(value, error):
    with pytest.raises(error, match="staleness_bound"):
        QueryCache(staleness_bound=value)


def test_a_memory_only_cache_has_no_lease():
    cache = QueryCache(staleness_bound=0.05)
    assert cache.lease is None and cache.memory.lease_until == float("inf")
    lease = cache.report().as_dict()["lease"]
    assert lease["enabled"] is False and lease["seconds_without_lease"] == 0.0


def test_a_starved_bus_cannot_extend_the_lease(redis_server, tmp_path):
    """The deadline comes from the send time the reply carries: a PONG handled
    long after its ping renews nothing, puts the lease in doubt (no Redis reads
    either), and only a ping sent a grace later renews it."""
    cache = connected_cache(redis_url=redis_server.url, namespace="starve" + uuid.uuid4().hex[:6])
    try:
        lease = cache.lease
        now = time.monotonic()
        old = cache.memory.lease_until
        # a reply to a ping sent 1 s ago (10 ms after the one before), handled only now
        assert not lease.proof(f"{lease.epoch} {now - 1.0!r} {now - 1.01!r}", now)
        assert cache.memory.lease_until == old
        assert lease.doubt_from == pytest.approx(now + lease.grace)
        assert cache.redis.in_doubt and not cache.redis.usable
        poll(lambda: lease.doubt_from is None, timeout=5, what="the lease renewed")
        # renewed by a ping sent after the grace: deadline = send time + validity
        assert cache.memory.lease_until - lease.validity >= now + lease.grace
        assert cache.report().as_dict()["lease"]["doubts"].get("late reply", 0) >= 1
    finally:
        cache.close()


def test_a_lapsed_lease_refuses_memory_hits_and_counts_them(redis_server, tmp_path):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    create_counter(url)
    cache = connected_cache(redis_url=redis_server.url, namespace="lapse" + uuid.uuid4().hex[:6])
    engine = sa.create_engine(url)
    trace = SqliteTrace(engine)
    cache.wrap(engine)
    try:
        with engine.connect() as conn:
            conn.execute(POINT).scalar_one()
            n = trace.count(READ_SQL)
            conn.execute(POINT).scalar_one()
            assert trace.count(READ_SQL) == n, "the second read was not a hit"
            cache.memory.lease_until = 0.0  # as if the proof had stopped coming
            conn.execute(POINT).scalar_one()
        assert cache.stats.lease_hits_lost >= 1
        assert cache.report().as_dict()["lease"]["hits_lost"] >= 1
    finally:
        cache.close()
        engine.dispose()


if __name__ == "__main__":
    sys.exit(child_main(sys.argv))
