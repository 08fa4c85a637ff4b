"""The hit report's figures against a scripted workload with known counts.

Every count the workload implies is asserted on the report; that the cache
served what it claims is proven by the database's own execution counts
(SQLite's trace callback), and results are compared with a plain engine.
Also: the JSON against its schema, the text form's width, extra sections,
lossless counting under threads, the debug explanations, recommendations,
and the Prometheus collector.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from dbcount import SqliteTrace
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, create_engine, event, text

from querycache import QueryCache
from querycache.report import Report as LegacyReport
from querycache.reports import Report, load_schema, recommend
from querycache.reports.prometheus import BUCKETS, QueryCacheCollector
from querycache.stats import LatencySketch, explaining

SLEEP_MS = 15
A = "SELECT name FROM items WHERE id = :id"
B = "SELECT sum(qty) FROM orders"
C = "SELECT random()"
S = "SELECT sleep_ms(:ms) AS s, :k AS k"


def _sleep_ms(ms: int) -> int:
    time.sleep(ms / 1000)  # a database function with a known duration
    return ms


def _engine(path: Path) -> Engine:
    engine = create_engine(f"sqlite:///{path}")
    event.listen(
        engine,
        "connect",
        lambda c, _: c.create_function("sleep_ms", 1, _sleep_ms, deterministic=True),
    )
    return engine


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "shop.sqlite"
    with create_engine(f"sqlite:///{path}").begin() as conn:
        conn.execute(text("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, price INT)"))
        conn.execute(text("CREATE TABLE orders (id INTEGER PRIMARY KEY, item_id INT, qty INT)"))
        for i in range(1, 11):
            conn.execute(text("INSERT INTO items VALUES (:i, :n, :i)"), {"i": i, "n": f"n{i}"})
            conn.execute(text("INSERT INTO orders VALUES (:i, :i, 1)"), {"i": i})
    return path


class Side:
    """One engine (plain or through ``cache``) and the statements it ran."""

    def __init__(self, path: Path, cache: QueryCache | None) -> None:
        self.engine = _engine(path)
        self.trace = SqliteTrace(self.engine)
        if cache is not None:
            cache.wrap(self.engine)
        self.results: list[Any] = []

    def read(self, sql: str, params: dict[str, Any] | None = None) -> None:
        with self.engine.connect() as conn:
            rows = conn.execute(text(sql), params or {}).all()
        # random() differs by nature: compare its shape only
        self.results.append(len(rows) if sql == C else rows)

    def write(self, sql: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(text(sql))


def workload(side: Side, cache: QueryCache | None = None) -> None:
    """The script; expected figures are in :func:`test_every_figure`."""
    for _ in range(5):
        for i in (1, 2, 3):
            side.read(A, {"id": i})  # A: 15 calls, 3 misses
    for _ in range(4):
        side.read(B)  # B: 1 miss, 3 hits
    side.write("UPDATE orders SET qty = qty + 1 WHERE id = 1")  # drops B's entry
    for _ in range(2):
        side.read(B)  # B: 1 miss, 1 hit
    for _ in range(3):
        side.read(C)  # 3 bypasses (random() is volatile)
    if cache is not None:
        cache.stats.sample()  # a timeline point between the phases
    side.write("UPDATE items SET price = 0 WHERE id = 9")  # cannot affect A's rows 1..3
    side.read(A, {"id": 1})  # still a hit
    for k in range(2):
        for _ in range(3):
            side.read(S, {"ms": SLEEP_MS, "k": k})  # S: 2 misses of >= 15 ms, 4 hits


def _run(db: Path, **kw: Any) -> tuple[QueryCache, Side, Report]:
    db.with_name("plain.sqlite").write_bytes(db.read_bytes())
    plain = Side(db.with_name("plain.sqlite"), None)
    workload(plain)
    cache = QueryCache(immutable_functions=["sleep_ms"], **kw)
    side = Side(db, cache)
    workload(side, cache)
    assert side.results == plain.results  # differential: same answers
    return cache, side, cache.report()


def _q(d: dict[str, Any], sql_part: str) -> dict[str, Any]:
    (q,) = [q for q in d["queries"] if sql_part.lower() in q["fingerprint"].lower()]
    return q


def test_every_figure(db: Path):
    t_start = time.time()
    cache, side, report = _run(db)
    d = report.as_dict()
    tr = side.trace
    # the database saw exactly the misses and bypasses
    assert tr.count("FROM items WHERE id") == 3
    assert tr.count("FROM orders") == 2
    assert tr.count("random()") == 3
    assert tr.count("sleep_ms(") == 2

    a, b, c, s = _q(d, "FROM items"), _q(d, "FROM orders"), _q(d, "random"), _q(d, "sleep_ms")
    assert (a["calls"], a["hits"], a["memory_hits"], a["misses"], a["bypass_count"]) == (
        16, 13, 13, 3, 0
    )  # fmt: skip
    assert (a["stores"], a["entries"], a["invalidations"], a["writes_skipped"]) == (3, 3, 0, 1)
    assert a["invalidated_by"] == {} and a["tables"] == ["items"]
    assert a["hit_ratio"] == pytest.approx(13 / 16)
    assert (b["calls"], b["hits"], b["misses"], b["stores"], b["entries"]) == (6, 4, 2, 2, 1)
    assert (b["invalidations"], b["invalidated_by"], b["writes_dropping"]) == (1, {"orders": 1}, 1)
    assert (c["calls"], c["hits"], c["misses"], c["bypass_count"]) == (3, 0, 0, 3)
    assert c["bypasses"] == {"volatile function: random": 3}
    assert (s["calls"], s["hits"], s["misses"], s["entries"]) == (6, 4, 2, 2)
    for q in (a, b, c, s):
        assert q["redis_hits"] == q["coalesced"] == 0
        assert q["admission"]
        assert q["last_seen"] is not None and t_start <= q["last_seen"] <= time.time()
    # database time of the slow query: both misses took >= 15 ms
    assert s["mean_db_ms"] >= SLEEP_MS
    assert s["mean_db_ms"] < SLEEP_MS + 200
    assert SLEEP_MS <= s["p95_db_ms"] <= s["mean_db_ms"] * 1.3
    assert s["db_ms"] == pytest.approx(2 * s["mean_db_ms"])
    assert s["time_saved_ms"] == pytest.approx(4 * s["mean_db_ms"])
    assert sum(n for _, n in s["db_histogram"]) == 2
    # the queries are sorted by database time saved
    saved = [q["time_saved_ms"] for q in d["queries"]]
    assert saved == sorted(saved, reverse=True) and d["queries"][0] is s

    tables = {t["table"]: t for t in d["tables"]}
    assert set(tables) == {"items", "orders"}
    assert (tables["items"]["reads"], tables["items"]["writes"]) == (16, 1)
    assert (tables["items"]["invalidations"], tables["items"]["entries_dropped"]) == (1, 0)
    assert (tables["items"]["entries"], tables["items"]["queries"]) == (3, 1)
    assert (tables["orders"]["reads"], tables["orders"]["writes"]) == (6, 1)
    assert (tables["orders"]["invalidations"], tables["orders"]["entries_dropped"]) == (1, 1)
    assert tables["orders"]["mean_drop_share"] == pytest.approx(1.0)
    assert tables["orders"]["entries"] == 1 and tables["orders"]["invalidation_pending"] == 0

    t = d["totals"]
    assert (t["calls"], t["hits"], t["memory_hits"], t["misses"], t["bypasses"]) == (
        31, 21, 21, 7, 3
    )  # fmt: skip
    assert (t["writes"], t["invalidations"], t["errors"], t["evictions"]) == (2, 2, 0, 0)
    assert t["entries"] == 6 == len(cache.memory) == sum(q["entries"] for q in d["queries"])
    assert t["bytes_held"] == cache.memory.bytes == sum(q["bytes_held"] for q in d["queries"])
    assert t["hit_ratio"] == pytest.approx(21 / 31)
    assert t["time_saved_ms"] == pytest.approx(sum(q["time_saved_ms"] for q in d["queries"]))
    # the window and the timeline cover the workload: the deltas add up
    w = d["window"]
    assert t_start <= w["start"] <= w["end"] <= time.time()
    assert w["seconds"] == pytest.approx(w["end"] - w["start"]) and w["seconds"] > 0
    assert len(d["timeline"]) >= 2
    assert sum(p["hits"] for p in d["timeline"]) == 21
    assert sum(p["misses"] for p in d["timeline"]) == 7
    assert sum(p["bypasses"] for p in d["timeline"]) == 3
    assert d["degraded"] == [] and d["errors"] == {}
    assert d["processes"][0]["namespace"] == "default"
    cache.close()


def test_json_valid_against_schema(db: Path):
    cache, _, report = _run(db)
    schema = load_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    data = json.loads(report.to_json())
    jsonschema.validate(data, schema)
    # extra sections of other features are allowed, the core ones are checked
    jsonschema.validate({**data, "lease": {"granted": 3}, "verify": [{"ok": 1}]}, schema)
    broken = {k: v for k, v in data.items() if k != "totals"}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)
    wrong = json.loads(report.to_json())
    wrong["queries"][0]["hits"] = -1
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(wrong, schema)
    assert isinstance(cache.report(), LegacyReport)  # querycache.report still imports
    cache.close()


def test_text_fits_100_columns_and_shows_extra_sections(db: Path):
    cache, _, report = _run(db)
    data = report.as_dict()
    data["lease"] = {"granted": 7, "waited": {"count": 2, "p95_ms": 1.5}}
    data["queues"] = [{"name": "refresh", "pending": 4}]
    txt = Report(data).to_text()
    lines = txt.splitlines()
    assert max(len(line) for line in lines) <= 100, max(lines, key=len)
    assert "SELECT name FROM items WHERE id = ?" in " ".join(txt.split()), txt
    assert "database time avoided" in txt and "not wall-clock" in txt
    assert "lease:" in txt and "granted: 7" in txt and "waited.p95_ms: 1.5" in txt
    assert "queues:" in txt and "refresh" in txt
    assert "invalidated 1x (orders 1)" in txt
    assert "bypassed 3x: volatile function: random" in txt
    html = Report(data).to_html()
    assert "granted" in html and "refresh" in html
    cache.close()


def test_no_parameter_value_in_any_form(db: Path):
    cache = QueryCache()
    side = Side(db, cache)
    for _ in range(3):
        side.read("SELECT name FROM items WHERE name = 'hunter2-secret' OR id = :i", {"i": 7})
        side.read(A, {"id": 424242})
    r = cache.report()
    for form in (r.to_json(), r.to_text(), r.to_html()):
        assert "hunter2" not in form and "424242" not in form
    cache.close()


def test_hits_from_many_threads_are_not_lost(db: Path):
    cache = QueryCache()
    side = Side(db, cache)
    side.read(A, {"id": 1})  # the miss
    threads, per = 8, 3000
    go = threading.Barrier(threads)
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible

    def hammer() -> None:
        with side.engine.connect() as conn:
            stmt = text(A)
            go.wait()
            for _ in range(per):
                conn.execute(stmt, {"id": 1}).all()

    try:
        ts = [threading.Thread(target=hammer) for _ in range(threads)]
        for th in ts:
            th.start()
        for th in ts:
            th.join()
    finally:
        sys.setswitchinterval(old)
    assert side.trace.count("FROM items WHERE id") == 1  # every other call was served
    q = _q(cache.report().as_dict(), "FROM items")
    assert (q["hits"], q["misses"], q["calls"]) == (threads * per, 1, threads * per + 1)
    cache.close()


def test_reset_starts_a_new_window(db: Path):
    cache, side, _ = _run(db)
    before = cache.report().as_dict()
    cache.reset_stats()
    side.read(A, {"id": 1})  # a hit, entries kept
    d = cache.report().as_dict()
    assert d["window"]["start"] > before["window"]["start"]
    assert (d["totals"]["calls"], d["totals"]["hits"], d["totals"]["misses"]) == (1, 1, 0)
    assert d["totals"]["entries"] == before["totals"]["entries"]
    assert _q(d, "FROM items")["entries"] == 3
    cache.close()


def test_latency_sketch_quantiles():
    sk = LatencySketch()
    values = [i / 1000 for i in range(1, 1001)]  # 1 ms .. 1 s
    for v in values:
        sk.add(v)
    assert sk.count == 1000 and sk.total == pytest.approx(sum(values))
    for q in (0.5, 0.95, 0.99):
        exact = values[int(q * 1000) - 1]
        assert abs(sk.quantile(q) - exact) <= exact / 8
    other = LatencySketch()
    other.merge(sk.sparse())
    assert other.count == 1000 and other.quantile(0.95) == pytest.approx(sk.quantile(0.95))


def test_debug_explanations_off_by_default_then_on(db: Path, caplog: pytest.LogCaptureFixture):
    cache = QueryCache()
    side = Side(db, cache)
    logger = logging.getLogger("querycache")
    assert not explaining()
    with caplog.at_level(logging.INFO, logger="querycache"):
        side.read(A, {"id": 1})
        side.read(C)
    assert not [r for r in caplog.records if r.levelno < logging.INFO]
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="querycache"):
        assert explaining() and logger.isEnabledFor(logging.DEBUG)
        side.read(A, {"id": 2})  # a miss
        side.read(C)  # a bypass
        side.write("UPDATE items SET name = 'x' WHERE id = 2")  # drops A's entry for id 2
    msgs = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert any(m.startswith("querycache: miss [") and "FROM items" in m for m in msgs), msgs
    assert any("bypass [" in m and "volatile function: random" in m for m in msgs), msgs
    assert any("invalidation" in m and "items: 1 entries" in m for m in msgs), msgs
    assert not any("'x'" in m for m in msgs)  # fingerprints, no literal values
    assert not explaining()
    cache.close()


def test_recommendations_with_evidence(db: Path):
    cache = QueryCache(memory_bytes=64 * 1024, max_entry_bytes=8 * 1024)
    side = Side(db, cache)
    for i in range(25):
        side.read("SELECT id FROM items WHERE price < julianday('now') + :i", {"i": i})
        side.read("SELECT qty FROM orders WHERE id = :i", {"i": 1})
        side.write(f"UPDATE orders SET qty = {i} WHERE id = 1")
    for i in range(40):  # a new parameter value each call
        side.read("SELECT name FROM items WHERE price = :p", {"p": 1000 + i})
    recs = cache.report().as_dict()["recommendations"]
    kinds = {r["kind"]: r for r in recs}
    clock = kinds["hot uncacheable query"]
    assert "pass it as a parameter" in clock["message"] and clock["evidence"]["calls"] == 25
    inv = kinds["invalidated as often as read"]
    assert inv["evidence"]["invalidated_by"] == {"orders": 25}, inv
    assert kinds["table written too often"]["table"] == "orders"
    params = kinds["parameters defeat keys"]
    assert params["evidence"]["misses"] == 40 and params["evidence"]["hits"] == 0
    assert all(r["evidence"] and r["message"] for r in recs)
    cache.close()


def test_short_ttl_and_never_hit_are_recommended(db: Path):
    cache = QueryCache()
    side = Side(db, cache)
    with side.engine.connect() as conn:
        stmt = text("SELECT price FROM items WHERE id = 4").execution_options(querycache_ttl=0.002)
        for _ in range(20):
            conn.execute(stmt).all()
            time.sleep(0.005)  # let the entry's TTL pass (no thread waits for this)
    assert side.trace.count("FROM items WHERE id = 4") == 20
    d = cache.report().as_dict()
    q = _q(d, "SELECT price")
    assert (q["misses"], q["hits"], q["expired"], q["dropped_unused"]) == (20, 0, 19, 19)
    (rec,) = [r for r in d["recommendations"] if r.get("fingerprint_id") == q["fingerprint_id"]]
    assert rec["kind"] == "ttl too short"
    assert rec["evidence"]["expired"] == 19 and rec["evidence"]["writes_to_its_tables"] == 0
    # the same figures with its table written often: the entries died unused
    d["tables"] = [dict(t, writes=100) for t in d["tables"]]
    (rec,) = [r for r in recommend(d) if r.get("fingerprint_id") == q["fingerprint_id"]]
    assert rec["kind"] == "never hit" and rec["evidence"]["dropped_unused"] == 19
    cache.close()


def test_memory_too_small_is_recommended(db: Path):
    cache = QueryCache(memory_bytes=4096, max_entry_bytes=2048)
    side = Side(db, cache)
    for _ in range(3):
        for i in range(1, 11):
            side.read("SELECT * FROM items WHERE id = :i", {"i": i})
    d = cache.report().as_dict()
    (rec,) = [r for r in d["recommendations"] if r["kind"] == "memory too small"]
    assert rec["evidence"]["evictions"] == d["totals"]["evictions"] >= 10
    assert rec["evidence"]["memory_budget"] == 4096
    cache.close()


def _samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in fam.samples:
            out[s.name, tuple(sorted(s.labels.items()))] = s.value
    return out


def test_prometheus_collector(db: Path):
    cache, _, report = _run(db)
    d = report.as_dict()
    registry = CollectorRegistry()
    registry.register(QueryCacheCollector(cache, max_fingerprints=1, max_tables=1))
    got = _samples(registry)
    top = max(d["queries"], key=lambda q: q["calls"])  # A, 16 calls
    fid = top["fingerprint_id"]
    assert got["querycache_hits_total", (("fingerprint", fid), ("tier", "memory"))] == 13
    assert got["querycache_hits_total", (("fingerprint", "other"), ("tier", "memory"))] == 8
    assert got["querycache_misses_total", (("fingerprint", "other"),)] == 4
    assert got["querycache_bypasses_total", (("fingerprint", "other"),)] == 3
    fingerprints = {dict(k[1]).get("fingerprint") for k in got if "fingerprint" in dict(k[1])}
    assert fingerprints == {fid, "other"}  # bounded cardinality
    assert got["querycache_db_seconds_count", (("fingerprint", "other"),)] == 4
    # the buckets are the report's histograms, cumulated: B's and S's misses
    # under "other"; S's (>= 15 ms) are above every bound up to 8 ms
    other = [q for q in d["queries"] if q["fingerprint_id"] != fid]
    for bound in BUCKETS:
        edge = LatencySketch.index(bound)
        want = sum(n for q in other for i, n in q["db_histogram"] if i < edge)
        (value,) = [
            v
            for (name, lb), v in got.items()
            if name == "querycache_db_seconds_bucket"
            and dict(lb)["fingerprint"] == "other"
            and dict(lb)["le"] != "+Inf"
            and float(dict(lb)["le"]) == pytest.approx(bound)
        ]
        assert value == want, bound
        if bound <= 0.008:
            assert value <= 2
    tables = {
        dict(k[1])["table"]: v for k, v in got.items() if k[0] == "querycache_invalidations_total"
    }
    assert sum(tables.values()) == 2 and len(tables) == 2 and "other" in tables
    assert got["querycache_entries", ()] == 6
    with pytest.raises(ValueError, match="max_fingerprints"):
        QueryCacheCollector(cache, max_fingerprints=0)
    cache.close()


def test_publish_stats_setting_is_checked():
    with pytest.raises(TypeError, match="publish_stats"):
        QueryCache(publish_stats="often")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="publish_stats"):
        QueryCache(publish_stats=0)
    QueryCache(publish_stats=None).close()
