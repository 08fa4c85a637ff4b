"""The fleet view against a real Redis with two processes publishing.

Two child processes (tests/fleet_worker.py) share one SQLite file and one
Redis namespace: the first runs the shared query 5 times (1 miss, stored in
Redis), the second 3 times (1 Redis hit, 2 memory hits: its database never
runs it). ``querycache report`` and ``querycache top`` must show both
processes and the merged figures.
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from redis_worker import connected_cache, poll
from sqlalchemy import create_engine, text

from querycache.reports import load_schema

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SECRET = "fleet-secret-value"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


def _line(proc: subprocess.Popen[str], timeout: float = 30) -> dict[str, Any]:
    sel = selectors.DefaultSelector()
    assert proc.stdout is not None
    sel.register(proc.stdout, selectors.EVENT_READ)
    if not sel.select(timeout):
        raise AssertionError("the worker said nothing in time")
    line = proc.stdout.readline()
    assert line, f"the worker exited: {proc.wait()}"
    return json.loads(line)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "querycache.cli", *args],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def fleet(redis_server, tmp_path_factory: pytest.TempPathFactory):
    db = tmp_path_factory.mktemp("fleet") / "fleet.sqlite"
    with create_engine(f"sqlite:///{db}").begin() as conn:
        conn.execute(text("CREATE TABLE kv (k TEXT PRIMARY KEY, v INT)"))
        conn.execute(text("INSERT INTO kv VALUES (:k, 1)"), {"k": SECRET})
    ns = f"fleet{uuid.uuid4().hex[:8]}"
    procs: list[subprocess.Popen[str]] = []
    published = []
    try:
        for name, reads, own in (("a", 5, 2), ("b", 3, 4)):  # one after the other
            cfg = {"redis_url": redis_server.url, "namespace": ns, "db": str(db),
                   "reads": reads, "own": own, "name": name}  # fmt: skip
            proc = subprocess.Popen(
                [sys.executable, str(HERE / "fleet_worker.py"), json.dumps(cfg)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                env=_env(),
            )
            procs.append(proc)
            msg = _line(proc)
            assert msg["event"] == "published" and msg["ok"], msg
            published.append(msg)
        yield redis_server.url, ns, procs, published
    finally:
        for proc in procs:
            if proc.poll() is None:
                assert proc.stdin is not None
                proc.stdin.write("exit\n")
                proc.stdin.flush()
        for proc in procs:
            proc.wait(30)


def test_report_merges_two_processes(fleet):
    url, ns, procs, published = fleet
    # database side: only the first process ran the shared query, once
    assert [p["shared_executions"] for p in published] == [1, 0]
    assert [p["own_executions"] for p in published] == [1, 1]
    res = _cli("report", "--redis", url, "--namespace", ns, "--format", "json")
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    jsonschema.validate(data, load_schema())
    assert sorted(p["pid"] for p in data["processes"]) == sorted(p.pid for p in procs)
    assert SECRET not in res.stdout
    (shared,) = [q for q in data["queries"] if "k = ?" in q["fingerprint"]]
    assert (shared["calls"], shared["hits"], shared["misses"]) == (8, 7, 1)
    assert (shared["memory_hits"], shared["redis_hits"]) == (6, 1)
    (own,) = [q for q in data["queries"] if "k <> ?" in q["fingerprint"]]
    assert (own["calls"], own["hits"], own["misses"]) == (6, 4, 2)
    assert sum(n for _, n in own["db_histogram"]) == 2
    t = data["totals"]
    assert (t["calls"], t["hits"], t["misses"], t["redis_hits"]) == (14, 11, 3, 1)
    per = sorted((p["calls"], p["hits"]) for p in data["processes"])
    assert per == [(7, 5), (7, 6)]  # a: 5 + 2 calls; b: 3 + 4 calls
    (kv,) = [tb for tb in data["tables"] if tb["table"] == "kv"]
    assert kv["reads"] == 14

    out = Path(fleet[1] + ".txt")
    res = _cli("report", "--redis", url, "--namespace", ns, "-o", str(out))
    try:
        assert res.returncode == 0, res.stderr
        txt = out.read_text()
    finally:
        out.unlink(missing_ok=True)
    assert "2 processes" in txt and "SELECT v FROM kv WHERE k = ?" in txt and SECRET not in txt
    res = _cli("report", "--redis", url, "--namespace", ns, "--format", "html")
    assert res.returncode == 0 and "<svg" in res.stdout and "Processes" in res.stdout
    # another namespace: nobody publishes there
    res = _cli("report", "--redis", url, "--namespace", ns + "x", "--format", "json")
    assert res.returncode == 0 and json.loads(res.stdout)["processes"] == []
    assert "no process publishes" in res.stderr


def test_top_shows_the_fleet(fleet):
    url, ns, procs, _ = fleet
    res = _cli("top", "--redis", url, "--namespace", ns, "--iterations", "2",
               "--interval", "0.3")  # fmt: skip
    assert res.returncode == 0, res.stderr
    frames = [f for f in res.stdout.split("querycache top: ") if f.strip()]
    assert len(frames) == 2, res.stdout
    for frame in frames:
        assert frame.startswith("2 processes")
        for proc in procs:
            assert f":{proc.pid}:" in frame
        assert "SELECT v FROM kv WHERE k = ?" in frame
    # the second frame has rates against the first: nothing ran in between
    rows = [ln for ln in frames[1].splitlines() if "SELECT v FROM kv" in ln]
    assert rows and rows[0].split()[0] == "0.0", rows
    assert max(len(ln) for ln in res.stdout.splitlines()) <= 100


def test_published_values_hold_no_parameter_values(fleet):
    url, ns, _, _ = fleet
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"qc:{{{ns}}}:fleet:*"))
        assert len(keys) == 2
        for key in keys:
            raw = client.get(key)
            assert raw and SECRET.encode() not in raw
            assert 0 < client.pttl(key) <= 30_000  # expires unless republished
    finally:
        client.close()


def test_lost_invalidation_channel_is_a_degraded_period(redis_server):
    cache = connected_cache(redis_url=redis_server.url, namespace=f"d{uuid.uuid4().hex[:6]}")
    client = redis_server.client()
    try:
        client.client_kill_filter(_type="pubsub")

        def closed_period() -> Any:
            periods = cache.report().as_dict()["degraded"]
            return [p for p in periods if p["kind"] == "invalidation channel lost" and p["end"]]

        (period,) = poll(closed_period, timeout=15, what="a closed degraded period")
        assert period["end"] >= period["start"] and period["seconds"] >= 0
        assert cache.report().as_dict()["events"]["invalidation channel lost"] == 1
        jsonschema.validate(json.loads(cache.report().to_json()), load_schema())
    finally:
        client.close()
        cache.close()
