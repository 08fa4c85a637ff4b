"""The pytest plugin (``pytest -p querycache.pytest_plugin --querycache``),
run over small suites with pytester: off unless enabled, wraps the engines a
suite creates, reports hits verified, fails the session on a mismatch."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

# these tests run pytest sessions inside this process: an outer session's plugin
# (this suite run with --querycache) would wrap their engines and count their mismatches
pytestmark = pytest.mark.querycache_plugin_off(reason="runs nested pytest sessions")

APP = """
import sqlite3
from sqlalchemy import create_engine, text

def make(tmp_path):
    path = tmp_path / "app.db"
    e = create_engine(f"sqlite:///{path}")
    with e.begin() as c:
        c.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"))
        c.execute(text("INSERT INTO t VALUES (1, 'a'), (2, 'b')"))
    return e, path

def read(e, i=1):
    with e.connect() as c:
        return c.execute(text("SELECT v FROM t WHERE id = :i"), {"i": i}).scalar()
"""

CONSISTENT = """
from sqlalchemy import text
from app import make, read

def test_reads_and_writes(tmp_path):
    e, _ = make(tmp_path)
    for _ in range(5):
        assert read(e) == "a"
    with e.begin() as c:
        c.execute(text("UPDATE t SET v = 'b2' WHERE id = 2"))
    assert read(e, 2) == "b2"
    assert read(e, 2) == "b2"

def test_wrapped(tmp_path):
    e, _ = make(tmp_path)
    read(e)
    assert getattr(e.dialect.execution_ctx_cls, "_qc", None) is not None
"""

BEHIND_THE_BACK = """
import sqlite3
from app import make, read

def test_raw_write(tmp_path):
    e, path = make(tmp_path)
    assert read(e) == "a"
    assert read(e) == "a"
    raw = sqlite3.connect(path)
    raw.execute("UPDATE t SET v = 'z' WHERE id = 1")
    raw.commit()
    raw.close()
    assert read(e) == "z"  # verify=1.0: the caller gets the database's row
"""

PLUGIN = ("-p", "querycache.pytest_plugin", "-p", "no:cacheprovider", "-p", "no:asyncio")


def test_does_nothing_unless_enabled(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(app=APP)
    pytester.makepyfile(
        test_off="""
from app import make, read

def test_not_wrapped(tmp_path):
    e, _ = make(tmp_path)
    read(e)
    assert getattr(e.dialect.execution_ctx_cls, "_qc", None) is None
"""
    )
    result = pytester.runpytest(*PLUGIN)
    result.assert_outcomes(passed=1)
    assert "querycache verify" not in result.stdout.str()


def test_consistent_suite_reports_zero_mismatches(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(app=APP, test_app=CONSISTENT)
    result = pytester.runpytest(*PLUGIN, "--querycache")
    result.assert_outcomes(passed=2)
    assert result.ret == 0
    result.stdout.re_match_lines(
        [r"querycache: 2 engines wrapped, [1-9]\d* hits verified .* 0 mismatches"]
    )


def test_mismatch_fails_the_session(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(app=APP, test_app=BEHIND_THE_BACK)
    result = pytester.runpytest(*PLUGIN, "--querycache")
    result.assert_outcomes(passed=1)  # the test itself saw the database's row
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "*1 mismatches*",
            "*mismatch in test_app.py::test_raw_write: SELECT v FROM t WHERE id = ?*row 0 differs*",
        ]
    )


def test_enabled_from_the_ini_file(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(app=APP, test_app=BEHIND_THE_BACK)
    pytester.makeini("[pytest]\nquerycache = true\n")
    result = pytester.runpytest(*PLUGIN)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*querycache: 1 engines wrapped*1 mismatches*"])


def test_bad_rate_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(app=APP, test_app=CONSISTENT)
    result = pytester.runpytest(*PLUGIN, "--querycache", "--querycache-verify=2")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*verify must be a number in [[]0, 1[]]*"])


def test_an_application_cache_is_left_alone(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_own="""
from sqlalchemy import create_engine, text
from querycache import QueryCache

def test_own_cache(tmp_path):
    qc = QueryCache()
    e = qc.wrap(create_engine(f"sqlite:///{tmp_path / 'x.db'}"))
    with e.connect() as c:
        c.execute(text("SELECT 1")).all()
    assert e.dialect.execution_ctx_cls._qc.core is qc
    assert qc.verifier.rate == 0.0
"""
    )
    result = pytester.runpytest(*PLUGIN, "--querycache")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*querycache: 0 engines wrapped*"])


def test_an_application_wrapping_after_first_use_takes_the_engine_over(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(app=APP)
    pytester.makepyfile(
        test_late="""
from querycache import QueryCache
from app import make, read

def test_late_wrap(tmp_path):
    e, _ = make(tmp_path)  # connected: the plugin wrapped it
    assert read(e) == "a"
    qc = QueryCache()
    assert qc.wrap(e) is e
    assert e.dialect.execution_ctx_cls._qc.core is qc
    for _ in range(3):
        assert read(e) == "a"
    totals = qc.report().as_dict()["totals"]
    assert totals["misses"] == 1 and totals["memory_hits"] == 2
"""
    )
    result = pytester.runpytest(*PLUGIN, "--querycache")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*querycache: 0 engines wrapped*0 mismatches*"])


OPT_OUT = """
import pytest
from app import make, read

@pytest.mark.querycache_plugin_off(reason="writes behind the cache's back")
def test_off(tmp_path):
    e, path = make(tmp_path)
    read(e)
    assert getattr(e.dialect.execution_ctx_cls, "_qc", None) is None

def test_on_again(tmp_path):
    e, _ = make(tmp_path)
    read(e)
    assert getattr(e.dialect.execution_ctx_cls, "_qc", None) is not None
"""


def test_a_marked_test_runs_without_the_plugin(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(app=APP, test_app=OPT_OUT)
    pytester.makepyfile(
        test_raw=BEHIND_THE_BACK.replace(
            "def test_raw_write", "@pytest.mark.querycache_plugin_off\ndef test_raw_write"
        ).replace("import sqlite3", "import sqlite3\nimport pytest")
    )
    result = pytester.runpytest(*PLUGIN, "--querycache", "--strict-markers")
    result.assert_outcomes(passed=3)
    assert result.ret == 0  # the raw write's test was not checked
    result.stdout.fnmatch_lines(
        [
            "*querycache: 1 engines wrapped*0 mismatches*",
            "*2 tests ran without the plugin (querycache_plugin_off)*",
        ]
    )


def test_the_marker_is_known_when_the_plugin_is_disabled(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(app=APP, test_app=OPT_OUT.replace("is not None", "is None"))
    result = pytester.runpytest(*PLUGIN, "--strict-markers")
    result.assert_outcomes(passed=2)


def test_an_engine_created_before_a_marked_test_and_first_used_in_it_is_left_alone(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(app=APP)
    pytester.makepyfile(
        test_mod="""
import pytest
from sqlalchemy import create_engine, text

@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    return create_engine(f"sqlite:///{tmp_path_factory.mktemp('m') / 'm.db'}")

def test_create(engine):
    pass  # created (with the plugin on), not connected

@pytest.mark.querycache_plugin_off
def test_first_use(engine):
    with engine.connect() as c:
        c.execute(text("SELECT 1")).all()
    assert getattr(engine.dialect.execution_ctx_cls, "_qc", None) is None
"""
    )
    result = pytester.runpytest(*PLUGIN, "--querycache")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*querycache: 0 engines wrapped*"])
