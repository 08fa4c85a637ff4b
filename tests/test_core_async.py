"""The read-through core on async engines (aiosqlite, asyncpg), through the
genuine asyncio API: ``AsyncConnection.execute``/``stream``, ``AsyncSession``
from ``cache.async_sessionmaker`` (and a plain ``AsyncSession``),
``awaitable_attrs``. Hits are proven from the database side (:mod:`dbcount`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from dbcount import (
    ASYNC_DRIVERS,
    Tag,
    User,
    counter_for,
    db_url,
    make_engine,
    seed,
)
from sqlalchemy import inspect, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import joinedload, selectinload

from querycache import QueryCache

U = User.__table__
T = Tag.__table__
USERS = "from qc_users"
POSTS = "from qc_posts"
TAGS = "from qc_tags"

MAKERS = ["cache.async_sessionmaker", "AsyncSession(bind=engine)"]


@dataclass
class AEnv:
    driver: str
    url: str
    cache: QueryCache
    engine: AsyncEngine
    plain: AsyncEngine
    counter: Any

    def calls(self, fragment: str) -> int:
        return self.counter.count(fragment)

    def session(self, how: str = MAKERS[0], **kw: Any) -> AsyncSession:
        if how == "cache.async_sessionmaker":
            return self.cache.async_sessionmaker(bind=self.engine, **kw)()
        return AsyncSession(bind=self.engine, **kw)

    async def read(self, stmt: Any, params: Any = None, engine: Any = None) -> list[Any]:
        """Through ``AsyncConnection.execute``."""
        async with (engine or self.engine).connect() as conn:
            result = await conn.execute(stmt, params)
            return [tuple(r) for r in result]

    async def sread(self, stmt: Any, params: Any = None, engine: Any = None) -> list[Any]:
        """Through a plain ``AsyncSession.execute`` (a Core statement)."""
        async with AsyncSession(bind=engine or self.engine) as s:
            result = await s.execute(stmt, params)
            return [tuple(r) for r in result]

    async def truth(self, stmt: Any, params: Any = None) -> list[Any]:
        return await self.sread(stmt, params, engine=self.plain)


def typed(rows: list[Any]) -> list[Any]:
    return [tuple((type(v).__name__, repr(v)) for v in row) for row in rows]


def obj_state(obj: Any) -> tuple[Any, ...]:
    cols = [c.key for c in inspect(type(obj)).column_attrs]
    return tuple((c, repr(getattr(obj, c))) for c in cols)


@pytest.fixture(params=ASYNC_DRIVERS)
async def aenv(request, tmp_path) -> AsyncIterator[AEnv]:
    url = db_url(request.param, request, tmp_path)
    seed(url)
    cache = QueryCache()
    engine = make_engine(url)
    counter = counter_for(engine)  # before the first connection
    if request.param == "asyncpg":
        # connect once before wrapping: wrapping first breaks the PostgreSQL dialect's
        # first-connect initialize (test_api.py::test_wrap_before_first_connection)
        async with engine.connect():
            pass
    assert cache.wrap(engine) is engine
    plain = make_engine(url)
    yield AEnv(request.param, url, cache, engine, plain, counter)
    await engine.dispose()
    await plain.dispose()
    counter.close()
    await cache.aclose()


# -- served from cache ------------------------------------------------------------------


async def test_async_connection_execute_is_served_from_cache(aenv: AEnv):
    stmts = [
        (select(U).where(U.c.id == 2), None),
        (text("SELECT id, name FROM qc_users WHERE id = :i"), {"i": 3}),
    ]
    truths = [await aenv.truth(s, p) for s, p in stmts]
    n = aenv.calls(USERS)
    for _ in range(3):
        for (s, p), truth in zip(stmts, truths):
            assert typed(await aenv.read(s, p)) == typed(truth)
    assert aenv.calls(USERS) == n + len(stmts)


async def test_async_exec_driver_sql_and_scalar_are_served_from_cache(aenv: AEnv):
    async def run(engine: AsyncEngine) -> Any:
        async with engine.connect() as conn:
            a = (await conn.exec_driver_sql("SELECT id, name FROM qc_users WHERE id = 4")).all()
            b = await conn.scalar(select(U.c.name).where(U.c.id == 5))
            c = (await conn.scalars(select(U.c.id).order_by(U.c.id))).all()
            return [tuple(r) for r in a], b, list(c)

    truth = await run(aenv.plain)
    assert await run(aenv.engine) == truth
    n = aenv.calls(USERS)
    for _ in range(2):
        assert await run(aenv.engine) == truth
    assert aenv.calls(USERS) == n


async def test_async_stream_is_served_from_cache(aenv: AEnv):
    stmt = select(U.c.id, U.c.name, U.c.score).order_by(U.c.id)

    async def run(engine: AsyncEngine) -> Any:
        async with engine.connect() as conn:
            result = await conn.stream(stmt)
            rows = [tuple(r) async for r in result]
            parts = []
            async for part in (await conn.stream(stmt)).partitions(2):
                parts.append([tuple(r) for r in part])
            scalars = [v async for v in await conn.stream_scalars(stmt)]
            return rows, parts, scalars

    truth = await run(aenv.plain)
    assert await run(aenv.engine) == truth
    n = aenv.calls(USERS)
    assert await run(aenv.engine) == truth
    assert aenv.calls(USERS) == n


@pytest.mark.parametrize("how", MAKERS)
async def test_async_session_execute_scalars_get(aenv: AEnv, how: str):
    async def run(s: AsyncSession) -> Any:
        one = (await s.execute(select(User).where(User.id == 1))).scalar_one()
        many = (await s.scalars(select(User).order_by(User.id))).all()
        got = await s.get(User, 2)
        cols = (await s.execute(select(User.name, User.score).where(User.id == 3))).all()
        return obj_state(one), [obj_state(u) for u in many], obj_state(got), list(cols)

    async with AsyncSession(bind=aenv.plain) as s:
        truth = await run(s)
    async with aenv.session(how) as s:
        assert await run(s) == truth
    n = aenv.calls(USERS)
    for _ in range(2):
        async with aenv.session(how) as s:
            assert await run(s) == truth
    assert aenv.calls(USERS) == n


@pytest.mark.parametrize("how", MAKERS)
async def test_async_session_stream(aenv: AEnv, how: str):
    stmt = select(User).order_by(User.id)

    async def run(s: AsyncSession) -> Any:
        result = await s.stream(stmt)
        users = [u async for u in result.scalars()]
        return [obj_state(u) for u in users]

    async with AsyncSession(bind=aenv.plain) as s:
        truth = await run(s)
    async with aenv.session(how) as s:
        assert await run(s) == truth
    n = aenv.calls(USERS)
    async with aenv.session(how) as s:
        assert await run(s) == truth
    assert aenv.calls(USERS) == n


@pytest.mark.parametrize("loader", ["awaitable_attrs", "selectinload", "joinedload"])
@pytest.mark.parametrize("how", MAKERS)
async def test_async_relationship_loading(aenv: AEnv, loader: str, how: str):
    async def run(s: AsyncSession) -> Any:
        stmt = select(User).order_by(User.id)
        if loader == "selectinload":
            stmt = stmt.options(selectinload(User.posts))
        elif loader == "joinedload":
            stmt = stmt.options(joinedload(User.posts))
        users = (await s.scalars(stmt)).unique().all()
        out = []
        for u in users:
            posts = await u.awaitable_attrs.posts
            out.append((u.id, [(p.id, p.title) for p in posts]))
        first_post = (await users[0].awaitable_attrs.posts)[0]
        out.append((await first_post.awaitable_attrs.user).name)
        return out

    async with AsyncSession(bind=aenv.plain) as s:
        truth = await run(s)
    async with aenv.session(how) as s:
        assert await run(s) == truth
    n = aenv.calls(USERS), aenv.calls(POSTS)
    for _ in range(2):
        async with aenv.session(how) as s:
            assert await run(s) == truth
    assert (aenv.calls(USERS), aenv.calls(POSTS)) == n


# -- indistinguishable results ----------------------------------------------------------


@pytest.mark.parametrize("via", ["connection", "session"])
async def test_async_rows_keys_and_types_match_uncached(aenv: AEnv, via: str):
    stmt = select(U).order_by(U.c.id)

    async def run(engine: AsyncEngine) -> Any:
        if via == "session":
            async with AsyncSession(bind=engine) as s:
                r = await s.execute(stmt)
                return list(r.keys()), typed([tuple(x) for x in r])
        async with engine.connect() as conn:
            r = await conn.execute(stmt)
            return list(r.keys()), typed([tuple(x) for x in r])

    truth = await run(aenv.plain)
    assert await run(aenv.engine) == truth
    assert await run(aenv.engine) == truth


async def test_async_result_methods_on_a_hit(aenv: AEnv):
    stmt = select(U.c.id, U.c.name, U.c.active).order_by(U.c.id)

    async def run(engine: AsyncEngine) -> Any:
        out: dict[str, Any] = {}
        async with engine.connect() as conn:
            out["mappings"] = [dict(m) for m in (await conn.execute(stmt)).mappings()]
            out["first"] = tuple((await conn.execute(stmt)).first())
            out["one"] = tuple((await conn.execute(stmt.where(U.c.id == 1))).one())
            out["parts"] = [[tuple(r) for r in p] for p in (await conn.execute(stmt)).partitions(3)]
            out["unique"] = (await conn.execute(select(U.c.active))).unique().scalars().all()
            out["columns"] = [tuple(r) for r in (await conn.execute(stmt)).columns("name")]
        return out

    truth = await run(aenv.plain)
    assert await run(aenv.engine) == truth
    n = aenv.calls(USERS)
    assert await run(aenv.engine) == truth
    assert aenv.calls(USERS) == n


@pytest.mark.parametrize("how", MAKERS)
async def test_async_identity_map_and_pending_changes(aenv: AEnv, how: str):
    by_id = select(User).where(User.id == 1)
    renamed = select(User).where(User.name == "renamed")
    async with aenv.session(how) as s:  # warm
        (await s.execute(by_id)).scalar_one()
        assert (await s.scalars(renamed)).all() == []
    async with aenv.session(how) as s:
        held = await s.get(User, 1)
        assert (await s.execute(by_id)).scalar_one() is held
        held.name = "renamed"  # pending: autoflush must flush it before the next read
        assert (await s.scalars(renamed)).all() == [held]
        await s.rollback()
    async with aenv.session(how, autoflush=False) as s:
        held = (await s.execute(by_id)).scalar_one()
        held.name = "local"
        assert (await s.execute(by_id)).scalar_one() is held
        assert held.name == "local"
        await s.rollback()
    async with aenv.session(how) as s:
        assert (await s.execute(by_id)).scalar_one().name == "user1"
        assert (await s.scalars(renamed)).all() == []


# -- invalidation -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["core", "text", "orm_flush", "orm_bulk"])
async def test_async_write_invalidates_its_table_only(aenv: AEnv, kind: str):
    users = select(U.c.id, U.c.name).order_by(U.c.id)
    tags = select(T).order_by(T.c.id)
    await aenv.sread(users)
    await aenv.sread(tags)
    n_tags = aenv.calls(TAGS)
    if kind in ("core", "text"):
        async with aenv.engine.begin() as conn:
            if kind == "core":
                await conn.execute(update(U).where(U.c.id == 1).values(name="changed"))
            else:
                await conn.execute(text("UPDATE qc_users SET name = 'changed' WHERE id = 1"))
    else:
        async with aenv.session() as s:
            if kind == "orm_flush":
                (await s.get(User, 1)).name = "changed"
            else:
                await s.execute(update(User), [{"id": 1, "name": "changed"}])
            await s.commit()
    assert (await aenv.sread(users))[0] == (1, "changed")
    await aenv.sread(tags)
    assert aenv.calls(TAGS) == n_tags
    async with aenv.session() as s:
        assert (await s.get(User, 1)).name == "changed"


async def test_async_aclose(aenv: AEnv):
    stmt = select(U.c.name).where(U.c.id == 1)
    assert await aenv.sread(stmt) == [("user1",)]
    await aenv.cache.aclose()
    # after aclose the engine still answers correctly
    assert await aenv.sread(stmt) == [("user1",)]
    async with aenv.engine.begin() as conn:
        await conn.execute(update(U).where(U.c.id == 1).values(name="after close"))
    assert await aenv.sread(stmt) == [("after close",)]


async def test_async_plain_sessionmaker_over_wrapped_engine(aenv: AEnv):
    maker = async_sessionmaker(bind=aenv.engine, expire_on_commit=False)
    async with maker() as s:
        names = (await s.scalars(select(User.name).order_by(User.id))).all()
    assert names == [f"user{i}" for i in range(1, 6)]
    n = aenv.calls(USERS)
    async with maker() as s:
        assert (await s.scalars(select(User.name).order_by(User.id))).all() == names
    assert aenv.calls(USERS) == n
