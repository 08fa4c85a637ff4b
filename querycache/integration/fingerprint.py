"""Whether a PostgreSQL catalog read earlier still holds, in one small query.

A new engine on a database this process already knows (the same scope) would
read the catalog (:mod:`.catalog`) again: ten catalog queries in one
statement, ~10 ms on a new server connection, once per engine (a test suite
with an engine per test pays it per test). It reuses the scope's catalog
instead when :func:`unchanged` says nothing the read depends on changed since
that read, except what querycache follows without a read:

* **the fingerprint**: ``(xmin, oid)`` of every row of the catalogs that hold
  hidden dependencies and that DDL querycache applies from its text
  (:mod:`.ddl`: ``CREATE TABLE``, ``CREATE INDEX``, drops) never adds to:
  user triggers (``pg_trigger``, not the internal ones of foreign keys),
  rules and views (``pg_rewrite``), functions (``pg_proc``), inheritance and
  partitions (``pg_inherits``) and every use of a function of the database
  (``pg_depend`` rows pointing at one: column and domain defaults, checks,
  generated columns). It is read in the same statement (the same snapshot)
  as the catalog. A row inserted or updated since gets the xid of a
  transaction that snapshot did not see, so a fingerprint taken now equals
  the recorded one only if nothing was added or changed (a deletion alone
  leaves the catalog holding more than the database: it invalidates more);
* **foreign-key actions** by content: every ``ON DELETE/UPDATE CASCADE``,
  ``SET NULL`` or ``SET DEFAULT`` pair of the database must be among the
  catalog's cascades (``CREATE TABLE`` adds such pairs through :mod:`.ddl`,
  so their rows cannot be fingerprinted).

Relation names are not checked: a name the catalog has not seen makes the
statement naming it read the catalog again (``Catalog.has_news``), as on
any engine. The check touches five small catalogs and ``pg_constraint``
and costs a fraction of the read on a cold connection (see
docs/architecture.md for the figures).
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["PG_FINGERPRINT", "fingerprint_of", "unchanged"]

#: objects created by users (and extensions) have oids from here on
_FIRST_NORMAL_OID = 16384

#: ``(catalog, xmin, id, id)``: the rows whose change a read would see
PG_FINGERPRINT = f"""
SELECT 't', xmin::text, oid::text, NULL FROM pg_catalog.pg_trigger WHERE NOT tgisinternal
UNION ALL
SELECT 'r', xmin::text, oid::text, NULL FROM pg_catalog.pg_rewrite
WHERE oid >= {_FIRST_NORMAL_OID}
UNION ALL
SELECT 'p', xmin::text, oid::text, NULL FROM pg_catalog.pg_proc WHERE oid >= {_FIRST_NORMAL_OID}
UNION ALL
SELECT 'i', xmin::text, inhrelid::text, inhparent::text FROM pg_catalog.pg_inherits
UNION ALL
SELECT 'd', xmin::text, objid::text, refobjid::text FROM pg_catalog.pg_depend
WHERE refclassid = 'pg_catalog.pg_proc'::regclass AND refobjid >= {_FIRST_NORMAL_OID}
"""

# every foreign key with an action, parent first (as ``regclass``: a join with
# pg_class would cost the check a third more on a new connection)
_PG_CHECK = f"""
SELECT * FROM ({PG_FINGERPRINT}) AS fingerprint(c0, c1, c2, c3)
UNION ALL
SELECT 'k', NULL, confrelid::regclass::text, conrelid::regclass::text
FROM pg_catalog.pg_constraint AS actions
WHERE contype = 'f' AND (confdeltype IN ('c', 'n', 'd') OR confupdtype IN ('c', 'n', 'd'))
"""
# the relation name in a regclass's text: the last part, unquoted
_LAST_NAME = re.compile(r'(?:"((?:[^"]|"")*)"|([^".]*))$')


def _relname(regclass: str) -> str:
    m = _LAST_NAME.search(regclass)
    assert m is not None  # the pattern matches an empty tail too
    quoted, plain = m.groups()
    return (quoted.replace('""', '"') if quoted is not None else plain).lower()


def fingerprint_of(rows: Any) -> frozenset[tuple[Any, ...]]:
    """The fingerprint of :data:`PG_FINGERPRINT`'s rows."""
    return frozenset(tuple(row) for row in rows)


def unchanged(dbapi_connection: Any, catalog: Any) -> bool:
    """True when ``catalog`` (read on PostgreSQL, with its fingerprint) still
    describes the database ``dbapi_connection`` is on; one round trip."""
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(_PG_CHECK)
        rows = cursor.fetchall()
    finally:
        cursor.close()
    now = []
    for row in rows:
        if row[0] != "k":
            now.append(row)
            continue
        parent, child = _relname(str(row[2])), _relname(str(row[3]))
        if child not in catalog.cascades.get(parent, ()):
            return False
    return fingerprint_of(now) == catalog.fingerprint
