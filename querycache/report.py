"""Kept for imports of ``querycache.report``: the report lives in :mod:`querycache.reports`."""

from querycache.reports import Report, build_report

__all__ = ["Report", "build_report"]
