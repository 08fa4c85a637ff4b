"""The :class:`Report` object and :func:`build_report`."""

from __future__ import annotations

import json
from importlib import resources
from typing import TYPE_CHECKING, Any

from querycache.invalidation.lease import lease_report
from querycache.queues.writebehind import write_behind_figures
from querycache.refresh import refresh_figures
from querycache.reports.build import build_data, finish
from querycache.verify import verify_report

if TYPE_CHECKING:
    from querycache.cache import QueryCache

__all__ = ["CORE_SECTIONS", "Report", "build_report", "load_schema"]

#: the sections every report has; any other top-level key is an extra section
#: (added by a feature) that the text and HTML forms show generically
CORE_SECTIONS = frozenset(
    {
        "schema",
        "version",
        "generated_at",
        "window",
        "processes",
        "totals",
        "queries",
        "tables",
        "timeline",
        "errors",
        "events",
        "degraded",
        "recommendations",
    }
)


class Report:
    """A snapshot of a cache's (or a fleet's) statistics.

    ``as_dict()`` is the data (``docs/report-schema.md``), ``to_json()`` that
    as JSON, ``to_text()`` a terminal table, ``to_html()`` a self-contained
    page with charts.
    """

    def __init__(self, data: dict[str, Any]) -> None:
        self._data = data

    def as_dict(self) -> dict[str, Any]:
        """The report as plain data: ``totals``, ``queries``, ``tables``,
        ``recommendations``, ... (see ``docs/report-schema.md``)."""
        return self._data

    def to_json(self, indent: int | None = 2) -> str:
        """The data as JSON, valid against :func:`load_schema`."""
        return json.dumps(self._data, indent=indent, sort_keys=False)

    def to_text(self, limit: int = 20, width: int = 100) -> str:
        """A fixed-width table of the queries that saved the most database time."""
        from querycache.reports.text import render_text

        return render_text(self._data, limit=limit, width=width)

    def to_html(self, title: str = "querycache report") -> str:
        """One self-contained HTML page (inline SVG charts, no network)."""
        from querycache.reports.html import render_html

        return render_html(self._data, title=title)

    def extra_sections(self) -> dict[str, Any]:
        """Top-level sections beyond :data:`CORE_SECTIONS`."""
        return {k: v for k, v in self._data.items() if k not in CORE_SECTIONS}

    def __repr__(self) -> str:
        t = self._data["totals"]
        return f"<Report calls={t['calls']} hits={t['hits']} misses={t['misses']}>"


def build_report(cache: QueryCache) -> Report:
    """Read every counter of ``cache`` once and lay them out."""
    data = build_data(cache)
    # features add their figures here, one line each: data["<name>"] = <module>.section(cache)
    data.update(refresh_figures(cache))  # "refresh" and "stale"
    data["write_behind"] = write_behind_figures(cache)
    data["lease"] = lease_report(cache)
    data["verify"] = verify_report(cache)
    return Report(finish(data))


def load_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of :meth:`Report.to_json`."""
    text = resources.files("querycache.reports").joinpath("schema.json").read_text()
    return json.loads(text)
