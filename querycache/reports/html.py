"""The report as one self-contained HTML page: inline CSS and SVG, no script,
no network. Charts: calls per query split by outcome (the hit ratio), database
time saved per query, invalidations per table, hits/misses over time."""

from __future__ import annotations

import time
from html import escape
from typing import Any

from querycache.reports.svg import PALETTE, bar_chart, time_chart
from querycache.reports.text import bytes_text, flatten

__all__ = ["render_html"]

_CSS = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px}
.muted{color:#666}.cards{display:flex;flex-wrap:wrap;gap:12px;margin:16px 0}
.card{border:1px solid #ddd;border-radius:6px;padding:8px 14px;min-width:120px}
.card b{display:block;font-size:20px}
table{border-collapse:collapse;font-size:13px;margin:6px 0}
th,td{border-bottom:1px solid #eee;padding:3px 8px;text-align:right;vertical-align:top}
th{background:#f6f6f6}td.l,th.l{text-align:left}
code{font-size:12px;white-space:pre-wrap;word-break:break-word}
.rec{border-left:4px solid #E69F00;padding:4px 10px;margin:6px 0;background:#fffaf0}
.figure{margin:8px 0 18px}
"""


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return escape(str(v))
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:,.3g}" if abs(v) < 1e4 else f"{v:,.0f}"
    if isinstance(v, dict):
        return escape(", ".join(f"{k}={b}" for k, b in flatten(v)))
    return escape(str(v))


def _table(cols: list[str], rows: list[list[str]], left: set[int] | None = None) -> str:
    left = left or set()
    head = "".join(
        f'<th class="{"l" if i in left else ""}">{escape(c)}</th>' for i, c in enumerate(cols)
    )
    body = "".join(
        "<tr>"
        + "".join(f'<td class="{"l" if i in left else ""}">{c}</td>' for i, c in enumerate(r))
        + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _generic(value: Any) -> str:
    """Any extra section, laid out by shape."""
    if isinstance(value, list) and value and all(isinstance(r, dict) for r in value):
        cols = list(dict.fromkeys(k for r in value for k in r))
        return _table(
            cols, [[_fmt(r.get(c, "")) for c in cols] for r in value], set(range(len(cols)))
        )
    if isinstance(value, dict):
        pairs = flatten(value)
        if not pairs:
            return '<p class="muted">(empty)</p>'
        return _table(["figure", "value"], [[escape(k), _fmt(v)] for k, v in pairs], {0})
    return f"<p>{_fmt(value)}</p>"


def _label(q: dict[str, Any]) -> str:
    return " ".join(q["fingerprint"].split())


def _charts(data: dict[str, Any]) -> list[str]:
    queries = data["queries"]
    busiest = sorted(queries, key=lambda q: -q["calls"])[:15]
    outcome = bar_chart(
        "Calls per query by outcome (hit ratio at the end of each bar)",
        [
            (
                _label(q),
                [
                    (q["memory_hits"], PALETTE["memory"], "memory hits"),
                    (q["redis_hits"], PALETTE["redis"], "redis hits"),
                    (q["coalesced"], PALETTE["shared"], "shared hits"),
                    (q["misses"], PALETTE["miss"], "misses"),
                    (q["bypass_count"], PALETTE["bypass"], "bypasses"),
                ],
                f"{q['hit_ratio']:.0%} of {q['calls']:,}",
                _label(q),
            )
            for q in busiest
        ],
        legend=[
            ("memory", PALETTE["memory"]),
            ("redis", PALETTE["redis"]),
            ("shared", PALETTE["shared"]),
            ("miss", PALETTE["miss"]),
            ("bypass", PALETTE["bypass"]),
        ],
    )
    saving = [q for q in queries if q["time_saved_ms"] > 0][:15]
    saved = bar_chart(
        "Database time saved per query (ms, summed over threads: not wall-clock)",
        [
            (
                _label(q),
                [(q["time_saved_ms"], PALETTE["saved"], "ms saved")],
                f"{q['time_saved_ms']:,.1f} ms",
                _label(q),
            )
            for q in saving
        ],
    )
    inv_tables = sorted(
        (t for t in data["tables"] if t["invalidations"] or t["writes"]),
        key=lambda t: -t["invalidations"],
    )[:15]
    inv = bar_chart(
        "Invalidations per table",
        [
            (
                t["table"],
                [(t["invalidations"], PALETTE["invalidations"], "invalidations")],
                f"{t['invalidations']:,} ({t['entries_dropped']:,} entries dropped)",
                t["table"],
            )
            for t in inv_tables
        ],
        label_width=200,
    )
    timeline = time_chart(
        "Hits, misses and bypasses per second over the window",
        data.get("timeline", []),
        [("hits", PALETTE["memory"]), ("misses", PALETTE["miss"]), ("bypasses", PALETTE["bypass"])],
    )
    out = []
    for heading, svg, empty in (
        ("Hit ratio per query", outcome, not busiest),
        ("Database time saved per query", saved, not saving),
        ("Invalidations per table", inv, not inv_tables),
        ("Hits and misses over time", timeline, False),
    ):
        body = '<p class="muted">nothing to show yet</p>' if empty else svg
        out.append(f'<h2>{heading}</h2><div class="figure">{body}</div>')
    return out


def render_html(data: dict[str, Any], title: str = "querycache report") -> str:
    """The whole page for a report's data."""
    from querycache.reports.model import CORE_SECTIONS

    t = data["totals"]
    w = data.get("window", {})
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(w.get("end") or time.time()))
    cards = [
        ("calls", f"{t['calls']:,}"),
        ("hit ratio", f"{t['hit_ratio']:.1%}"),
        ("hits", f"{t['hits']:,}"),
        ("misses", f"{t['misses']:,}"),
        ("bypasses", f"{t['bypasses']:,}"),
        ("database time avoided", f"{t['time_saved_ms'] / 1000:,.2f} s"),
        ("entries", f"{t['entries']:,}"),
        ("memory held", f"{bytes_text(t['bytes_held'])} / {bytes_text(t['memory_budget'])}"),
        ("invalidations", f"{t['invalidations']:,}"),
        ("errors", f"{t['errors']:,}"),
    ]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        f'<p class="muted">{w.get("seconds", 0):,.1f} s window ending {when}; '
        f"{len(data.get('processes', []))} process(es). Database time avoided is hits times "
        "the mean database time of a miss, summed over threads and processes: it is not "
        "wall-clock time.</p>",
        '<div class="cards">'
        + "".join(f'<div class="card"><b>{v}</b>{escape(k)}</div>' for k, v in cards)
        + "</div>",
    ]
    if data.get("recommendations"):
        parts.append("<h2>Recommendations</h2>")
        for r in data["recommendations"]:
            ev = _fmt(r.get("evidence", {}))
            parts.append(
                f'<div class="rec"><b>{escape(r["kind"])}</b>: {escape(r["message"])}'
                f'<br><span class="muted">evidence: {ev}</span></div>'
            )
    parts += _charts(data)
    parts.append("<h2>Queries</h2>")
    cols = [
        "query",
        "calls",
        "hit %",
        "memory",
        "redis",
        "shared",
        "misses",
        "bypasses",
        "db ms",
        "p95 ms",
        "saved ms",
        "held",
        "entries",
        "invalidated",
        "last seen",
    ]
    rows = []
    for q in data["queries"]:
        notes = [f"{n}x bypassed: {r}" for r, n in q["bypasses"].items()]
        notes += [f"{n}x not stored: {r}" for r, n in q["not_stored"].items()]
        if q.get("invalidated_by"):
            notes.append(
                "invalidated by "
                + ", ".join(f"{k} {n}" for k, n in sorted(q["invalidated_by"].items()))
            )
        if q.get("writes_skipped"):
            notes.append(f"{q['writes_skipped']} writes could not affect it")
        notes.append(f"admission: {q['admission']}")
        seen = q.get("last_seen")
        rows.append(
            [
                f'<code>{escape(_label(q))}</code><br><span class="muted">'
                f"{escape(q['fingerprint_id'])} · {escape('; '.join(notes))}</span>",
                _fmt(q["calls"]),
                f"{q['hit_ratio']:.1%}",
                _fmt(q["memory_hits"]),
                _fmt(q["redis_hits"]),
                _fmt(q["coalesced"]),
                _fmt(q["misses"]),
                _fmt(q["bypass_count"]),
                f"{q['mean_db_ms']:.2f}",
                f"{q['p95_db_ms']:.2f}",
                f"{q['time_saved_ms']:,.1f}",
                bytes_text(q["bytes_held"]),
                _fmt(q["entries"]),
                _fmt(q.get("invalidations", 0)),
                time.strftime("%H:%M:%S", time.localtime(seen)) if seen else "-",
            ]
        )
    parts.append(_table(cols, rows, {0}))
    parts.append("<h2>Tables</h2>")
    tcols = [
        "table",
        "reads",
        "queries",
        "writes",
        "invalidations",
        "entries dropped",
        "mean share dropped",
        "entries",
        "invalidation pending",
    ]
    parts.append(
        _table(
            tcols,
            [
                [
                    escape(tb["table"]),
                    _fmt(tb["reads"]),
                    _fmt(tb["queries"]),
                    _fmt(tb["writes"]),
                    _fmt(tb["invalidations"]),
                    _fmt(tb["entries_dropped"]),
                    f"{tb['mean_drop_share']:.1%}",
                    _fmt(tb["entries"]),
                    _fmt(tb["invalidation_pending"]),
                ]
                for tb in data["tables"]
            ],
            {0},
        )
    )
    if len(data.get("processes", [])) > 1:
        parts.append("<h2>Processes</h2>" + _generic(data["processes"]))
    if data.get("degraded"):
        parts.append("<h2>Degraded periods</h2>" + _generic(data["degraded"]))
    for section in ("errors", "events"):
        if data.get(section):
            parts.append(f"<h2>{section.title()}</h2>" + _generic(data[section]))
    for name, value in data.items():
        if name not in CORE_SECTIONS:
            parts.append(f'<h2 class="extra">{escape(str(name))}</h2>' + _generic(value))
    parts.append("</body></html>")
    return "\n".join(parts)
