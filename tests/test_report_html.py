"""The HTML report in a real headless Chromium (Debian's ``chromium``).

A small DevTools-protocol client (``websockets``) opens the file, records
console messages, exceptions and network requests, measures every chart's
SVG shapes, and takes a screenshot whose pixels are checked for the charts'
colours (decoded with a small PNG reader: the bars really painted).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import struct
import subprocess
import tempfile
import time
import zlib
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from websockets.sync.client import connect

from querycache import QueryCache
from querycache.reports.svg import PALETTE

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="Debian's chromium is not installed (make test installs it when run as root: "
    "apt-get install chromium)",
)


class Browser:
    """One headless Chromium and a DevTools session on one page."""

    def __init__(self, profile: Path) -> None:
        args = [
            CHROMIUM, "--headless=new", "--disable-gpu", "--no-first-run",
            "--no-default-browser-check", "--remote-debugging-port=0",
            f"--user-data-dir={profile}", "about:blank",
        ]  # fmt: skip
        if os.geteuid() == 0:
            args.insert(1, "--no-sandbox")  # Chromium refuses root with its sandbox
        self.proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
        url = None
        deadline = time.monotonic() + 30
        assert self.proc.stderr is not None
        while url is None and time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line and self.proc.poll() is not None:
                raise AssertionError(f"chromium exited with {self.proc.returncode}")
            if "DevTools listening on " in line:
                url = line.split("DevTools listening on ", 1)[1].strip()
        assert url, "chromium did not print its DevTools address"
        self.stack = ExitStack()
        self.ws = self.stack.enter_context(connect(url, max_size=None, open_timeout=20))
        self.ids = 0
        self.events: list[dict[str, Any]] = []
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)[
            "sessionId"
        ]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable", session=True)
        self.call(
            "Emulation.setDeviceMetricsOverride",
            session=True,
            width=1280,
            height=1800,
            deviceScaleFactor=1,
            mobile=False,
        )

    def call(self, method: str, session: bool = False, **params: Any) -> dict[str, Any]:
        self.ids += 1
        msg: dict[str, Any] = {"id": self.ids, "method": method, "params": params}
        if session:
            msg["sessionId"] = self.session
        self.ws.send(json.dumps(msg))
        while True:
            reply = json.loads(self.ws.recv(timeout=30))
            if reply.get("id") == self.ids:
                assert "error" not in reply, reply
                return reply["result"]
            self.events.append(reply)

    def wait_event(self, method: str, timeout: float = 30) -> dict[str, Any]:
        for e in self.events:
            if e.get("method") == method:
                return e
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            e = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            self.events.append(e)
            if e.get("method") == method:
                return e
        raise AssertionError(f"no {method} within {timeout}s")

    def open(self, path: Path) -> None:
        self.events.clear()
        self.call("Page.navigate", session=True, url=path.as_uri())
        self.wait_event("Page.loadEventFired")

    def evaluate(self, js: str) -> Any:
        res = self.call("Runtime.evaluate", session=True, expression=js, returnByValue=True)
        assert "exceptionDetails" not in res, res
        return res["result"]["value"]

    def problems(self) -> list[str]:
        """Console errors and warnings, uncaught exceptions, error log entries."""
        out = []
        for e in self.events:
            m, p = e.get("method"), e.get("params", {})
            if m == "Runtime.consoleAPICalled" and p["type"] in ("error", "warning", "assert"):
                out.append(f"console.{p['type']}: {p['args']}")
            elif m == "Runtime.exceptionThrown":
                out.append(f"exception: {p['exceptionDetails']}")
            elif m == "Log.entryAdded" and p["entry"]["level"] in ("error", "warning"):
                out.append(f"log: {p['entry']['text']}")
        return out

    def requests(self) -> list[str]:
        return [
            e["params"]["request"]["url"]
            for e in self.events
            if e.get("method") == "Network.requestWillBeSent"
        ]

    def screenshot(self, path: Path) -> bytes:
        data = base64.b64decode(
            self.call("Page.captureScreenshot", session=True, format="png",
                      captureBeyondViewport=True)["data"]
        )  # fmt: skip
        path.write_bytes(data)
        return data

    def close(self) -> None:
        try:
            self.stack.close()
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """``(width, height, rows)`` of an 8-bit RGB/RGBA PNG (rows of RGBA bytes)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width = 8, b"", 0
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + n]
        if kind == b"IHDR":
            width, height, depth, color = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and color in (2, 6), (depth, color)
            bpp = 3 if color == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    raw = zlib.decompress(idat)
    stride = width * bpp
    rows, prev = [], bytearray(stride)
    for y in range(height):
        f, line = (
            raw[y * (stride + 1)],
            bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)]),
        )
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - 2 * c)
                pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
                line[i] = (line[i] + pred) & 255
        rows.append(
            bytes(line)
            if bpp == 4
            else bytes(v for px in range(width) for v in (*line[px * 3 : px * 3 + 3], 255))
        )
        prev = line
    return width, height, rows


def count_colour(rows: list[bytes], rgb: str, box: dict[str, float]) -> int:
    want = bytes.fromhex(rgb.lstrip("#"))
    n = 0
    for y in range(int(box["y"]), int(box["y"] + box["h"])):
        row = rows[y]
        for x in range(int(box["x"]), int(box["x"] + box["w"])):
            px = row[x * 4 : x * 4 + 3]
            if all(abs(px[i] - want[i]) <= 24 for i in range(3)):
                n += 1
    return n


@pytest.fixture(scope="module")
def browser():
    with tempfile.TemporaryDirectory() as profile:
        b = Browser(Path(profile))
        try:
            yield b
        finally:
            b.close()


def _report_html(tmp: Path) -> Path:
    """A report of a small workload with hits, misses, bypasses, writes and
    two timeline intervals, plus an extra section."""
    db = tmp / "h.sqlite"
    cache = QueryCache()
    engine = cache.wrap(create_engine(f"sqlite:///{db}"))
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, v INT)"))
        conn.execute(text("INSERT INTO t VALUES (1, 1), (2, 2), (3, 3)"))
    for _ in range(2):
        with engine.connect() as conn:
            for i in range(30):
                conn.execute(text("SELECT v FROM t WHERE id = :i"), {"i": i % 3}).all()
                conn.execute(text("SELECT sum(v) FROM t")).all()
                conn.execute(text("SELECT random()")).all()
        with engine.begin() as conn:
            conn.execute(text("UPDATE t SET v = v + 1 WHERE id = 1"))
        cache.stats.sample()
    data = cache.report().as_dict()
    data["lease"] = {"granted": 3, "waited_ms": 1.25}
    from querycache.reports import Report

    path = tmp / "querycache-report.html"
    path.write_text(Report(data).to_html(), encoding="utf-8")
    cache.close()
    return path


CHARTS_JS = """JSON.stringify([...document.querySelectorAll('svg.chart')].map(s => {
  const r = s.getBoundingClientRect();
  const shapes = [...s.querySelectorAll('rect, path')].filter(e => {
    const b = e.getBBox(); return b.width > 0 && b.height > 0; });
  return {label: s.getAttribute('aria-label'), x: r.x + window.scrollX, y: r.y + window.scrollY,
          w: r.width, h: r.height, shapes: shapes.length};
}))"""


def test_html_report_renders_in_chromium(browser: Browser, tmp_path: Path):
    path = _report_html(tmp_path)
    browser.open(path)
    charts = json.loads(browser.evaluate(CHARTS_JS))
    labels = [c["label"] for c in charts]
    assert len(charts) == 4, labels
    assert any("hit ratio" in lb for lb in labels) and any("saved" in lb for lb in labels)
    assert any("Invalidations" in lb for lb in labels) and any("over the" in lb for lb in labels)
    for c in charts:
        assert c["w"] > 300 and c["h"] > 40 and c["shapes"] >= 1, c
    assert browser.problems() == []
    assert browser.requests() == [path.as_uri()]  # self-contained: nothing else fetched
    extras = browser.evaluate(
        "JSON.stringify([...document.querySelectorAll('h2.extra')].map(e => e.textContent))"
    )
    assert "lease" in json.loads(extras)
    png = browser.screenshot(tmp_path / "querycache-report.png")
    if os.environ.get("QC_SCREENSHOT"):
        shutil.copy(tmp_path / "querycache-report.png", os.environ["QC_SCREENSHOT"])
    width, height, rows = png_pixels(png)
    assert 1200 <= width <= 1280 and height >= 1000  # a scrollbar may take its share
    hit_chart, _, inv_chart, time_chart = charts
    box = hit_chart
    assert count_colour(rows, PALETTE["memory"], box) > 200  # memory-hit bars painted
    assert count_colour(rows, PALETTE["miss"], box) > 10
    box = inv_chart
    assert count_colour(rows, PALETTE["invalidations"], box) > 50
    box = time_chart
    assert count_colour(rows, PALETTE["memory"], box) > 200  # the hits area


def test_the_checks_catch_a_broken_page(browser: Browser, tmp_path: Path):
    bad = tmp_path / "bad.html"
    bad.write_text(
        "<!DOCTYPE html><html><body><svg class='chart' width='10' height='10'></svg>"
        "<script>console.error('broken chart')</script></body></html>"
    )
    browser.open(bad)
    assert any("broken chart" in p for p in browser.problems())
    (chart,) = json.loads(browser.evaluate(CHARTS_JS))
    assert chart["shapes"] == 0
