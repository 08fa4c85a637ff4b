"""Small inline SVG charts: horizontal (stacked) bars and a stacked time series.

Plain SVG strings, no library: the report must be one file that opens
anywhere without network, and two chart shapes do not justify a dependency.
Every text is escaped; every chart has a ``<title>`` and ``aria-label``.
"""

from __future__ import annotations

from html import escape
from typing import Any

__all__ = ["PALETTE", "bar_chart", "time_chart"]

#: colour-blind friendly (Okabe-Ito)
PALETTE = {
    "memory": "#0072B2",
    "redis": "#56B4E9",
    "shared": "#009E73",
    "miss": "#E69F00",
    "bypass": "#999999",
    "saved": "#009E73",
    "invalidations": "#D55E00",
    "writes": "#CC79A7",
}

_FONT = 'font-family="system-ui, sans-serif" font-size="12"'


def _num(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 else f"{v:.3g}"


def _legend(items: list[tuple[str, str]], x: float, y: float) -> str:
    out = []
    for name, color in items:
        out.append(
            f'<rect x="{x:.0f}" y="{y - 10:.0f}" width="10" height="10" fill="{color}"/>'
            f'<text x="{x + 14:.0f}" y="{y:.0f}" {_FONT}>{escape(name)}</text>'
        )
        x += 30 + 7.5 * len(name)
    return "".join(out)


def bar_chart(
    title: str,
    rows: list[tuple[str, list[tuple[float, str, str]], str, str]],
    legend: list[tuple[str, str]] | None = None,
    width: int = 760,
    label_width: int = 300,
) -> str:
    """Horizontal bars. ``rows``: ``(label, [(value, colour, name), ...],
    annotation, tooltip)``; the segments of a row are stacked. Bars scale to
    the largest row total."""
    bar_h, gap, top = 18, 6, 34 if legend else 18
    height = top + len(rows) * (bar_h + gap) + 8
    biggest = max((sum(v for v, _, _ in segs) for _, segs, _, _ in rows), default=0) or 1
    longest = max((len(note) for _, _, note, _ in rows), default=0)
    room = max(100, width - label_width - 12 - 7 * longest)
    parts = [
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(title)}"><title>{escape(title)}</title>'
    ]
    if legend:
        parts.append(_legend(legend, label_width, 14))
    for i, (label, segs, note, tip) in enumerate(rows):
        y = top + i * (bar_h + gap)
        short = label if len(label) <= 44 else label[:41] + "..."
        parts.append(
            f"<g><title>{escape(tip or label)}</title>"
            f'<text x="{label_width - 6}" y="{y + 13}" text-anchor="end" {_FONT}>'
            f"{escape(short)}</text>"
        )
        x = float(label_width)
        for value, color, name in segs:
            w = room * value / biggest
            if w > 0:
                parts.append(
                    f'<rect x="{x:.1f}" y="{y}" width="{max(w, 0.5):.1f}" height="{bar_h}" '
                    f'fill="{color}"><title>{escape(name)}: {value:,.6g}</title></rect>'
                )
            x += w
        parts.append(f'<text x="{x + 4:.1f}" y="{y + 13}" {_FONT}>{escape(note)}</text></g>')
    parts.append("</svg>")
    return "".join(parts)


def time_chart(
    title: str,
    points: list[dict[str, Any]],
    series: list[tuple[str, str]],
    width: int = 760,
    height: int = 220,
) -> str:
    """Stacked areas of per-interval counts (as rates per second) over time.
    ``points``: ``{"t", "seconds", <series key>: n}``; ``series``: ``(key, colour)``."""
    left, right, top, bottom = 56, 16, 28, 28
    w, h = width - left - right, height - top - bottom
    pts = [p for p in points if p.get("seconds", 0) > 0]
    parts = [
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(title)}"><title>{escape(title)}</title>',
        _legend([(k, c) for k, c in series], left, 14),
    ]
    if len(pts) < 1:
        parts.append(
            f'<text x="{left}" y="{top + h / 2:.0f}" {_FONT}>not enough samples yet</text></svg>'
        )
        return "".join(parts)
    t0 = pts[0]["t"] - pts[0]["seconds"]
    t1 = pts[-1]["t"]
    span = (t1 - t0) or 1.0
    rates = [[p.get(k, 0) / p["seconds"] for k, _ in series] for p in pts]
    peak = max((sum(r) for r in rates), default=0) or 1.0
    parts.append(
        f'<line x1="{left}" y1="{top + h}" x2="{left + w}" y2="{top + h}" stroke="#444"/>'
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + h}" stroke="#444"/>'
        f'<text x="{left - 4}" y="{top + 4}" text-anchor="end" {_FONT}>{_num(peak)}/s</text>'
        f'<text x="{left - 4}" y="{top + h}" text-anchor="end" {_FONT}>0</text>'
        f'<text x="{left}" y="{top + h + 16}" {_FONT}>0 s</text>'
        f'<text x="{left + w}" y="{top + h + 16}" text-anchor="end" {_FONT}>{_num(span)} s</text>'
    )

    def xy(t: float, v: float) -> str:
        return f"{left + w * (t - t0) / span:.1f},{top + h - h * v / peak:.1f}"

    below = [0.0] * len(pts)
    for si, (key, color) in enumerate(series):
        above = [below[i] + rates[i][si] for i in range(len(pts))]
        upper: list[str] = []
        lower: list[str] = []
        for i, p in enumerate(pts):  # each interval is a flat step
            start = p["t"] - p["seconds"]
            upper += [xy(start, above[i]), xy(p["t"], above[i])]
            lower += [xy(start, below[i]), xy(p["t"], below[i])]
        path = "M" + " L".join(upper + lower[::-1]) + " Z"
        parts.append(f'<path d="{path}" fill="{color}"><title>{key}</title></path>')
        below = above
    parts.append("</svg>")
    return "".join(parts)
