"""Alembic environment of querycache's databases.

The database URL is, in order: ``-x url=...``, ``config.attributes["url"]``
(programmatic use), ``$QUERYCACHE_DB_URL``, ``sqlalchemy.url`` from the ini
file, else ``sqlite:///sample_db/data/shop.sqlite`` (relative to the current
directory). A caller may also hand over an open connection as
``config.attributes["connection"]``. Async driver names are mapped to their
sync siblings. SQLite runs in batch mode, so later ALTERs work there too.
"""

from __future__ import annotations

import os
import sys
from logging.config import fileConfig
from pathlib import Path

from alembic import context
from sqlalchemy import MetaData, create_engine, pool

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from querycache.queues.applied import applied_table
from sample_db.models import Base
from sample_db.urls import sqlite_path, sync_url

DEFAULT_URL = "sqlite:///sample_db/data/shop.sqlite"

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

# querycache's own table (revision 0002), so `alembic check` compares it too; in a
# MetaData of its own: env.py runs once per migration command, and the models'
# metadata is the sample's schema (the loader walks it)
_querycache = MetaData()
applied_table(_querycache)
target_metadata = [Base.metadata, _querycache]


def database_url() -> str:
    """The URL to migrate (see the module docstring for the order)."""
    url = (
        context.get_x_argument(as_dictionary=True).get("url")
        or config.attributes.get("url")
        or os.environ.get("QUERYCACHE_DB_URL")
        or config.get_main_option("sqlalchemy.url")
        or DEFAULT_URL
    )
    return sync_url(url)


def _configure(**kw: object) -> None:
    context.configure(
        target_metadata=target_metadata,
        render_as_batch=True,
        compare_type=True,
        **kw,  # type: ignore[arg-type]
    )


def run_migrations_offline() -> None:
    """Emit the SQL to stdout (``alembic upgrade head --sql``)."""
    _configure(url=database_url(), literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Migrate over a live connection (the caller's, or a new one)."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    url = database_url()
    path = sqlite_path(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            _configure(connection=conn)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
