"""The Alembic environment, run as the real ``alembic`` command on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect

REPO = Path(__file__).resolve().parents[1]
SAMPLE_TABLES = {"customers", "categories", "products", "inventory", "orders", "order_items"}
SAMPLE_TABLES |= {"reviews"}


def alembic(*args: str, env: dict[str, str] | None = None) -> str:
    """``python -m alembic ARGS`` in the repository; its output (fails the test on error)."""
    proc = subprocess.run(
        [sys.executable, "-m", "alembic", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )
    assert proc.returncode == 0, f"alembic {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return set(inspect(conn).get_table_names())
    finally:
        engine.dispose()


def indexes(url: str, table: str) -> set[str]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return {ix["name"] for ix in inspect(conn).get_indexes(table)}
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'nested' / 'migrate.sqlite'}"
    return request.getfixturevalue("pg_url")


def test_upgrade_head_then_downgrade_base(db_url):
    alembic("-x", f"url={db_url}", "upgrade", "head")
    assert tables(db_url) >= SAMPLE_TABLES
    assert "alembic_version" in tables(db_url)
    assert {"ix_orders_customer_id", "ix_orders_status_created_at"} <= indexes(db_url, "orders")
    assert "querycache_applied" in tables(db_url)  # write-behind's applied ids (0002)
    assert "0002" in alembic("-x", f"url={db_url}", "current")

    # the migration and sample_db.models describe the same schema
    assert "No new upgrade operations detected" in alembic("-x", f"url={db_url}", "check")

    alembic("-x", f"url={db_url}", "downgrade", "base")
    assert not SAMPLE_TABLES & tables(db_url)

    alembic("-x", f"url={db_url}", "upgrade", "head")  # and back up again
    assert tables(db_url) >= SAMPLE_TABLES


def test_url_from_the_environment(tmp_path):
    url = f"sqlite:///{tmp_path / 'env.sqlite'}"
    alembic("upgrade", "head", env={"QUERYCACHE_DB_URL": url})
    assert tables(url) >= SAMPLE_TABLES


def test_async_urls_are_migrated_with_the_sync_driver(tmp_path):
    path = tmp_path / "async.sqlite"
    alembic("-x", f"url=sqlite+aiosqlite:///{path}", "upgrade", "head")
    assert tables(f"sqlite:///{path}") >= SAMPLE_TABLES


def test_offline_sql_for_postgresql():
    sql = alembic("-x", "url=postgresql+psycopg://u:p@localhost/db", "upgrade", "head", "--sql")
    assert "CREATE TABLE orders" in sql
    assert "public_id UUID NOT NULL" in sql
    assert "TIMESTAMP WITH TIME ZONE" in sql
