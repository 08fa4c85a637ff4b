"""A pytest plugin: run an application's own test suite with a verifying cache.

::

    pytest -p querycache.pytest_plugin --querycache

(or ``querycache = true`` in the ``[pytest]`` ini section; the plugin is also
registered as a ``pytest11`` entry point, and does nothing unless enabled).

Every SQLAlchemy engine the suite creates (``create_engine``,
``create_async_engine``, ``engine_from_config``...) is wrapped, at its first
connection, by a :class:`~querycache.QueryCache` in verify mode — unless
something wrapped it first (an application that uses querycache itself keeps
its own cache). With the default ``--querycache-verify=1.0`` every hit is
re-executed on the caller's connection and the caller receives the
database's rows, so the suite behaves as without the cache; what the cache
*would* have served is compared with them. The session prints one summary
line and fails when any result differed.

Options: ``--querycache-verify=RATE`` (ini ``querycache_verify``), the
fraction of hits checked (below 1, unchecked hits are served from the cache);
``--querycache-ttl=SECONDS`` (ini ``querycache_ttl``).
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.engine.interfaces import Dialect

from querycache import verify as verify_module

__all__ = ["QueryCachePlugin"]

_ENABLE_HELP = "wrap every SQLAlchemy engine the tests create with a verifying querycache"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("querycache")
    group.addoption("--querycache", action="store_true", default=None, help=_ENABLE_HELP)
    group.addoption(
        "--querycache-verify",
        default=None,
        metavar="RATE",
        help="fraction of cache hits re-checked against the database (default 1.0)",
    )
    group.addoption("--querycache-ttl", default=None, metavar="SECONDS", help="entry TTL")
    parser.addini("querycache", _ENABLE_HELP, type="bool", default=False)
    parser.addini("querycache_verify", "fraction of hits re-checked (default 1.0)", default="1.0")
    parser.addini("querycache_ttl", "entry TTL in seconds (default 300)", default="300")


def pytest_configure(config: pytest.Config) -> None:
    enabled = config.getoption("querycache") or config.getini("querycache")
    if not enabled:
        return
    rate = config.getoption("querycache_verify") or config.getini("querycache_verify")
    ttl = config.getoption("querycache_ttl") or config.getini("querycache_ttl")
    try:
        plugin = QueryCachePlugin(float(rate), float(ttl))
    except ValueError as exc:
        raise pytest.UsageError(f"querycache: {exc}") from None
    config.pluginmanager.register(plugin, "querycache-verifier")
    plugin.install()


class QueryCachePlugin:
    """The enabled plugin: installs the engine hook, tallies, reports."""

    def __init__(self, rate: float, ttl: float) -> None:
        from querycache import QueryCache

        verify_module.check_rate(rate)
        QueryCache(ttl=ttl, verify=rate).close()  # validates ttl as the cache does
        self.rate = rate
        self.ttl = ttl
        self.caches: list[Any] = []
        self.engines = 0
        self.lock = threading.Lock()
        self.tally = verify_module.Tally()
        self._original: Any = None

    # -- lifecycle -----------------------------------------------------------
    def install(self) -> None:
        """Hook engine creation (``Dialect.engine_created``, which every
        ``create_engine`` calls) and start tallying verdicts."""
        verify_module.TALLIES.append(self.tally)
        original = Dialect.__dict__["engine_created"]
        self._original = original
        plugin = self

        def engine_created(cls: type, engine: Engine) -> None:
            original.__func__(cls, engine)
            plugin.created(engine)

        Dialect.engine_created = classmethod(engine_created)  # type: ignore[method-assign,assignment]

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        if self._original is not None:
            Dialect.engine_created = self._original  # type: ignore[method-assign]
            self._original = None
        if self.tally in verify_module.TALLIES:
            verify_module.TALLIES.remove(self.tally)
        for cache in self.caches:
            cache.close()

    # -- wrapping ------------------------------------------------------------
    def created(self, engine: Engine) -> None:
        """An engine was created: wrap it at its first connection, unless
        something else (the application's own QueryCache) wrapped it by then."""
        if getattr(engine.dialect, "_qc_plugin_hooked", False):
            return  # engine_created runs twice for some dialects
        engine.dialect._qc_plugin_hooked = True  # type: ignore[attr-defined]
        plugin = self

        def first_connect(conn: Any) -> None:
            plugin.wrap(engine)

        event.listen(engine, "engine_connect", first_connect, once=True)

    def wrap(self, engine: Engine) -> None:
        from querycache import QueryCache

        if getattr(engine.dialect.execution_ctx_cls, "_qc", None) is not None:
            return  # the application wraps it itself
        cache = QueryCache(ttl=self.ttl, verify=self.rate)
        try:
            cache.wrap(engine)
        except Exception:  # pragma: no cover - never break the suite
            cache.close()
            return
        with self.lock:
            self.caches.append(cache)
            self.engines += 1

    # -- reporting -----------------------------------------------------------
    def _drain(self) -> None:
        for cache in self.caches:
            cache.verifier.drain(5.0)

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        self._drain()
        if self.tally.mismatches and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        t = self.tally
        line = (
            f"querycache: {self.engines} engines wrapped, {t.checked} hits verified "
            f"(rate {self.rate:g}), {t.mismatches} mismatches, "
            f"{t.concurrent_writes} changed by concurrent writes"
        )
        terminalreporter.write_sep("-", "querycache verify")
        terminalreporter.write_line(line, red=bool(t.mismatches), green=not t.mismatches)
        for d in t.details[:20]:
            terminalreporter.write_line(f"  mismatch: {d['fingerprint'][:100]}: {d['diff']}")
