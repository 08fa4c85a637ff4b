"""querycache: a read-through query cache for SQLAlchemy.

Wrap an engine and every safe read is served from memory (then Redis, then
the database); every committed write invalidates exactly the cached results
that read the tables it wrote::

    from querycache import QueryCache

    cache = QueryCache(ttl=300)
    engine = cache.wrap(create_engine(url))
    Session = cache.sessionmaker(bind=engine)
"""

from querycache.analysis import ALL, Analysis, Analyzer, analyze
from querycache.cache import QueryCache
from querycache.errors import OptionError
from querycache.queues import QueueFull
from querycache.report import Report

__all__ = [
    "ALL",
    "Analysis",
    "Analyzer",
    "OptionError",
    "QueryCache",
    "QueueFull",
    "Report",
    "analyze",
]
__version__ = "0.1.0"
