"""Fuzzing querycache.analysis: whatever the input, no exception, a well-formed Analysis.

About 11,000 examples in all, split over several tests so each stays short.
"""

from __future__ import annotations

import json
import logging
import tomllib
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from querycache.analysis import ALL, Analysis, Analyzer, fingerprint_id
from querycache.analysis.model import KINDS, TRANSACTION_OPS

CORPUS = Path(__file__).with_name("analysis_corpus")
DIALECTS = st.sampled_from(["sqlite", "postgresql", "mysql", "oracle"])
FUZZ = settings(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def _corpus_sql() -> list[str]:
    sqls = []
    for path in sorted(CORPUS.glob("*.toml")):
        sqls += [c["sql"] for c in tomllib.loads(path.read_text(encoding="utf-8"))["case"]]
    sqls += [r["sql"] for r in json.loads((CORPUS / "orm.json").read_text(encoding="utf-8"))]
    return sqls


SQLS = _corpus_sql()
VOCABULARY = sorted(
    {tok for sql in SQLS for tok in sql.split()}
    | {
        "(",
        ")",
        ",",
        ";",
        "'",
        '"',
        "`",
        "$$",
        "$1",
        "?",
        "%s",
        "%(x)s",
        ":x",
        "::",
        "--",
        "/*",
        "*/",
        "WITH",
        "RECURSIVE",
        "AS",
        "UNION",
        "FOR",
        "UPDATE",
        "RETURNING",
        "INTO",
    }
)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


_records = _Records()
logging.getLogger("sqlglot").addHandler(_records)
ANALYZER = Analyzer(max_entries=256)


def check(sql: str, dialect: str) -> Analysis:
    """Analyse and assert the result is well formed and nothing was logged."""
    a = ANALYZER.analyze(sql, dialect)
    assert isinstance(a, Analysis)
    assert a.kind in KINDS
    assert isinstance(a.fingerprint, str)
    assert a.fingerprint_id == fingerprint_id(a.fingerprint)
    assert len(a.fingerprint_id) == 16
    assert isinstance(a.tables_read, frozenset)
    assert all(isinstance(t, str) and t == t.lower() for t in a.tables_read)
    assert a.tables_written is ALL or isinstance(a.tables_written, frozenset)
    assert isinstance(a.cacheable, bool) and isinstance(a.session_state, bool)
    assert a.cacheable is (a.reason is None)
    if a.cacheable:
        assert a.kind == "read" and not a.session_state
    if a.kind == "transaction":
        assert a.transaction_op in TRANSACTION_OPS
    else:
        assert a.transaction_op is None
    assert ANALYZER.analyze(sql, dialect) == a
    assert not _records.records, [r.getMessage() for r in _records.records]
    return a


@st.composite
def mutated(draw: st.DrawFn) -> str:
    """A corpus statement with tokens dropped, swapped, repeated or replaced."""
    tokens = draw(st.sampled_from(SQLS)).split()
    for _ in range(draw(st.integers(1, 4))):
        if not tokens:
            break
        i = draw(st.integers(0, len(tokens) - 1))
        op = draw(st.sampled_from(["drop", "swap", "repeat", "replace", "insert", "cut"]))
        if op == "drop":
            del tokens[i]
        elif op == "swap":
            j = draw(st.integers(0, len(tokens) - 1))
            tokens[i], tokens[j] = tokens[j], tokens[i]
        elif op == "repeat":
            tokens[i:i] = [tokens[i]] * draw(st.integers(1, 5))
        elif op == "replace":
            tokens[i] = draw(st.sampled_from(VOCABULARY))
        elif op == "insert":
            tokens.insert(i, draw(st.sampled_from(VOCABULARY)))
        else:
            tokens = tokens[:i]
    glue = draw(st.sampled_from([" ", "\n", "", "  \t"]))
    return glue.join(tokens)


@settings(FUZZ, max_examples=4000, deadline=None)
@given(sql=mutated(), dialect=DIALECTS)
def test_mutated_corpus(sql: str, dialect: str) -> None:
    check(sql, dialect)


@settings(FUZZ, max_examples=2500, deadline=None)
@given(tokens=st.lists(st.sampled_from(VOCABULARY), max_size=40), dialect=DIALECTS)
def test_token_soup(tokens: list[str], dialect: str) -> None:
    check(" ".join(tokens), dialect)


@settings(FUZZ, max_examples=2500, deadline=None)
@given(sql=st.text(max_size=300), dialect=DIALECTS)
def test_random_unicode(sql: str, dialect: str) -> None:
    check(sql, dialect)


SQL_CHARS = st.sampled_from(
    list("()[],;:'\"`$%?*+-/\\#@!=<>.|&^~ \n\tSELECTFROMWHERE0123456789abc")
)


@settings(FUZZ, max_examples=1500, deadline=None)
@given(chars=st.lists(SQL_CHARS, max_size=200), dialect=DIALECTS)
def test_punctuation_soup(chars: list[str], dialect: str) -> None:
    check("".join(chars), dialect)


@settings(FUZZ, max_examples=400, deadline=None)
@given(
    base=st.sampled_from(SQLS),
    times=st.integers(50, 2000),
    shape=st.sampled_from(["repeat", "nest", "union", "and", "comment", "quote"]),
    dialect=DIALECTS,
)
def test_long_and_deep(base: str, times: int, shape: str, dialect: str) -> None:
    if shape == "repeat":
        sql = (base + " ") * times
    elif shape == "nest":
        sql = "SELECT " + "(" * times + "1" + ")" * times
    elif shape == "union":
        sql = " UNION ".join(["SELECT a FROM t"] * times)
    elif shape == "and":
        sql = "SELECT * FROM t WHERE " + " AND ".join(["a = ?"] * times)
    elif shape == "comment":
        sql = "/*" * times + base
    else:
        sql = "SELECT '" + "'" * times + base
    check(sql, dialect)


@settings(FUZZ, max_examples=300, deadline=None)
@given(
    prefix=st.sampled_from(["", " ", "\n", "-- c\n", "/* c */", ";", "\ufeff", "\x00"]),
    sql=st.sampled_from(SQLS),
    suffix=st.sampled_from(["", ";", "; ;", " --", "/*", "'", "\x00", "\U0001f600"]),
    dialect=DIALECTS,
)
def test_corpus_with_noise(prefix: str, sql: str, suffix: str, dialect: str) -> None:
    check(prefix + sql + suffix, dialect)


def test_empty_and_huge() -> None:
    for dialect in ("sqlite", "postgresql", "mysql", "x"):
        for sql in ("", " ", ";", "--", "/**/", "\n\n"):
            assert check(sql, dialect).reason == "empty statement"
        assert check("SELECT 1 " * 200_000, dialect).reason == "unparseable"
