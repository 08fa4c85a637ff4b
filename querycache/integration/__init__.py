"""SQLAlchemy integration: where executions meet the cache.

``engine.py`` attaches the cache to an engine; ``context.py`` is the per-engine
execution context whose ``pre_exec``/``post_exec`` serve hits, run misses and
record writes; ``cursor.py`` replays a cached result as a DBAPI cursor;
``orm.py`` is the session factory and the ORM fast path.
"""
