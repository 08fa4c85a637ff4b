"""Adaptive admission: a statement whose entries never pay stops being stored,
comes back when they would, and can be forced. Executions are counted on the
database side (SQLite's trace callback); results are compared with a plain
engine on the same file."""

from __future__ import annotations

from typing import Any

import pytest
from dbcount import SqliteTrace
from sqlalchemy import create_engine, text

from querycache import QueryCache

READ = "SELECT v AS admission_probe FROM t WHERE id = :id"
WRITE = "UPDATE t SET v = v + 1 WHERE id = :id"


@pytest.fixture
def setup(tmp_path: Any) -> Any:
    url = f"sqlite:///{tmp_path / 'a.db'}"
    plain = create_engine(url)
    with plain.begin() as c:
        c.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER)"))
        c.execute(text("INSERT INTO t VALUES (1, 0), (2, 0)"))
    engine = create_engine(url)
    trace = SqliteTrace(engine)
    cache = QueryCache()
    cache.admission.reprobe_after = 40
    cache.wrap(engine)
    yield cache, engine, plain, trace
    cache.close()
    engine.dispose()
    plain.dispose()


def _read(engine: Any, **opts: Any) -> Any:
    with engine.connect() as c:
        return c.execute(text(READ).execution_options(**opts), {"id": 1}).scalar()


def _write(engine: Any) -> None:
    with engine.begin() as c:
        c.execute(text(WRITE), {"id": 1})


def _held(cache: QueryCache) -> int:
    qs = cache.plan(READ.replace(":id", "?"), "sqlite").stats
    return sum(1 for e in cache.memory._data.values() if e.stats is qs)


def test_a_statement_invalidated_before_every_reuse_stops_being_stored(setup: Any) -> None:
    cache, engine, plain, trace = setup
    window = cache.admission.window
    for _ in range(window + 5):
        assert _read(engine) == _read(plain)
        _write(engine)
    # rejected: each execution still reaches the database, none is stored
    before = trace.count("admission_probe")
    for _ in range(10):
        assert _read(engine) == _read(plain)
        assert _held(cache) == 0
        _write(engine)
    assert trace.count("admission_probe") == before + 10
    query = next(
        q for q in cache.report().as_dict()["queries"] if "admission_probe" in q["fingerprint"]
    )
    assert query["admission"].startswith("rejected")
    assert query["bypasses"].get("not admitted: its entries did not pay for their stores", 0) >= 10


def test_it_comes_back_when_the_writes_stop(setup: Any) -> None:
    cache, engine, plain, trace = setup
    for _ in range(cache.admission.window + 5):
        _read(engine)
        _write(engine)
    # no more writes: after the re-probe the entry is stored and hit
    for _ in range(cache.admission.reprobe_after + 2 * cache.admission.window):
        assert _read(engine) == _read(plain)
    before = trace.count("admission_probe")
    for _ in range(20):
        assert _read(engine) == _read(plain)
    assert trace.count("admission_probe") == before  # all hits
    assert _held(cache) == 1


def test_forced_admission_stores_every_time(setup: Any) -> None:
    cache, engine, plain, trace = setup
    for _ in range(cache.admission.window + 5):
        _read(engine, querycache_admission="always")
        _write(engine)
    assert _read(engine, querycache_admission="always") == _read(plain)
    assert _held(cache) == 1
    before = trace.count("admission_probe")
    assert _read(engine, querycache_admission="always") == _read(plain)
    assert trace.count("admission_probe") == before


def test_admission_always_and_bad_settings() -> None:
    assert QueryCache(admission="always").admission.for_query(object()) is None
    with pytest.raises(ValueError, match="admission"):
        QueryCache(admission="sometimes")
    with pytest.raises(TypeError, match="admission"):
        QueryCache(admission=1)  # type: ignore[arg-type]
