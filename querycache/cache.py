"""The front object: :class:`QueryCache` (placeholder: passes everything through).

This stub fixes the public shape so other parts can be built against it; the
read-through core replaces its insides.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import orm
from sqlalchemy.ext import asyncio as sa_asyncio


class Report:
    """Hit report (placeholder)."""

    def __init__(self, data: dict[str, Any]) -> None:
        self._data = data

    def as_dict(self) -> dict[str, Any]:
        return self._data

    def to_json(self) -> str:
        return json.dumps(self._data, indent=2, default=str)

    def to_text(self) -> str:
        return self.to_json()


class QueryCache:
    def __init__(self, ttl: float = 300, memory_bytes: int = 64 * 2**20, namespace: str = "default",
                 **settings: Any) -> None:
        self.ttl = ttl

    def wrap(self, engine: Any) -> Any:
        return engine

    def sessionmaker(self, bind: Any = None, **kw: Any) -> orm.sessionmaker[orm.Session]:
        return orm.sessionmaker(bind=bind, **kw)

    def async_sessionmaker(self, bind: Any = None, **kw: Any) -> sa_asyncio.async_sessionmaker:
        return sa_asyncio.async_sessionmaker(bind=bind, **kw)

    def report(self) -> Report:
        return Report({"totals": {"calls": 0, "hits": 0, "misses": 0, "bypasses": 0},
                       "queries": [], "tables": []})

    def close(self) -> None:
        pass

    async def aclose(self) -> None:
        pass
