"""querycache.analysis: the statement corpus, fingerprints, settings, memo, ALL."""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import json
import logging
import pickle
import sys
import threading
import time
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from querycache.analysis import ALL, DIALECTS, Analysis, Analyzer, analyze, fingerprint_id
from querycache.analysis import model as analysis_model

CORPUS = Path(__file__).with_name("analysis_corpus")


# -- the corpus -------------------------------------------------------------------------


def _load_corpus() -> list[Any]:
    params = []
    for path in sorted(CORPUS.glob("*.toml")):
        for i, case in enumerate(tomllib.loads(path.read_text(encoding="utf-8"))["case"]):
            dialects = case["dialect"]
            for dialect in [dialects] if isinstance(dialects, str) else dialects:
                params.append(pytest.param(dialect, case, id=f"{path.stem}:{i}:{dialect}"))
    for i, row in enumerate(json.loads((CORPUS / "orm.json").read_text(encoding="utf-8"))):
        case = {
            "sql": row["sql"],
            "kind": row["kind"],
            "read": row["tables_read"],
            "written": row["tables_written"],
            "cacheable": row["cacheable"],
            "op": row.get("transaction_op"),
        }
        params.append(
            pytest.param(row["dialect"], case, id=f"orm:{i}:{row['scenario']}:{row['driver']}")
        )
    return params


CASES = _load_corpus()


def test_corpus_is_large_enough() -> None:
    per_dialect: dict[str, int] = {}
    for p in CASES:
        per_dialect[p.values[0]] = per_dialect.get(p.values[0], 0) + 1
    assert per_dialect["sqlite"] >= 200
    assert per_dialect["postgresql"] >= 200
    assert per_dialect["mysql"] >= 10


@pytest.mark.parametrize(("dialect", "case"), CASES)
def test_corpus(dialect: str, case: dict[str, Any]) -> None:
    a = analyze(case["sql"], dialect)
    expected_written = ALL if case["written"] == "ALL" else frozenset(case["written"])
    got = {
        "kind": a.kind,
        "read": a.tables_read,
        "written": a.tables_written,
        "cacheable": a.cacheable,
        "session": a.session_state,
    }
    want = {
        "kind": case["kind"],
        "read": frozenset(case["read"]),
        "written": expected_written,
        "cacheable": case["cacheable"],
        "session": case.get("session", False),
    }
    assert got == want, f"reason={a.reason!r}"
    if case.get("reason"):
        assert a.reason is not None and a.reason.startswith(case["reason"]), a.reason
    if case.get("op"):
        assert a.transaction_op == case["op"]
    _assert_well_formed(a)


def _assert_well_formed(a: Analysis) -> None:
    assert a.kind in analysis_model.KINDS
    assert isinstance(a.fingerprint, str)
    assert a.fingerprint_id == fingerprint_id(a.fingerprint)
    assert isinstance(a.tables_read, frozenset)
    assert a.tables_written is ALL or isinstance(a.tables_written, frozenset)
    assert a.cacheable is (a.reason is None)
    assert not a.cacheable or a.kind == "read"
    assert (a.transaction_op is not None) is (a.kind == "transaction")
    for name in a.tables_read | (a.tables_written if a.tables_written is not ALL else set()):
        # qualified only for SQLite's attached and temp databases ("aux.t")
        assert name == name.lower() and name.count(".") <= 1


def _generator() -> ModuleType:
    name = "analysis_corpus_generate_orm"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, CORPUS / "generate_orm.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # SQLAlchemy resolves Mapped[] annotations through it
    spec.loader.exec_module(module)
    return module


def test_orm_corpus_is_up_to_date() -> None:
    gen = _generator()
    fresh = gen.render(gen.generate())
    on_disk = (CORPUS / "orm.json").read_text(encoding="utf-8")
    assert fresh == on_disk, "run: .venv/bin/python tests/analysis_corpus/generate_orm.py"


def test_orm_corpus_covers_drivers_and_loaders() -> None:
    rows = json.loads((CORPUS / "orm.json").read_text(encoding="utf-8"))
    assert {r["driver"] for r in rows} == {"sqlite", "psycopg", "asyncpg"}
    scenarios = {r["scenario"] for r in rows}
    for needed in (
        "session_get",
        "selectinload",
        "joinedload",
        "subqueryload",
        "joined_inheritance",
        "bulk_insert_values",
        "insert_returning",
        "on_conflict_do_update",
    ):
        assert needed in scenarios
    sqls = {r["driver"]: r["sql"] for r in rows if r["scenario"] == "session_get"}
    assert "?" in sqls["sqlite"] and "%(pk_1)s" in sqls["psycopg"] and "$1" in sqls["asyncpg"]


# -- fingerprints ---------------------------------------------------------------------------


def _fp(sql: str, dialect: str) -> str:
    a = analyze(sql, dialect)
    assert a.reason != "unparseable", sql
    return a.fingerprint


@pytest.mark.parametrize(
    ("dialect", "variants"),
    [
        (
            "postgresql",
            [
                "SELECT * FROM users WHERE id = %(id_1)s AND name = %(name_1)s",
                "SELECT * FROM users WHERE id = %s AND name = %s",
                "SELECT * FROM users WHERE id = $1 AND name = $2",
                "SELECT * FROM users WHERE id = $1::INTEGER AND name = $2::VARCHAR",
                "SELECT * FROM users WHERE id = %(id_1)s::INTEGER AND name = %(name_1)s::VARCHAR",
                "SELECT * FROM users WHERE id = :id AND name = :name",
                "SELECT * FROM users WHERE id = 42 AND name = 'bob'",
                "select *\n  from USERS\twhere ID = 7 and \"name\" = 'x' -- hi",
                '/* c */ SELECT * FROM "users" WHERE "id" = 1 AND name = E\'a\\\'b\'',
            ],
        ),
        (
            "sqlite",
            [
                "SELECT * FROM users WHERE id = ? AND name = ?",
                "SELECT * FROM users WHERE id = :id AND name = :name",
                "SELECT * FROM users WHERE id = ?1 AND name = ?2",
                "SELECT * FROM users WHERE id = 3 AND name = 'ann'",
                "select * from `users` where [id] = -3 and name = 'it''s'",
            ],
        ),
        (
            "mysql",
            [
                "SELECT * FROM users WHERE id = %s AND name = %s",
                "SELECT * FROM users WHERE id = %(id)s AND name = %(name)s",
                "SELECT * FROM `users` WHERE `id` = 5 AND name = 'x' # comment",
            ],
        ),
    ],
)
def test_fingerprint_equal_across_paramstyles_literals_and_spelling(
    dialect: str, variants: list[str]
) -> None:
    fingerprints = {_fp(v, dialect) for v in variants}
    assert len(fingerprints) == 1, fingerprints


@pytest.mark.parametrize(
    ("dialect", "variants"),
    [
        (
            "sqlite",
            [f"SELECT * FROM t WHERE id IN ({', '.join(['?'] * n)})" for n in (1, 2, 7, 300)]
            + ["SELECT * FROM t WHERE id IN (1, 2, 3)", "SELECT * FROM t WHERE id IN ('a')"],
        ),
        (
            "postgresql",
            [
                "SELECT * FROM t WHERE id IN (%(id_1_1)s::INTEGER, %(id_1_2)s::INTEGER)",
                "SELECT * FROM t WHERE id IN ($1::INTEGER, $2::INTEGER, $3::INTEGER)",
                "SELECT * FROM t WHERE id IN ($1,$2,$3,$4)",
                "SELECT * FROM t WHERE id IN (1)",
            ],
        ),
        (
            "postgresql",
            [
                "SELECT * FROM t WHERE (a, b) IN ((1, 2), (3, 4))",
                "SELECT * FROM t WHERE (a, b) IN ((%s, %s))",
            ],
        ),
        (
            "sqlite",
            [
                "INSERT INTO t (a, b) VALUES (?, ?)",
                "INSERT INTO t (a, b) VALUES (?, ?), (?, ?), (?, ?)",
                "INSERT INTO t (a, b) VALUES (1, 'x'), (2, 'y')",
            ],
        ),
    ],
)
def test_fingerprint_collapses_lists(dialect: str, variants: list[str]) -> None:
    assert len({_fp(v, dialect) for v in variants}) == 1


def test_fingerprint_pyformat_percent_escape() -> None:
    psycopg = "SELECT * FROM t WHERE a %% 2 = %(x)s AND b LIKE 'x%%'"
    asyncpg = "SELECT * FROM t WHERE a % 2 = $1 AND b LIKE 'x%'"
    assert _fp(psycopg, "postgresql") == _fp(asyncpg, "postgresql")


def test_fingerprint_different_queries_differ() -> None:
    queries = [
        "SELECT * FROM users WHERE id = ?",
        "SELECT * FROM users WHERE id <> ?",
        "SELECT * FROM users WHERE name = ?",
        "SELECT * FROM orders WHERE id = ?",
        "SELECT id FROM users WHERE id = ?",
        "SELECT * FROM users WHERE id IS NULL",
        "SELECT * FROM users WHERE id = ? ORDER BY name",
        "SELECT * FROM users WHERE id IN (SELECT user_id FROM orders)",
        "DELETE FROM users WHERE id = ?",
        "SELECT * FROM users WHERE id = ? LIMIT ?",
    ]
    assert len({_fp(q, "sqlite") for q in queries}) == len(queries)


def test_fingerprint_id_is_stable() -> None:
    a = analyze("SELECT users.id, users.name FROM users WHERE users.id = ?", "sqlite")
    assert a.fingerprint == "SELECT users.id, users.name FROM users WHERE users.id = ?"
    assert a.fingerprint_id == "d9b75b3115acc35d"
    assert fingerprint_id("") == fingerprint_id("")
    assert len(a.fingerprint_id) == 16


def test_unparseable_fingerprint_is_normalised() -> None:
    a = analyze("FROBNICATE  users WHERE id = 5", "sqlite")
    b = analyze("frobnicate users where id = 7", "sqlite")
    assert a.reason == "unparseable" and a.fingerprint == b.fingerprint


# -- dialects -----------------------------------------------------------------------------------


def test_dialect_names() -> None:
    assert DIALECTS["postgresql"] == "postgres"
    for unknown in ("oracle", "mssql", "", "POSTGRESQL"):
        a = analyze("SELECT * FROM t WHERE a = ?", unknown)
        assert a.kind == "read" and a.tables_read == {"t"}


# -- settings ------------------------------------------------------------------------------


def test_volatile_functions_setting() -> None:
    an = Analyzer(volatile_functions=["My_Clock", "lower"])
    assert an.analyze("SELECT my_clock()", "postgresql").reason == "volatile function: my_clock"
    assert an.analyze("SELECT LOWER(a) FROM t", "sqlite").reason == "volatile function: lower"
    assert an.volatile_functions == {"my_clock", "lower"}


def test_immutable_functions_setting() -> None:
    an = Analyzer(immutable_functions=["my_func", "billing.total_for", "NOW", "random"])
    assert an.analyze("SELECT my_func(a) FROM t", "postgresql").cacheable
    assert an.analyze("SELECT billing.total_for(a) FROM t", "postgresql").cacheable
    assert an.analyze("SELECT now()", "postgresql").cacheable  # overrides the built-in list
    assert an.analyze("SELECT now()", "mysql").cacheable
    assert an.analyze("SELECT random()", "sqlite").cacheable
    assert not an.analyze("SELECT other_func(a) FROM t", "postgresql").cacheable
    assert not analyze("SELECT my_func(a) FROM t", "postgresql").cacheable


def test_never_cache_tables_setting() -> None:
    an = Analyzer(never_cache_tables=["public.Audit_Log"], view_dependencies={"v": ["audit_log"]})
    a = an.analyze("SELECT * FROM audit_log JOIN users ON true", "postgresql")
    assert not a.cacheable and a.reason == "never-cache table: audit_log"
    assert not an.analyze("SELECT * FROM v", "postgresql").cacheable
    assert an.analyze("SELECT * FROM users", "postgresql").cacheable


def test_view_dependencies_resolve_transitively() -> None:
    an = Analyzer(
        view_dependencies={
            "v_top": ["v_mid", "extra"],
            "public.v_mid": ["v_base"],
            "v_base": ["orders", "users"],
            "loop_a": ["loop_b"],
            "loop_b": ["loop_a", "t"],
        }
    )
    a = an.analyze("SELECT * FROM v_top", "postgresql")
    assert a.tables_read == {"v_top", "v_mid", "extra", "v_base", "orders", "users"}
    assert an.analyze("SELECT * FROM loop_a", "postgresql").tables_read == {"loop_a", "loop_b", "t"}
    assert an.analyze("UPDATE v_base SET a = 1", "postgresql").tables_written >= {"orders"}


def test_set_view_dependencies_clears_memo() -> None:
    an = Analyzer()
    sql = "SELECT * FROM v"
    first = an.analyze(sql, "postgresql")
    assert first.tables_read == {"v"}
    an.set_view_dependencies({"v": ["t"]})
    assert an.analyze(sql, "postgresql").tables_read == {"v", "t"}
    assert an.view_dependencies == {"v": {"t"}}
    an.set_view_dependencies(None)
    assert an.analyze(sql, "postgresql").tables_read == {"v"}


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"volatile_functions": "now"}, TypeError, "volatile_functions"),
        ({"immutable_functions": 3}, TypeError, "immutable_functions"),
        ({"never_cache_tables": [1]}, TypeError, "never_cache_tables"),
        ({"never_cache_tables": [""]}, TypeError, "never_cache_tables"),
        ({"view_dependencies": ["v"]}, TypeError, "view_dependencies"),
        ({"view_dependencies": {"v": "t"}}, TypeError, "view_dependencies"),
        ({"view_dependencies": {1: ["t"]}}, TypeError, "view_dependencies"),
        ({"max_entries": -1}, ValueError, "max_entries"),
        ({"max_entries": 1.5}, TypeError, "max_entries"),
        ({"max_entries": True}, TypeError, "max_entries"),
        ({"max_sql_length": 0}, ValueError, "max_sql_length"),
    ],
)
def test_settings_validation(kwargs: dict[str, Any], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        Analyzer(**kwargs)


def test_set_view_dependencies_validates() -> None:
    with pytest.raises(TypeError, match="view_dependencies"):
        Analyzer().set_view_dependencies({"v": 5})  # type: ignore[dict-item]


# -- memo ---------------------------------------------------------------------------------------


def test_memo_returns_the_same_object() -> None:
    an = Analyzer()
    a = an.analyze("SELECT * FROM t WHERE id = ?", "sqlite")
    assert an.analyze("SELECT * FROM t WHERE id = ?", "sqlite") is a
    assert an.analyze("SELECT * FROM t WHERE id = ?", "postgresql") is not a
    info = an.memo_info()
    assert info.hits == 1 and info.misses == 2
    an.clear()
    assert an.memo_info().currsize == 0


def test_memo_is_bounded() -> None:
    an = Analyzer(max_entries=8)
    for i in range(50):
        an.analyze(f"SELECT * FROM t{i}", "sqlite")
    assert an.memo_info().currsize == 8
    off = Analyzer(max_entries=0)
    assert off.analyze("SELECT 1", "sqlite") == off.analyze("SELECT 1", "sqlite")


def test_memo_hit_is_cheap() -> None:
    an = Analyzer()
    sql = "SELECT users.id FROM users WHERE users.id = %(pk_1)s"
    an.analyze(sql, "postgresql")
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(10_000):
            an.analyze(sql, "postgresql")
        best = min(best, (time.perf_counter() - t) / 10_000)
    assert best < 5e-6  # the benchmark shows well under 2 µs; slack for busy CI


def test_memo_threads() -> None:
    an = Analyzer(max_entries=16)
    errors: list[BaseException] = []
    sqls = [f"SELECT * FROM t{i % 40} WHERE a = ?" for i in range(400)]

    def work() -> None:
        try:
            for sql in sqls:
                a = an.analyze(sql, "sqlite")
                assert a.tables_read == {sql.split()[3]}
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_long_strings_are_not_memoized_but_analysed() -> None:
    an = Analyzer()
    sql = "SELECT * FROM t WHERE id IN (" + ", ".join(["?"] * 30_000) + ")"
    a = an.analyze(sql, "sqlite")
    assert a.cacheable and a.tables_read == {"t"}
    # only the short template of its IN list is memoized (querycache.analysis.inlists)
    assert an.memo_info().currsize == 1
    longer = "SELECT * FROM t WHERE id IN (" + ", ".join(["?"] * 30_001) + ")"
    assert an.analyze(longer, "sqlite").footprint.tables["t"].conds[0].values[-1] == ("p", 30_000)
    assert an.memo_info().currsize == 1
    other = "SELECT * FROM t WHERE name = '" + "x" * 70_000 + "'"
    assert an.analyze(other, "sqlite").cacheable
    assert an.memo_info().currsize == 1


# -- ALL, Analysis -------------------------------------------------------------------------------


def test_all_sentinel() -> None:
    import querycache.analysis.model as model

    assert ALL is model.ALL
    assert repr(ALL) == "querycache.ALL"
    assert copy.copy(ALL) is ALL and copy.deepcopy(ALL) is ALL
    assert pickle.loads(pickle.dumps(ALL)) is ALL
    assert type(ALL)() is ALL
    assert analyze("CALL x()", "postgresql").tables_written is ALL


def test_analysis_is_frozen_with_slots() -> None:
    a = analyze("SELECT 1", "sqlite")
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.kind = "write"  # type: ignore[misc]
    assert not hasattr(a, "__dict__")
    assert hash(a) == hash(analyze("SELECT 1", "sqlite"))


# -- robustness ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sql",
    [
        None,
        b"SELECT 1",
        42,
        ["SELECT 1"],
        "\x00",
        "SELECT '\udcff'",
        "(" * 5000,
        "SELECT " + "(" * 400 + "1" + ")" * 400,
        "SELECT 1 AND " * 3000 + "1",
        "/*",
        "'",
        '"',
        "$$",
        "%(",
        "?",
    ],
)
def test_never_raises(sql: Any) -> None:
    a = Analyzer().analyze(sql, "postgresql")
    _assert_well_formed(a)
    _assert_well_formed(Analyzer().analyze(sql, None))  # type: ignore[arg-type]


def test_too_long_is_refused_quickly() -> None:
    an = Analyzer(max_sql_length=1000)
    t = time.perf_counter()
    a = an.analyze("SELECT " + "1 + " * 1000 + "1", "sqlite")
    assert time.perf_counter() - t < 0.05
    assert (a.kind, a.cacheable, a.reason, a.tables_written) == ("other", False, "unparseable", ALL)
    huge = "SELECT * FROM t WHERE a = '" + "x" * 2_000_000 + "'"
    t = time.perf_counter()
    assert analyze(huge, "sqlite").reason == "unparseable"
    assert time.perf_counter() - t < 0.5


def test_sqlglot_log_output_is_suppressed(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="sqlglot")
    an = Analyzer()
    for sql in (
        "SET ROLE x",
        "EXPLAIN SELECT 1",
        "CREATE FUNCTION f() RETURNS int AS 'x'",
        "DROP INDEX IF EXISTS a, b",
        "LOCK TABLE t",
        "SELECT * FROM t FOR UPDATE",
    ):
        an.analyze(sql, "postgresql")
    assert [r for r in caplog.records if r.name.startswith("sqlglot")] == []


def test_multiple_statement_transaction_op() -> None:
    a = analyze("BEGIN; COMMIT", "sqlite")
    assert (a.kind, a.transaction_op, a.reason) == ("transaction", "commit", "multiple statements")
    b = analyze("SELECT 1; SET search_path TO x", "postgresql")
    assert b.kind == "other" and b.session_state and b.tables_written == frozenset()
