"""PostgreSQL view discovery: which base tables each view reads.

A write to a base table must invalidate the readers of every view over it.
Views are read from the catalog with a raw DBAPI cursor (not through the
cache) when a sync engine is wrapped, and on the first execution of an async
one (which cannot do I/O before it runs inside its event loop). Materialized
views are left out: they change only on ``REFRESH``, a write to the view.
"""

from __future__ import annotations

from typing import Any

__all__ = ["VIEW_SQL", "read_views"]

VIEW_SQL = """
SELECT DISTINCT v.relname, t.relname
FROM pg_catalog.pg_rewrite r
JOIN pg_catalog.pg_class v ON v.oid = r.ev_class
JOIN pg_catalog.pg_depend d
  ON d.objid = r.oid
 AND d.classid = 'pg_catalog.pg_rewrite'::regclass
 AND d.refclassid = 'pg_catalog.pg_class'::regclass
JOIN pg_catalog.pg_class t ON t.oid = d.refobjid
JOIN pg_catalog.pg_namespace n ON n.oid = v.relnamespace
WHERE v.relkind = 'v' AND t.oid <> v.oid
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
"""


def read_views(dbapi_connection: Any) -> dict[str, set[str]]:
    """View name → names of the relations it reads directly (lowercase)."""
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(VIEW_SQL)
        rows = cursor.fetchall()
    finally:
        cursor.close()
    views: dict[str, set[str]] = {}
    for view, base in rows:
        views.setdefault(str(view).lower(), set()).add(str(base).lower())
    return views
