"""The test servers are real: they start, answer, and stop."""

from __future__ import annotations

import sqlalchemy as sa


def test_postgres_is_real(pg_url):
    engine = sa.create_engine(pg_url)
    with engine.connect() as conn:
        version = conn.execute(sa.text("select version()")).scalar_one()
        ext = conn.execute(
            sa.text("select count(*) from pg_extension where extname = 'pg_stat_statements'")
        ).scalar_one()
    engine.dispose()
    assert version.startswith("PostgreSQL")
    assert ext == 1


def test_redis_is_real(redis_server):
    client = redis_server.client()
    client.set("qc-probe", b"1")
    assert client.get("qc-probe") == b"1"
    assert client.info("server")["redis_version"]
    client.close()
