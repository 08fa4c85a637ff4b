"""Operations written once, run sync or async.

An operation body is a generator that yields *requests* (execute a statement,
get by primary key, load a relationship, add, commit) and receives their
answers; :func:`drive` runs it on a :class:`~sqlalchemy.orm.Session`,
:func:`drive_async` on an :class:`~sqlalchemy.ext.asyncio.AsyncSession`. So a
read does the same SQL both ways, and its lazy loads become
``awaitable_attrs`` under asyncio.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Result
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

__all__ = ["Add", "Body", "Commit", "Execute", "Get", "Load", "drive", "drive_async"]


class Request:
    """One thing an operation asks its session to do."""

    def sync(self, session: Session) -> Any:
        """Do it on a sync session."""
        raise NotImplementedError

    async def run_async(self, session: AsyncSession) -> Any:
        """Do it on an async session."""
        raise NotImplementedError


Body = Generator[Request, Any, Any]


@dataclass(frozen=True)
class Execute(Request):
    """``session.execute(statement, params)``; answers the (buffered) ``Result``."""

    statement: Any
    params: Mapping[str, Any] | None = None

    def sync(self, session: Session) -> Result[Any]:
        return session.execute(self.statement, self.params)

    async def run_async(self, session: AsyncSession) -> Result[Any]:
        return await session.execute(self.statement, self.params)


@dataclass(frozen=True)
class Get(Request):
    """``session.get(entity, ident)``; answers the object or ``None``."""

    entity: type
    ident: Any

    def sync(self, session: Session) -> Any:
        return session.get(self.entity, self.ident)

    async def run_async(self, session: AsyncSession) -> Any:
        return await session.get(self.entity, self.ident)


@dataclass(frozen=True)
class Load(Request):
    """Read ``obj.<attr>``: a lazy load when sync, ``awaitable_attrs`` when async."""

    obj: Any
    attr: str

    def sync(self, session: Session) -> Any:
        return getattr(self.obj, self.attr)

    async def run_async(self, session: AsyncSession) -> Any:
        return await getattr(self.obj.awaitable_attrs, self.attr)


@dataclass(frozen=True)
class Add(Request):
    """``session.add(obj)``."""

    obj: Any

    def sync(self, session: Session) -> None:
        session.add(self.obj)

    async def run_async(self, session: AsyncSession) -> None:
        session.add(self.obj)


@dataclass(frozen=True)
class Commit(Request):
    """``session.commit()``."""

    def sync(self, session: Session) -> None:
        session.commit()

    async def run_async(self, session: AsyncSession) -> None:
        await session.commit()


def drive(body: Body, session: Session) -> Any:
    """Run an operation body on a sync session; return what the body returns."""
    try:
        request = next(body)
        while True:
            request = body.send(request.sync(session))
    except StopIteration as stop:
        return stop.value
    finally:
        body.close()


async def drive_async(body: Body, session: AsyncSession) -> Any:
    """Run an operation body on an async session; return what the body returns."""
    try:
        request = next(body)
        while True:
            request = body.send(await request.run_async(session))
    except StopIteration as stop:
        return stop.value
    finally:
        body.close()
