"""querycache: a read-through query cache for SQLAlchemy."""

from querycache.cache import QueryCache, Report

__all__ = ["QueryCache", "Report"]
__version__ = "0.1.0"
