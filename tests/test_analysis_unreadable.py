"""Statements the analysis cannot fully read are "other", writing everything."""

from __future__ import annotations

import pytest

import querycache

UNREADABLE = [
    "/* open comment",
    "SELECT 1 /* open",
    "SELECT * FROM t /* a */ WHERE a = 1 /* b",
    "UPDATE t SET a = 1 /* x",
    "UPDATE t SET a = 'x",
    'SELECT "abc FROM t',
    "SELECT E'abc FROM t",
    "SELECT a FROM t; SELECT 'b",
]


@pytest.mark.parametrize("sql", UNREADABLE)
@pytest.mark.parametrize("dialect", ["sqlite", "postgresql", "mysql"])
def test_unterminated_comments_strings_and_names_write_everything(sql: str, dialect: str) -> None:
    a = querycache.analyze(sql, dialect)
    assert (a.kind, a.tables_written, a.cacheable) == ("other", querycache.ALL, False)
    assert a.reason is not None and a.reason.startswith("unparseable")


@pytest.mark.parametrize(
    ("sql", "dialect"),
    [
        ("SELECT $tag$ never closed", "postgresql"),
        ("SELECT $$ never closed", "postgresql"),
        ("SELECT `a` FROM t", "postgresql"),  # not a quote in PostgreSQL: unknown token
        ("SELECT `a FROM t", "sqlite"),
    ],
)
def test_dialect_specific_leftovers_write_everything(sql: str, dialect: str) -> None:
    a = querycache.analyze(sql, dialect)
    assert (a.kind, a.tables_written) == ("other", querycache.ALL)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT a FROM t /* a comment */ WHERE b = 'it''s'",
        'SELECT "a""b" FROM t -- trailing line comment',
        "SELECT $$a$$, $x$b$x$ FROM t WHERE a = $1",
    ],
)
def test_complete_statements_still_read(sql: str) -> None:
    a = querycache.analyze(sql, "postgresql")
    assert a.kind == "read" and a.cacheable and a.tables_read == {"t"}
