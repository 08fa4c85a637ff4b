"""The read-through core on a sync engine, proven from the database side.

:class:`SyncCoreSuite` holds every test body; ``TestSqlite`` (here) runs it on
a SQLite file through pysqlite, ``TestPostgres`` (``test_core_postgres.py``)
on PostgreSQL through psycopg. Each hit is proven by the database's own
execution count (:mod:`dbcount`), never by querycache's counters; every
result is compared with the same query on a plain, unwrapped engine.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from dbcount import (
    Post,
    Tag,
    User,
    counter_for,
    db_url,
    seed,
)
from sqlalchemy import (
    bindparam,
    create_engine,
    delete,
    insert,
    inspect,
    literal_column,
    select,
    text,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, joinedload, selectinload, sessionmaker

from querycache import QueryCache

U = User.__table__
P = Post.__table__
T = Tag.__table__

USERS = "from qc_users"
POSTS = "from qc_posts"
TAGS = "from qc_tags"


@dataclass
class Env:
    """One fresh database with the cache wrapped around one of two engines."""

    url: str
    cache: QueryCache
    engine: Engine  # wrapped
    plain: Engine  # never wrapped: the truth
    counter: Any
    Session: sessionmaker[Session]

    def calls(self, fragment: str) -> int:
        """Database-side executions of statements containing ``fragment``."""
        return self.counter.count(fragment)

    def read(self, stmt: Any, params: Any = None, engine: Engine | None = None) -> list[Any]:
        """Run ``stmt`` on its own connection and return its rows as tuples."""
        with (engine or self.engine).connect() as conn:
            return [tuple(r) for r in conn.execute(stmt, params)]

    def truth(self, stmt: Any, params: Any = None) -> list[Any]:
        return self.read(stmt, params, engine=self.plain)


def typed(rows: list[Any]) -> list[Any]:
    """Rows with each value's exact type and repr (tz, Decimal exponent, JSON order)."""
    return [tuple((type(v).__name__, repr(v)) for v in row) for row in rows]


def obj_state(obj: Any) -> tuple[Any, ...]:
    cols = [c.key for c in inspect(type(obj)).column_attrs]
    return tuple((c, type(getattr(obj, c)).__name__, repr(getattr(obj, c))) for c in cols)


# -- writes through the wrapped engine, one per kind ------------------------------------


def w_core_insert(env: Env) -> None:
    with env.engine.begin() as conn:
        conn.execute(insert(U).values(**_new_user(90)))


def w_core_update(env: Env) -> None:
    with env.engine.begin() as conn:
        conn.execute(update(U).where(U.c.id == 1).values(name="changed"))


def w_core_delete(env: Env) -> None:
    with env.engine.begin() as conn:
        conn.execute(delete(P).where(P.c.user_id == 5))
        conn.execute(delete(U).where(U.c.id == 5))


def w_text_dml(env: Env) -> None:
    with env.engine.begin() as conn:
        conn.execute(text("UPDATE qc_users SET name = :n WHERE id = :i"), {"n": "changed", "i": 1})


def w_driver_sql(env: Env) -> None:
    with env.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE qc_users SET name = 'changed' WHERE id = 1")


def w_executemany(env: Env) -> None:
    with env.engine.begin() as conn:
        conn.execute(
            text("UPDATE qc_users SET name = :n WHERE id = :i"),
            [{"n": "changed", "i": 1}, {"n": "changed too", "i": 2}],
        )


def w_core_insert_many(env: Env) -> None:
    with env.engine.begin() as conn:
        conn.execute(insert(U), [_new_user(90), _new_user(91)])


def w_orm_flush(env: Env) -> None:
    with env.Session() as s:
        s.get(User, 1).name = "changed"
        s.add(User(**_new_user(90)))
        s.commit()


def w_orm_bulk_insert(env: Env) -> None:
    with env.Session() as s:
        s.execute(insert(User), [_new_user(90), _new_user(91)])
        s.commit()


def w_orm_bulk_update(env: Env) -> None:
    with env.Session() as s:
        s.execute(update(User), [{"id": 1, "name": "changed"}, {"id": 2, "name": "changed too"}])
        s.commit()


def w_plain_session_flush(env: Env) -> None:
    with Session(bind=env.engine) as s:
        s.get(User, 1).name = "changed"
        s.commit()


def _new_user(i: int) -> dict[str, Any]:
    from dbcount import user_row

    row = user_row(1)
    row.update(id=i, name=f"new{i}")
    return row


WRITES: dict[str, Callable[[Env], None]] = {
    "core_insert": w_core_insert,
    "core_insert_many": w_core_insert_many,
    "core_update": w_core_update,
    "core_delete": w_core_delete,
    "text_dml": w_text_dml,
    "exec_driver_sql": w_driver_sql,
    "executemany": w_executemany,
    "orm_flush": w_orm_flush,
    "plain_session_flush": w_plain_session_flush,
    "orm_bulk_insert": w_orm_bulk_insert,
    "orm_bulk_update": w_orm_bulk_update,
}


class SyncCoreSuite:
    """Every sync test body; subclasses set ``driver``."""

    driver = "pysqlite"

    @pytest.fixture
    def env(self, request, tmp_path) -> Iterator[Env]:
        url = db_url(self.driver, request, tmp_path)
        seed(url)
        cache = QueryCache()
        engine = create_engine(url)
        counter = counter_for(engine)  # before the engine's first connection
        assert cache.wrap(engine) is engine
        plain = create_engine(url)
        env = Env(url, cache, engine, plain, counter, cache.sessionmaker(bind=engine))
        yield env
        engine.dispose()
        plain.dispose()
        counter.close()
        cache.close()

    # -- 1. served from cache ------------------------------------------------------------

    def test_core_select_is_served_from_cache(self, env: Env):
        stmt = select(U).where(U.c.id == 2)
        truth = env.truth(stmt)
        n0 = env.calls(USERS)
        first = env.read(stmt)
        assert env.calls(USERS) == n0 + 1
        again = [env.read(stmt) for _ in range(3)]
        assert env.calls(USERS) == n0 + 1
        assert typed(first) == typed(truth)
        assert all(typed(r) == typed(truth) for r in again)

    def test_text_is_served_from_cache(self, env: Env):
        stmt = text("SELECT id, name, score FROM qc_users WHERE id = :id")
        truth = env.truth(stmt, {"id": 3})
        n0 = env.calls(USERS)
        rows = [env.read(stmt, {"id": 3}) for _ in range(4)]
        assert env.calls(USERS) == n0 + 1
        assert all(typed(r) == typed(truth) for r in rows)
        # another parameter value is another entry
        assert env.read(stmt, {"id": 4}) == env.truth(stmt, {"id": 4})

    def test_exec_driver_sql_is_served_from_cache(self, env: Env):
        mark = "?" if env.engine.dialect.paramstyle == "qmark" else "%s"
        sql = f"SELECT id, name FROM qc_users WHERE id = {mark}"
        literal = "SELECT id, name FROM qc_users WHERE id = 4"

        def run(engine: Engine) -> tuple[list[Any], list[Any]]:
            with engine.connect() as conn:
                a = [tuple(r) for r in conn.exec_driver_sql(sql, (3,))]
                b = [tuple(r) for r in conn.exec_driver_sql(literal)]
            return a, b

        truth = run(env.plain)
        n0 = env.calls(USERS)
        results = [run(env.engine) for _ in range(3)]
        assert env.calls(USERS) == n0 + 2
        assert all(r == truth for r in results)
        assert truth == ([(3, "user3")], [(4, "user4")])

    @pytest.mark.parametrize("how", ["cache.sessionmaker", "Session(bind=engine)"])
    def test_orm_execute_scalars_get_are_served_from_cache(self, env: Env, how: str):
        def make() -> Session:
            return env.Session() if how == "cache.sessionmaker" else Session(bind=env.engine)

        def run(s: Session) -> Any:
            one = s.execute(select(User).where(User.id == 1)).scalar_one()
            many = s.scalars(select(User).order_by(User.id)).all()
            got = s.get(User, 2)
            cols = s.execute(select(User.name, User.score).where(User.id == 3)).all()
            return obj_state(one), [obj_state(u) for u in many], obj_state(got), list(cols)

        with Session(bind=env.plain) as s:
            truth = run(s)
        n0 = env.calls(USERS)
        with make() as s:
            assert run(s) == truth
        n1 = env.calls(USERS)
        assert n1 > n0
        for _ in range(3):
            with make() as s:
                assert run(s) == truth
        assert env.calls(USERS) == n1

    @pytest.mark.parametrize("loader", ["lazy", "selectinload", "joinedload"])
    @pytest.mark.parametrize("how", ["cache.sessionmaker", "Session(bind=engine)"])
    def test_relationship_loading_is_served_from_cache(self, env: Env, loader: str, how: str):
        def make(engine: Engine) -> Session:
            if engine is env.engine and how == "cache.sessionmaker":
                return env.Session()
            return Session(bind=engine)

        def run(engine: Engine) -> Any:
            with make(engine) as s:
                stmt = select(User).order_by(User.id)
                if loader == "selectinload":
                    stmt = stmt.options(selectinload(User.posts))
                elif loader == "joinedload":
                    stmt = stmt.options(joinedload(User.posts))
                users = s.scalars(stmt).unique().all()
                out = [(u.id, [(p.id, p.title) for p in u.posts]) for u in users]
                # many-to-one back: from the identity map or a lazy load
                out.append([p.user.name for p in users[0].posts])
                return out

        truth = run(env.plain)
        n_users, n_posts = env.calls(USERS), env.calls(POSTS)
        assert run(env.engine) == truth
        u1, p1 = env.calls(USERS), env.calls(POSTS)
        assert (u1, p1) != (n_users, n_posts)
        for _ in range(3):
            assert run(env.engine) == truth
        assert (env.calls(USERS), env.calls(POSTS)) == (u1, p1)

    # -- 2. indistinguishable results ----------------------------------------------------

    @pytest.mark.parametrize(
        "stmt",
        [
            select(U).order_by(U.c.id),
            text("SELECT * FROM qc_users ORDER BY id"),
            select(U.c.id, U.c.score, U.c.born, U.c.seen, U.c.uid, U.c.data, U.c.active).where(
                U.c.id.in_([1, 2, 3])
            ),
            select(User.data["n"].as_integer().label("n"), User.uid.label("u")).order_by(User.id),
        ],
        ids=["table", "text", "columns", "json_path"],
    )
    def test_rows_keys_and_types_match_uncached(self, env: Env, stmt: Any):
        with env.plain.connect() as conn:
            r = conn.execute(stmt)
            truth_keys, truth = list(r.keys()), [tuple(x) for x in r]
        for _ in range(2):  # a miss, then a hit
            with env.engine.connect() as conn:
                r = conn.execute(stmt)
                keys, rows = list(r.keys()), [tuple(x) for x in r]
            assert keys == truth_keys
            assert typed(rows) == typed(truth)

    def test_result_methods_on_a_hit(self, env: Env):
        stmt = select(U.c.id, U.c.name, U.c.score).order_by(U.c.id)
        one = select(U.c.name).where(U.c.id == 1)

        def run(engine: Engine) -> dict[str, Any]:
            out: dict[str, Any] = {}
            with engine.connect() as conn:
                out["scalars"] = conn.execute(stmt).scalars().all()
                out["scalars_col"] = conn.execute(stmt).scalars("name").all()
                out["mappings"] = [dict(m) for m in conn.execute(stmt).mappings()]
                out["one"] = tuple(conn.execute(one).one())
                out["scalar_one"] = conn.execute(one).scalar_one()
                out["first"] = tuple(conn.execute(stmt).first())
                out["partitions"] = [
                    [tuple(r) for r in part] for part in conn.execute(stmt).partitions(2)
                ]
                out["yield_per"] = [
                    [tuple(r) for r in part]
                    for part in conn.execute(stmt.execution_options(yield_per=2)).partitions()
                ]
                out["unique"] = [
                    tuple(r) for r in conn.execute(select(U.c.active).order_by(U.c.id)).unique()
                ]
                out["columns"] = [tuple(r) for r in conn.execute(stmt).columns("name", "id")]
                out["fetchmany"] = [tuple(r) for r in conn.execute(stmt).fetchmany(3)]
                out["tuples"] = conn.execute(stmt).tuples().all()
                out["keys"] = list(conn.execute(stmt).keys())
            return out

        truth = run(env.plain)
        assert run(env.engine) == truth  # misses
        n = env.calls(USERS)
        assert run(env.engine) == truth  # hits
        assert env.calls(USERS) == n

    def test_mutating_a_core_result_value_does_not_change_the_cache(self, env: Env, request):
        """Uncached, every execution builds new objects; cached must not share mutable ones."""
        stmt = select(U.c.data).where(U.c.id == 2)
        truth = env.truth(stmt)[0][0]
        for _ in range(3):  # miss, hit, hit
            with env.engine.connect() as conn:
                data = conn.execute(stmt).scalar_one()
            assert data == truth
            data["n"] = "mutated"
            data["tags"].append("mutated")

    def test_mutating_an_orm_attribute_does_not_change_the_cache(self, env: Env):
        stmt = select(User).where(User.id == 2)
        truth = env.truth(select(U.c.data).where(U.c.id == 2))[0][0]
        for label in ("miss", "hit", "hit again"):
            with env.Session() as s:
                u = s.scalars(stmt).one()
                assert u.data == truth, label
                u.data["n"] = f"mutated on {label}"  # plain JSON: not tracked, never flushed
                u.data["tags"].append("x")

    def test_orm_result_methods_on_a_hit(self, env: Env):
        ent = select(User).where(User.id <= 3).order_by(User.id)
        cols = select(User.id, User.name).where(User.id <= 3).order_by(User.id)
        both = select(User, User.name).where(User.id <= 2).order_by(User.id)

        def run(s: Session) -> dict[str, Any]:
            out: dict[str, Any] = {}
            r = s.execute(ent)
            out["keys"] = list(r.keys())
            rows = r.all()
            out["attr"] = [row.User.id for row in rows]
            out["mapping_by_name"] = [row._mapping["User"].id for row in rows]
            out["scalars"] = [u.id for u in s.scalars(ent)]
            out["first"] = s.execute(ent).scalars().first().id
            out["one_or_none"] = s.execute(ent.where(User.id == 2)).scalar_one_or_none().id
            out["parts"] = [[u.id for u in p] for p in s.execute(ent).scalars().partitions(2)]
            out["yield_per"] = [u.id for u in s.scalars(ent.execution_options(yield_per=1))]
            r = s.execute(cols)
            out["col_keys"] = list(r.keys())
            rows = r.all()
            out["col_rows"] = [tuple(x) for x in rows]
            out["col_attr"] = [(x.id, x.name) for x in rows]
            out["col_mapping_by_name"] = [dict(m) for m in s.execute(cols).mappings()]
            out["columns"] = [tuple(x) for x in s.execute(cols).columns("name")]
            out["unique"] = s.execute(select(User.active).order_by(User.id)).unique().all()
            out["both"] = [(u.id, n) for u, n in s.execute(both)]
            out["frozen"] = [tuple(x) for x in s.execute(cols).freeze()().all()]
            return out

        with Session(bind=env.plain) as s:
            truth = run(s)
        with env.Session() as s:
            assert run(s) == truth  # misses
        n = env.calls(USERS)
        with env.Session() as s:
            assert run(s) == truth  # hits (the yield_per query may run again)
        assert env.calls(USERS) - n <= 1

    def test_orm_rows_keyed_by_entity_and_column_on_a_hit(self, env: Env):
        ent = select(User).where(User.id <= 2).order_by(User.id)
        cols = select(User.id, User.name).where(User.id <= 2).order_by(User.id)

        def run(s: Session) -> Any:
            return (
                [row._mapping[User].id for row in s.execute(ent)],
                [row._mapping[User.id] for row in s.execute(cols)],
                [m[User.name] for m in s.execute(cols).mappings()],
                [tuple(r) for r in s.execute(cols).columns(User.name, User.id)],
            )

        with Session(bind=env.plain) as s:
            truth = run(s)
        for _ in range(3):
            with env.Session() as s:
                assert run(s) == truth

    # -- ORM identity and session semantics ---------------------------------------------

    def test_cached_select_returns_the_object_the_session_holds(self, env: Env):
        stmt = select(User).where(User.id == 1)
        listing = select(User).where(User.id.in_([1, 2])).order_by(User.id)
        with env.Session() as s:  # warm the cache
            s.execute(stmt).scalar_one()
            s.scalars(listing).all()
        n = env.calls(USERS)  # (counted once every connection is back in the pool)
        with env.Session() as s:
            held = s.get(User, 1)  # its own SQL: may miss once
            again = s.execute(stmt).scalar_one()
            listed = s.scalars(listing).all()
            assert again is held
            assert listed[0] is held
            assert [u.id for u in listed] == [1, 2]
        n2 = env.calls(USERS)
        assert n2 <= n + 1
        with env.Session() as s:
            held = s.get(User, 1)
            assert s.execute(stmt).scalar_one() is held
            assert s.scalars(listing).all()[0] is held
        assert env.calls(USERS) == n2

    def test_pending_change_is_flushed_and_seen_with_autoflush(self, env: Env):
        stmt = select(User).where(User.name == "renamed")
        by_id = select(User).where(User.id == 1)
        with env.Session() as s:  # warm both entries
            assert s.scalars(stmt).all() == []
            s.execute(by_id).scalar_one()
        with env.Session() as s:
            u = s.execute(by_id).scalar_one()
            u.name = "renamed"
            found = s.scalars(stmt).all()
            assert found == [u]
            assert s.execute(select(User.name).where(User.id == 1)).scalar_one() == "renamed"
            s.rollback()
        # the rollback left the database (and the cache) as they were
        with env.Session() as s:
            assert s.scalars(stmt).all() == []
            assert s.execute(by_id).scalar_one().name == "user1"

    def test_modified_object_is_not_overwritten_without_autoflush(self, env: Env):
        by_id = select(User).where(User.id == 1)
        with env.Session() as s:
            s.execute(by_id).scalar_one()  # warm
        with env.Session(autoflush=False) as s:
            u = s.execute(by_id).scalar_one()
            u.name = "local edit"
            u.score = u.score + 1
            again = s.execute(by_id).scalar_one()
            assert again is u
            assert u.name == "local edit"
            assert u in s.dirty
            s.rollback()

    def test_expired_attributes_are_refreshed(self, env: Env):
        by_id = select(User).where(User.id == 2)
        with env.Session() as s:
            u = s.execute(by_id).scalar_one()
            assert u.name == "user2"
            # a committed write through another engine-connection of the cache
            with env.engine.begin() as conn:
                conn.execute(update(U).where(U.c.id == 2).values(name="fresh"))
            s.expire(u)
            assert u.name == "fresh"
            s.expire(u, ["name"])
            assert u.name == "fresh"
            again = s.execute(by_id).scalar_one()
            assert again is u and again.name == "fresh"
        with env.Session() as s:
            assert s.execute(by_id).scalar_one().name == "fresh"

    def test_objects_from_a_hit_are_persistent_and_lazy_load(self, env: Env):
        stmt = select(User).order_by(User.id)
        with env.Session() as s:
            s.scalars(stmt).all()
        n = env.calls(USERS)
        with env.Session() as s:
            users = s.scalars(stmt).all()
            assert env.calls(USERS) == n  # a hit
            for u in users:
                st = inspect(u)
                assert st.persistent and st.session is s
                assert u in s
                assert s.identity_map.get(st.key) is u
            titles = [p.title for p in users[0].posts]
            assert titles == ["post 1.0", "post 1.1"]
            assert users[0].posts[0].user is users[0]
            # a hit's objects are ordinary: they can be changed and flushed
            users[1].name = "edited"
            s.commit()
        with env.Session() as s:
            assert s.get(User, 2).name == "edited"
        assert env.truth(select(U.c.name).where(U.c.id == 2)) == [("edited",)]

    # -- 3. keys -------------------------------------------------------------------------

    def test_parameter_types_are_part_of_the_key(self, env: Env):
        stmt = text("SELECT :v AS v")
        values = [1, "1", 1.0, True, 2, "2"]
        truth = [typed(env.truth(stmt, {"v": v})) for v in values]
        for order in (values, list(reversed(values)), values):
            got = {repr(v): typed(env.read(stmt, {"v": v})) for v in order}
            assert [got[repr(v)] for v in values] == truth

    def test_parameter_types_in_a_table_query(self, env: Env):
        # name = 1 vs name = '1' may differ by backend; whatever the database says, the
        # cache must say too
        with env.plain.begin() as conn:
            conn.execute(update(U).where(U.c.id == 1).values(name="1"))
        env.cache.invalidate("qc_users")
        stmt = text("SELECT id FROM qc_users WHERE id = :v ORDER BY id")
        for v in [1, "1", 1.0, True]:
            try:
                truth = env.truth(stmt, {"v": v})
            except Exception:
                continue
            assert env.read(stmt, {"v": v}) == truth
            assert env.read(stmt, {"v": v}) == truth

    # -- 4. invalidation -----------------------------------------------------------------

    @pytest.mark.parametrize("kind", list(WRITES))
    def test_write_invalidates_readers_of_its_table_only(self, env: Env, kind: str):
        users = select(U).order_by(U.c.id)
        tags = select(T).order_by(T.c.id)
        users_text = text("SELECT id, name FROM qc_users ORDER BY id")
        with env.Session() as s:
            s.scalars(select(User).order_by(User.id)).all()
        for stmt in (users, tags, users_text):
            env.read(stmt)
        n_users, n_tags = env.calls(USERS), env.calls(TAGS)
        WRITES[kind](env)
        # the tags reader never goes to the database again
        cached_tags = env.read(tags)
        assert env.calls(TAGS) == n_tags
        assert cached_tags == env.truth(tags)
        # the users readers do, and see the write
        assert env.read(users) == env.truth(users)
        assert env.read(users_text) == env.truth(users_text)
        with env.Session() as s:
            got = [obj_state(u) for u in s.scalars(select(User).order_by(User.id))]
        with Session(bind=env.plain) as s:
            assert got == [obj_state(u) for u in s.scalars(select(User).order_by(User.id))]
        assert env.calls(USERS) > n_users

    def test_drop_table_invalidates_its_readers(self, env: Env):
        with env.plain.begin() as conn:
            conn.execute(text("CREATE TABLE qc_scratch (id INTEGER PRIMARY KEY, v TEXT)"))
            conn.execute(text("INSERT INTO qc_scratch VALUES (1, 'a')"))
        stmt = text("SELECT id, v FROM qc_scratch")
        tags = select(T).order_by(T.c.id)
        assert env.read(stmt) == [(1, "a")]
        assert env.read(stmt) == [(1, "a")]
        env.read(tags)
        n_tags = env.calls(TAGS)
        with env.engine.begin() as conn:
            conn.execute(text("DROP TABLE qc_scratch"))
        with pytest.raises(Exception) as uncached:
            env.truth(stmt)
        with pytest.raises(type(uncached.value)):
            env.read(stmt)
        env.read(tags)
        assert env.calls(TAGS) == n_tags

    def test_alter_table_invalidates_its_readers(self, env: Env):
        stmt = text("SELECT * FROM qc_tags ORDER BY id")
        users = select(U.c.id).order_by(U.c.id)

        def keys(engine: Engine) -> list[str]:
            with engine.connect() as conn:
                return list(conn.execute(stmt).keys())

        assert keys(env.engine) == ["id", "label"]
        assert keys(env.engine) == ["id", "label"]
        env.read(users)
        n_users = env.calls(USERS)
        with env.engine.begin() as conn:
            conn.execute(text("ALTER TABLE qc_tags ADD COLUMN extra INTEGER"))
        assert keys(env.plain) == ["id", "label", "extra"]
        assert keys(env.engine) == ["id", "label", "extra"]
        env.read(users)
        assert env.calls(USERS) == n_users

    def test_create_index_leaves_other_tables_cached(self, env: Env):
        users = select(U).where(U.c.name == "user2")
        tags = select(T).order_by(T.c.id)
        env.read(users)
        env.read(tags)
        n_tags = env.calls(TAGS)
        with env.engine.begin() as conn:
            conn.execute(text("CREATE INDEX ix_qc_users_name ON qc_users (name)"))
        env.read(tags)
        assert env.calls(TAGS) == n_tags
        assert env.read(users) == env.truth(users)

    def test_two_engines_one_cache_share_invalidation(self, env: Env):
        other = env.cache.wrap(create_engine(env.url))
        try:
            stmt = select(U.c.name).where(U.c.id == 1)
            assert env.read(stmt, engine=other) == [("user1",)]
            assert env.read(stmt) == [("user1",)]
            n = env.calls(USERS)
            assert env.read(stmt, engine=other) == [("user1",)]
            assert env.read(stmt) == [("user1",)]
            assert env.calls(USERS) == n
            with env.engine.begin() as conn:
                conn.execute(update(U).where(U.c.id == 1).values(name="via A"))
            assert env.read(stmt, engine=other) == [("via A",)]
            with other.begin() as conn:
                conn.execute(update(U).where(U.c.id == 1).values(name="via B"))
            assert env.read(stmt) == [("via B",)]
            assert env.read(stmt, engine=other) == [("via B",)]
        finally:
            other.dispose()

    def test_bindparam_statement_reused_with_new_values(self, env: Env):
        stmt = select(U.c.name).where(U.c.id == bindparam("uid"))
        for i in (1, 2, 1, 3, 2):
            assert env.read(stmt, {"uid": i}) == [(f"user{i}",)]
        n = env.calls(USERS)
        for i in (1, 2, 3):
            env.read(stmt, {"uid": i})
        assert env.calls(USERS) == n

    def test_literal_and_bound_forms_do_not_collide(self, env: Env):
        a = select(U.c.name).where(U.c.id == 1)
        b = select(U.c.name).where(U.c.id == literal_column("1"))
        c = select(U.c.name).where(U.c.id == 2)
        assert env.read(a) == [("user1",)]
        assert env.read(b) == [("user1",)]
        assert env.read(c) == [("user2",)]
        assert env.read(a) == [("user1",)]


class TestSqlite(SyncCoreSuite):
    driver = "pysqlite"

    def test_attached_schema_translate_map_changes_the_key(self, tmp_path):
        """``schema_translate_map`` onto two ATTACHed SQLite databases."""
        from sqlalchemy import Column, Integer, MetaData, String, Table, event

        md = MetaData()
        notes = Table(
            "qc_notes", md, Column("id", Integer, primary_key=True), Column("v", String(20))
        )
        engine = create_engine(f"sqlite:///{tmp_path / 'main.sqlite'}")

        @event.listens_for(engine, "connect")
        def attach(dbapi_conn: Any, record: Any) -> None:
            for name in ("sa", "sb"):
                dbapi_conn.execute(f"ATTACH DATABASE '{tmp_path / name}.sqlite' AS {name}")

        with engine.begin() as conn:
            for name in ("sa", "sb"):
                m = conn.execution_options(schema_translate_map={None: name})
                md.create_all(m)
                m.execute(notes.insert(), [{"id": 1, "v": f"from {name}"}])
        cache = QueryCache()
        cache.wrap(engine)
        stmt = select(notes.c.v)
        try:
            for _ in range(2):
                for name in ("sa", "sb"):
                    eng = engine.execution_options(schema_translate_map={None: name})
                    with eng.connect() as conn:
                        assert conn.execute(stmt).all() == [(f"from {name}",)]
                    with Session(bind=eng) as s:
                        assert s.execute(stmt).all() == [(f"from {name}",)]
        finally:
            engine.dispose()


class SchemaEdgeSuite:
    """Writes the database makes on its own (cascades, triggers), connection-local
    tables and views: what a statement's text does not show."""

    driver = "pysqlite"

    @pytest.fixture
    def env(self, request, tmp_path) -> Iterator[Env]:
        url = db_url(self.driver, request, tmp_path)
        seed(url)
        cache = QueryCache()
        engine = create_engine(url)
        counter = counter_for(engine)
        plain = create_engine(url)
        if self.driver == "pysqlite":
            from sqlalchemy import event

            for e in (engine, plain):
                event.listen(e, "connect", _sqlite_fk_on)
        with plain.begin() as conn:  # before wrap: PostgreSQL discovers views at wrap
            conn.execute(text("CREATE VIEW qc_names AS SELECT id, name FROM qc_users"))
        cache.wrap(engine)
        yield Env(url, cache, engine, plain, counter, cache.sessionmaker(bind=engine))
        engine.dispose()
        plain.dispose()
        counter.close()
        cache.close()

    def test_on_delete_cascade_invalidates_the_child_table(self, env: Env):
        with env.plain.begin() as conn:
            conn.execute(text("CREATE TABLE qc_parent (id INTEGER PRIMARY KEY)"))
            conn.execute(
                text(
                    "CREATE TABLE qc_child (id INTEGER PRIMARY KEY, parent_id INTEGER "
                    "REFERENCES qc_parent (id) ON DELETE CASCADE)"
                )
            )
            conn.execute(text("INSERT INTO qc_parent VALUES (1), (2)"))
            conn.execute(text("INSERT INTO qc_child VALUES (10, 1), (20, 2)"))
        children = text("SELECT id FROM qc_child ORDER BY id")
        assert env.read(children) == [(10,), (20,)]
        assert env.read(children) == [(10,), (20,)]
        with env.engine.begin() as conn:
            conn.execute(text("DELETE FROM qc_parent WHERE id = 1"))
        assert env.truth(children) == [(20,)]
        assert env.read(children) == [(20,)]

    def test_trigger_writes_invalidate_their_table(self, env: Env):
        with env.plain.begin() as conn:
            conn.execute(text("CREATE TABLE qc_audit (user_id INTEGER, name TEXT)"))
            if self.driver == "pysqlite":
                conn.execute(
                    text(
                        "CREATE TRIGGER qc_users_audit AFTER UPDATE ON qc_users BEGIN "
                        "INSERT INTO qc_audit VALUES (new.id, new.name); END"
                    )
                )
            else:
                conn.execute(
                    text(
                        "CREATE FUNCTION qc_audit_fn() RETURNS trigger LANGUAGE plpgsql AS $$ "
                        "BEGIN INSERT INTO qc_audit VALUES (NEW.id, NEW.name); RETURN NEW; "
                        "END $$"
                    )
                )
                conn.execute(
                    text(
                        "CREATE TRIGGER qc_users_audit AFTER UPDATE ON qc_users "
                        "FOR EACH ROW EXECUTE FUNCTION qc_audit_fn()"
                    )
                )
        audit = text("SELECT user_id, name FROM qc_audit")
        assert env.read(audit) == []
        assert env.read(audit) == []
        with env.engine.begin() as conn:
            conn.execute(update(U).where(U.c.id == 1).values(name="audited"))
        assert env.truth(audit) == [(1, "audited")]
        assert env.read(audit) == [(1, "audited")]

    def test_temp_tables_are_private_to_their_connection(self, env: Env):
        read = text("SELECT v FROM qc_tmp")
        temp = "CREATE TEMPORARY TABLE qc_tmp (v VARCHAR(10))"
        with env.engine.connect() as c1, env.engine.connect() as c2:
            assert c1.connection.dbapi_connection is not c2.connection.dbapi_connection
            c1.exec_driver_sql(temp)
            c1.exec_driver_sql("INSERT INTO qc_tmp VALUES ('one')")
            c1.commit()
            assert c1.execute(read).all() == [("one",)]
            c2.exec_driver_sql(temp)
            c2.exec_driver_sql("INSERT INTO qc_tmp VALUES ('two')")
            c2.commit()
            for _ in range(2):
                assert c2.execute(read).all() == [("two",)]
                assert c1.execute(read).all() == [("one",)]

    def test_view_readers_see_base_table_writes(self, env: Env, request):
        stmt = text("SELECT name FROM qc_names WHERE id = 1")
        assert env.read(stmt) == [("user1",)]
        assert env.read(stmt) == [("user1",)]
        with env.engine.begin() as conn:
            conn.execute(update(U).where(U.c.id == 1).values(name="through view"))
        assert env.read(stmt) == [("through view",)]

    def test_upserts_invalidate(self, env: Env):
        stmt = select(T.c.label).where(T.c.id == 1)
        assert env.read(stmt) == [("tag1",)]
        with env.engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO qc_tags (id, label) VALUES (1, 'upserted') "
                    "ON CONFLICT (id) DO UPDATE SET label = excluded.label"
                )
            )
        assert env.read(stmt) == [("upserted",)]
        if self.driver == "pysqlite":
            with env.engine.begin() as conn:
                conn.execute(text("REPLACE INTO qc_tags (id, label) VALUES (1, 'replaced')"))
            assert env.read(stmt) == [("replaced",)]


def _sqlite_fk_on(dbapi_conn: Any, record: Any) -> None:
    dbapi_conn.execute("PRAGMA foreign_keys=ON")


class TestSqliteSchemaEdges(SchemaEdgeSuite):
    driver = "pysqlite"


def test_sqlite_uri_and_path_engines_share_invalidation(tmp_path):
    """A read-only URI engine and a path engine on one file are one database."""
    from dbcount import seed as seed_db

    path = tmp_path / "db.sqlite"
    url = f"sqlite:///{path}"
    seed_db(url)
    cache = QueryCache()
    writer = cache.wrap(create_engine(url))
    reader = cache.wrap(create_engine(f"sqlite:///file:{path}?mode=ro&uri=true"))
    stmt = select(U.c.name).where(U.c.id == 1)
    try:
        with reader.connect() as conn:
            assert conn.execute(stmt).all() == [("user1",)]
        with writer.begin() as conn:
            conn.execute(update(U).where(U.c.id == 1).values(name="written"))
        with reader.connect() as conn:
            assert conn.execute(stmt).all() == [("written",)]
    finally:
        writer.dispose()
        reader.dispose()
        cache.close()
