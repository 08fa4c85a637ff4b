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

An application that wraps an engine itself after the plugin wrapped it (its
first connection came before ``cache.wrap()``) takes it over: the engine's
binding moves to the application's cache, which then works as without the
plugin (while enabled, all caches intern connection identities in one table,
so the move keeps every connection's identity valid).

A test marked ``@pytest.mark.querycache_plugin_off`` (with an optional
reason) runs as without the plugin: while it runs (its setup and teardown
included) engines are not wrapped, engines created earlier and first used then
are left alone, and the caches it creates are its own. It is for tests whose
premise the plugin breaks: a write "behind the cache's back" through a second
engine (the plugin would wrap that engine, and its commits invalidate), a
database-wide count of executions (the plugin's caches run catalog queries),
a write from another process (the plugin's caches have no Redis to hear it).
The summary counts them.

Options: ``--querycache-verify=RATE`` (ini ``querycache_verify``), the
fraction of hits checked (below 1, unchecked hits are served from the cache);
``--querycache-ttl=SECONDS`` (ini ``querycache_ttl``).
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.engine.interfaces import Dialect

from querycache import verify as verify_module
from querycache.integration.identity import Idents

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


_OFF = "querycache_plugin_off"


def pytest_configure(config: pytest.Config) -> None:
    # registered even when disabled: --strict-markers must accept it either way
    config.addinivalue_line(
        "markers",
        f"{_OFF}(reason=None): run this test without the querycache pytest plugin",
    )
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
        self._idents: Any = None
        self._wrap: Any = None
        self._shared = Idents()  # one table across reinstalls (see hand_over)
        self.off = False
        self.opted_out: list[tuple[str, str]] = []

    # -- lifecycle -----------------------------------------------------------
    def install(self) -> None:
        """Hook engine creation (``Dialect.engine_created``, which every
        ``create_engine`` calls) and ``QueryCache`` (one identity table for
        all caches, ``wrap`` hands engines over); undone by :meth:`uninstall`."""
        from querycache import cache as cache_module

        shared = self._shared
        self._idents = cache_module.Idents
        cache_module.Idents = lambda: shared  # type: ignore[assignment,misc]
        self._wrap = cache_module.QueryCache.wrap
        plugin = self
        original_wrap = self._wrap

        def wrap(cache: Any, engine: Any) -> Any:
            sync = getattr(engine, "sync_engine", engine)
            binding = None
            if isinstance(sync, Engine):  # anything else: wrap() raises its TypeError
                binding = getattr(sync.dialect.execution_ctx_cls, "_qc", None)
            if (
                binding is not None
                and binding.core is not cache
                and binding.core in plugin.caches
                and cache.idents is shared  # not a cache made while the plugin was off
            ):
                plugin.hand_over(binding, sync, cache)
                return engine
            return original_wrap(cache, engine)

        cache_module.QueryCache.wrap = wrap  # type: ignore[method-assign]
        original = Dialect.__dict__["engine_created"]
        self._original = original
        plugin = self

        def engine_created(cls: type, engine: Engine) -> None:
            original.__func__(cls, engine)
            plugin.created(engine)

        Dialect.engine_created = classmethod(engine_created)  # type: ignore[method-assign,assignment]

    def uninstall(self) -> None:
        """Restore what :meth:`install` replaced."""
        from querycache import cache as cache_module

        if self._original is None:
            return
        cache_module.Idents = self._idents  # type: ignore[misc]
        cache_module.QueryCache.wrap = self._wrap  # type: ignore[method-assign]
        Dialect.engine_created = self._original  # type: ignore[method-assign]
        self._original = None

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        self.uninstall()
        for cache in self.caches:
            cache.close()

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: Any) -> Any:
        marker = item.get_closest_marker(_OFF)
        if marker is None:
            return (yield)
        reason = marker.kwargs.get("reason") or (marker.args[0] if marker.args else "")
        self.opted_out.append((item.nodeid, str(reason)))
        self.uninstall()
        self.off = True
        try:
            return (yield)
        finally:
            self.off = False
            self.install()

    # -- wrapping ------------------------------------------------------------
    def created(self, engine: Engine) -> None:
        """An engine was created: wrap it at its first connection, unless
        something else (the application's own QueryCache) wrapped it by then."""
        if getattr(engine.dialect, "_qc_plugin_hooked", False):
            return  # engine_created runs twice for some dialects
        engine.dialect._qc_plugin_hooked = True  # type: ignore[attr-defined]
        plugin = self

        def first_connect(conn: Any) -> None:
            if plugin.off:
                return  # first used by a test that opted out: left alone
            binding = plugin.wrap(engine)
            fairy = conn._dbapi_connection
            if binding is not None and type(conn) is not engine._connection_cls:
                try:  # made before the wrap: give it the cache's connection class too
                    conn.__class__ = engine._connection_cls
                except TypeError:  # pragma: no cover - a layout we do not know
                    pass
            if binding is not None and fairy is not None:
                # checked out before the cache was there: observe it now
                binding.connections.on_checkout(
                    fairy.dbapi_connection, fairy._connection_record, fairy
                )

        event.listen(engine, "engine_connect", first_connect, once=True)

    def wrap(self, engine: Engine) -> Any:
        """Wrap ``engine`` with a cache of its own; its binding, or None."""
        from querycache import QueryCache

        if getattr(engine.dialect.execution_ctx_cls, "_qc", None) is not None:
            return None  # the application wraps it itself
        cache = QueryCache(ttl=self.ttl, verify=self.rate)
        try:
            cache.wrap(engine)
        except Exception:  # pragma: no cover - never break the suite
            cache.close()
            return None
        cache.verifier.tallies.append(self.tally)
        with self.lock:
            self.caches.append(cache)
            self.engines += 1
        return cache._bindings.get(id(engine.dialect))

    def hand_over(self, binding: Any, engine: Engine, cache: Any) -> None:
        """Move ``engine``'s binding from the plugin's cache to ``cache``, as if
        ``cache`` had wrapped it (the application's own cache wins)."""
        from querycache.invalidation import local

        old = binding.core
        with self.lock:
            self.caches.remove(old)
            self.engines -= 1
        old._bindings.pop(id(engine.dialect), None)
        old.close()
        with cache._lock:
            binding.core = cache
            binding.memory = cache.memory
            binding.analyzer = cache.analyzer
            binding.aliases.clear()
            if not binding.private:
                local.register(cache, binding.scope)
            cache._bindings[id(engine.dialect)] = binding
            cache.verifier.attach(binding, engine)
            if cache.redis is not None:
                cache._scope_ids[cache.redis.scope_id(binding.scope)] = binding.scope
            # read by the next statement that needs it (as after wrap())
            binding.catalog_pending = cache.settings.discover_views

    # -- reporting -----------------------------------------------------------
    def _drain(self) -> None:
        for cache in self.caches:
            cache.verifier.drain(5.0)

    def pytest_runtest_logstart(self, nodeid: str, location: Any) -> None:
        self.tally.where = nodeid

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
        hits = misses = 0
        reasons: Counter[str] = Counter()
        for cache in self.caches:
            for qs in list(cache.stats.queries.values()):
                hits += qs.hits
                misses += qs.misses
                reasons.update(qs.bypasses)
        line += (
            f"; reads through the caches: {hits} hits, {misses} misses, "
            f"{sum(reasons.values())} bypasses"
        )
        terminalreporter.write_sep("-", "querycache verify")
        terminalreporter.write_line(line, red=bool(t.mismatches), green=not t.mismatches)
        if self.opted_out:
            terminalreporter.write_line(
                f"  {len(self.opted_out)} tests ran without the plugin ({_OFF})"
            )
        if reasons:
            top = ", ".join(f"{r} ({n})" for r, n in reasons.most_common(3))
            terminalreporter.write_line(f"  most bypassed because: {top}")
        for d in t.details[:20]:
            terminalreporter.write_line(
                f"  mismatch in {d['test']}: {d['fingerprint'][:100]}: {d['diff']}"
            )
