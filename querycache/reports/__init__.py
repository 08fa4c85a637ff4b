"""Hit reports and observability.

* :func:`build_report` / :class:`Report` (``cache.report()``): per query, per
  table, totals, timeline, degraded periods, recommendations; as data, JSON
  (``docs/report-schema.md``), text and HTML.
* :mod:`.fleet`: every process publishes its report to Redis;
  ``querycache report --redis URL`` and ``querycache top`` read them together.
* :mod:`.prometheus`: an optional ``prometheus_client`` collector.
"""

from querycache.reports.build import SCHEMA_VERSION
from querycache.reports.model import CORE_SECTIONS, Report, build_report, load_schema
from querycache.reports.recommendations import recommend

__all__ = ["CORE_SECTIONS", "SCHEMA_VERSION", "Report", "build_report", "load_schema", "recommend"]
