"""Real servers for tests: ``redis-server``, a Redis Cluster and PostgreSQL.

Every server here is started from its binary on loopback, on a free port, in a
temporary directory, and stopped (its directory removed) by :meth:`stop`.
Nothing is mocked. The classes are usable from any test suite::

    with PostgresServer() as pg, RedisServer() as redis:
        engine = create_engine(pg.url(driver="psycopg"))
        cache = QueryCache(redis_url=redis.url)

PostgreSQL refuses to run as root; when this process is root the server runs
as an unprivileged account (``postgres`` if it exists, else ``nobody``).

When a binary is missing, :class:`ServerUnavailable` says how to install it;
tests are expected to fail on it, never to skip silently.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self

__all__ = [
    "PostgresServer",
    "RedisCluster",
    "RedisServer",
    "ServerUnavailable",
    "free_port",
]

INSTALL_HINT = (
    "install Debian's packages: apt-get install redis-server postgresql postgresql-contrib "
    "(`make test` does this by itself when run as root)"
)


class ServerUnavailable(RuntimeError):
    """A server binary is missing or the server would not start."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now.

    Under pytest-xdist each worker takes only ports congruent to its index
    modulo the worker count, so two workers can never pick the same one
    between choosing it and their server binding it. (Candidates are drawn
    at random: Linux hands ``bind(("", 0))`` only even ports.)
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    if count <= 1 or not (worker.startswith("gw") and worker[2:].isdigit()):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])
    index = int(worker[2:]) % count
    for _ in range(1000):
        base = random.randrange(20_000, 60_000)
        port = base - base % count + index
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise ServerUnavailable("no free port for this xdist worker")


def _wait_for_port(port: int, deadline: float, proc: subprocess.Popen[bytes] | None) -> None:
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ServerUnavailable(f"server on port {port} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.02)
    raise ServerUnavailable(f"nothing listening on 127.0.0.1:{port} before the deadline")


def _find_binary(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    if candidates:
        return candidates[0]
    raise ServerUnavailable(f"{name!r} not found; {INSTALL_HINT}")


class RedisServer:
    """One ``redis-server`` process with no persistence.

    ``extra`` adds ``redis.conf`` directives, e.g. ``{"maxmemory": "2mb",
    "maxmemory-policy": "allkeys-lru"}``.
    """

    def __init__(self, extra: dict[str, str] | None = None, port: int | None = None) -> None:
        self.binary = _find_binary("redis-server")
        self.port = port or free_port()
        self.extra = dict(extra or {})
        self.dir = Path(tempfile.mkdtemp(prefix="qc-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _args(self) -> list[str]:
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.dir),
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
            "--daemonize",
            "no",
        ]
        for key, value in self.extra.items():
            args += [f"--{key}", value]
        return args

    def start(self) -> Self:
        self.proc = subprocess.Popen(
            self._args(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        _wait_for_port(self.port, time.monotonic() + 10, self.proc)
        return self

    def client(self, **kw: object):  # -> redis.Redis
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, **kw)  # type: ignore[arg-type]

    def pause(self) -> None:
        """SIGSTOP the server: connections hang, as with a stalled host."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL the server (the port is kept for :meth:`restart`)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(10)

    def restart(self) -> None:
        self.kill()
        self.start()

    def stop(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class RedisCluster:
    """A Redis Cluster of ``masters`` primaries (no replicas), on loopback."""

    def __init__(self, masters: int = 3) -> None:
        self.nodes = [
            RedisServer(
                {
                    "cluster-enabled": "yes",
                    "cluster-config-file": "nodes.conf",
                    "cluster-node-timeout": "5000",
                    "cluster-require-full-coverage": "yes",
                }
            )
            for _ in range(masters)
        ]
        for node in self.nodes:
            node.extra["cluster-config-file"] = f"nodes-{node.port}.conf"
            # the bus port defaults to port + 10000, which may not exist
            node.extra["cluster-port"] = str(free_port())

    @property
    def url(self) -> str:
        return self.nodes[0].url

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", n.port) for n in self.nodes]

    def start(self) -> Self:
        try:
            return self._start()
        except BaseException:
            self.stop()  # __exit__ does not run when __enter__ fails
            raise

    def _start(self) -> Self:
        for node in self.nodes:
            node.start()
        cli = _find_binary("redis-cli")
        addrs = [f"127.0.0.1:{n.port}" for n in self.nodes]
        subprocess.run(
            [cli, "--cluster", "create", *addrs, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=60,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            states = [n.client().cluster("info") for n in self.nodes]
            if all(s.get("cluster_state") == "ok" for s in states):
                return self
            time.sleep(0.05)
        raise ServerUnavailable("redis cluster did not reach cluster_state:ok")

    def client(self, **kw: object):  # -> redis.cluster.RedisCluster
        from redis.cluster import ClusterNode
        from redis.cluster import RedisCluster as Client

        nodes = [ClusterNode(h, p) for h, p in self.startup_nodes]
        return Client(startup_nodes=nodes, **kw)  # type: ignore[arg-type]

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _fast_tmp() -> str | None:
    """``/dev/shm`` when it is writable and roomy (a container's default 64 MB
    is not: a cluster and its test databases would fill it), else None."""
    shm = "/dev/shm"
    if not (os.path.isdir(shm) and os.access(shm, os.W_OK)):
        return None
    st = os.statvfs(shm)
    return shm if st.f_bavail * st.f_frsize >= 4 * 2**30 else None


def _unprivileged_user() -> pwd.struct_passwd | None:
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise ServerUnavailable("running as root and no unprivileged account to run PostgreSQL")


class PostgresServer:
    """A throw-away PostgreSQL cluster (``initdb`` + ``pg_ctl``) on loopback.

    Durability is off (``fsync=off``); ``pg_stat_statements`` is preloaded so
    tests can count executions on the server side.
    """

    user = "qc"
    password = "qc-secret"

    def __init__(self, settings: dict[str, str] | None = None) -> None:
        self.initdb = _find_binary("initdb")
        self.pg_ctl = _find_binary("pg_ctl")
        self.port = free_port()
        # on tmpfs when there is one (fsync is off anyway): CREATE DATABASE
        # and removing the cluster at the end are several times faster
        self.dir = Path(tempfile.mkdtemp(prefix="qc-pg-", dir=_fast_tmp()))
        self.data = self.dir / "data"
        self.settings = {
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "200",
            "max_prepared_transactions": "10",  # two-phase commit tests
            "shared_buffers": "128MB",
            "shared_preload_libraries": "pg_stat_statements",
            "pg_stat_statements.track": "all",
            "pg_stat_statements.max": "50000",  # a long session keeps every count
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(self.dir),
            **(settings or {}),
        }
        self._os_user = _unprivileged_user()

    def _run(self, args: list[str], **kw: object) -> subprocess.CompletedProcess[bytes]:
        user = self._os_user
        env = {**os.environ, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}
        if user is not None:
            env["HOME"] = str(self.dir)
            env["USER"] = user.pw_name
        return subprocess.run(
            args,
            user=user.pw_uid if user else None,
            group=user.pw_gid if user else None,
            extra_groups=[] if user else None,
            env=env,
            cwd=self.dir,
            capture_output=True,
            **kw,  # type: ignore[arg-type]
        )

    def start(self) -> Self:
        if self._os_user is not None:
            os.chown(self.dir, self._os_user.pw_uid, self._os_user.pw_gid)
        pwfile = self.dir / "pw"
        pwfile.write_text(self.password)
        if self._os_user is not None:
            os.chown(pwfile, self._os_user.pw_uid, self._os_user.pw_gid)
        res = self._run(
            [
                self.initdb,
                "-D",
                str(self.data),
                "-U",
                self.user,
                "-A",
                "md5",
                "--pwfile",
                str(pwfile),
                "-E",
                "UTF8",
                "--no-sync",
            ],
            timeout=120,
        )
        if res.returncode:
            raise ServerUnavailable(f"initdb failed: {res.stderr.decode(errors='replace')}")
        opts = " ".join(f"-c {k}={v}" for k, v in self.settings.items())
        res = self._run(
            [
                self.pg_ctl,
                "-D",
                str(self.data),
                "-l",
                str(self.dir / "log"),
                "-w",
                "-t",
                "60",
                "-o",
                f"-p {self.port} {opts}",
                "start",
            ],
            timeout=90,
        )
        if res.returncode:
            log = (
                (self.dir / "log").read_text(errors="replace")
                if (self.dir / "log").exists()
                else ""
            )
            raise ServerUnavailable(f"pg_ctl start failed: {res.stderr.decode()} {log[-2000:]}")
        _wait_for_port(self.port, time.monotonic() + 30, None)
        return self

    def url(self, driver: str = "psycopg", database: str = "postgres") -> str:
        """A SQLAlchemy URL; ``driver`` is ``psycopg`` or ``asyncpg``."""
        return f"postgresql+{driver}://{self.user}:{self.password}@127.0.0.1:{self.port}/{database}"

    @contextlib.contextmanager
    def admin(self, database: str = "postgres") -> Iterator[Any]:
        """An autocommit psycopg connection to ``database``, as the superuser."""
        import psycopg

        dsn = f"host=127.0.0.1 port={self.port} user={self.user} password={self.password}"
        with psycopg.connect(dsn + f" dbname={database}", autocommit=True) as conn:
            yield conn

    def create_database(
        self, name: str, *, extensions: tuple[str, ...] = ("pg_stat_statements",)
    ) -> str:
        """Create database ``name`` (with ``extensions``); return its psycopg URL."""
        self.drop_database(name)
        with self.admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        with self.admin(name) as conn:
            for ext in extensions:
                conn.execute(f'CREATE EXTENSION IF NOT EXISTS "{ext}"')
        return self.url("psycopg", name)

    def drop_database(self, name: str) -> None:
        """Drop database ``name`` if it exists, ending its sessions first."""
        with self.admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        if self.data.exists():
            self._run(
                [self.pg_ctl, "-D", str(self.data), "-m", "immediate", "-w", "stop"], timeout=60
            )
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
