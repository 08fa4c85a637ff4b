"""Generate ``orm.json``: SQL exactly as SQLAlchemy's ORM and Core send it to drivers.

Run ``.venv/bin/python -m tests.analysis_corpus.generate_orm`` (or execute this
file) to rewrite ``orm.json``; ``tests/test_analysis.py`` regenerates the data
in memory and fails if the committed file is stale.

The workload runs for real on an in-memory SQLite database; every statement is
captured twice: the string the ``sqlite3`` driver receives (``?`` paramstyle),
and the same construct compiled for ``postgresql+psycopg`` (``%(name)s``) and
``postgresql+asyncpg`` (``$1``) with expanding parameters rendered as those
drivers receive them. The expected tables come from SQLAlchemy itself, by
recording which tables its compiler renders, so they do not depend on the
analyser under test.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    ForeignKey,
    Integer,
    String,
    Table,
    create_engine,
    delete,
    event,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import asyncpg as pg_asyncpg
from sqlalchemy.dialects.postgresql import psycopg as pg_psycopg
from sqlalchemy.dialects.sqlite import pysqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    joinedload,
    mapped_column,
    relationship,
    selectinload,
    subqueryload,
)
from sqlalchemy.sql import elements

OUT = Path(__file__).with_name("orm.json")


class Base(DeclarativeBase):
    pass


user_keywords = Table(
    "user_keywords",
    Base.metadata,
    Column("user_id", ForeignKey("users.id"), primary_key=True),
    Column("keyword_id", ForeignKey("keywords.id"), primary_key=True),
)


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    email: Mapped[str | None] = mapped_column(String(100))
    addresses: Mapped[list[Address]] = relationship(
        back_populates="user", cascade="all, delete-orphan", order_by="Address.id"
    )
    keywords: Mapped[list[Keyword]] = relationship(secondary=user_keywords)


class Address(Base):
    __tablename__ = "addresses"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    email: Mapped[str] = mapped_column(String(100))
    user: Mapped[User] = relationship(back_populates="addresses")


class Keyword(Base):
    __tablename__ = "keywords"
    id: Mapped[int] = mapped_column(primary_key=True)
    word: Mapped[str] = mapped_column(String(30), unique=True)


class Document(Base):
    __tablename__ = "documents"
    id: Mapped[int] = mapped_column(primary_key=True)
    data: Mapped[dict[str, Any]] = mapped_column(JSON)


class Employee(Base):
    __tablename__ = "employees"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    type: Mapped[str] = mapped_column(String(20))
    __mapper_args__ = {"polymorphic_on": "type", "polymorphic_identity": "employee"}


class Engineer(Employee):
    __tablename__ = "engineers"
    id: Mapped[int] = mapped_column(ForeignKey("employees.id"), primary_key=True)
    language: Mapped[str] = mapped_column(String(30))
    __mapper_args__ = {"polymorphic_identity": "engineer"}


class Manager(Employee):
    __tablename__ = "managers"
    id: Mapped[int] = mapped_column(ForeignKey("employees.id"), primary_key=True)
    budget: Mapped[int] = mapped_column(Integer)
    __mapper_args__ = {"polymorphic_identity": "manager"}


# -- the oracle: which tables SQLAlchemy's compiler renders -----------------------


def _recording(dialect: Dialect) -> Dialect:
    """A copy of ``dialect`` whose compiler records the tables it renders."""
    base = dialect.statement_compiler

    class Recording(base):  # type: ignore[misc, valid-type]
        def __init__(self, *a: Any, **kw: Any) -> None:
            self.read_tables: set[str] = set()
            self.crud_tables: set[str] = set()
            super().__init__(*a, **kw)

        def visit_table(self, table: Any, *a: Any, iscrud: bool = False, **kw: Any) -> str:
            (self.crud_tables if iscrud else self.read_tables).add(table.name)
            return super().visit_table(table, *a, iscrud=iscrud, **kw)

    dialect.statement_compiler = Recording
    return dialect


DIALECTS: dict[str, Callable[[], Dialect]] = {
    "sqlite": pysqlite.dialect,
    "psycopg": pg_psycopg.dialect,
    "asyncpg": pg_asyncpg.dialect,
}


def _expected(compiled: Any, element: Any) -> dict[str, Any]:
    for cls, op in (
        (elements.SavepointClause, "savepoint"),
        (elements.RollbackToSavepointClause, "rollback_to"),
        (elements.ReleaseSavepointClause, "release"),
    ):
        if isinstance(element, cls):
            return {
                "kind": "transaction",
                "transaction_op": op,
                "tables_read": [],
                "tables_written": [],
                "cacheable": False,
            }
    reads = set(compiled.read_tables)
    if compiled.isinsert or compiled.isupdate or compiled.isdelete:
        target = compiled.compile_state.statement.table.name
        written = {target} | set(compiled.crud_tables)
        return {
            "kind": "write",
            "tables_read": sorted(reads - written),
            "tables_written": sorted(written),
            "cacheable": False,
        }
    return {"kind": "read", "tables_read": sorted(reads), "tables_written": [], "cacheable": True}


# -- the workload --------------------------------------------------------------------


def _seed(session: Session) -> None:
    kw = [Keyword(word="red"), Keyword(word="blue")]
    session.add_all(
        [
            User(
                name="ann",
                email="ann@x",
                addresses=[Address(email="a1"), Address(email="a2")],
                keywords=kw,
            ),
            User(name="bob", addresses=[Address(email="b1")], keywords=kw[:1]),
            User(name="cy"),
            Document(data={"a": "x", "n": 1}),
            Engineer(name="eve", language="py"),
            Manager(name="max", budget=10),
        ]
    )
    session.commit()


def _session_get(s: Session) -> None:
    s.get(User, 1)


def _selectinload(s: Session) -> None:
    s.scalars(select(User).options(selectinload(User.addresses))).all()


def _joinedload(s: Session) -> None:
    s.scalars(select(User).options(joinedload(User.addresses)).order_by(User.id)).unique().all()


def _subqueryload(s: Session) -> None:
    s.scalars(select(User).options(subqueryload(User.addresses)).limit(2)).all()


def _lazy_loads(s: Session) -> None:
    address = s.scalars(select(Address).where(Address.email == "a1")).one()
    _ = address.user.keywords


def _joined_inheritance(s: Session) -> None:
    s.scalars(select(Employee).order_by(Employee.id)).all()
    s.scalars(select(Engineer).where(Engineer.language == "py")).all()
    s.add(Engineer(name="fay", language="rust"))
    s.flush()
    eng = s.scalars(select(Engineer).where(Engineer.name == "fay")).one()
    eng.language = "go"
    eng.name = "faye"
    s.flush()
    s.delete(eng)
    s.flush()


def _bulk_insert_values(s: Session) -> None:
    s.execute(insert(Keyword).values([{"word": "w1"}, {"word": "w2"}, {"word": "w3"}]))


def _insert_returning(s: Session) -> None:
    s.execute(insert(User).values(name="dee", email="d@x").returning(User.id, User.name))


def _orm_flush_many(s: Session) -> None:
    s.add_all([User(name=f"u{i}", email=None) for i in range(3)])
    s.flush()


def _orm_update_delete(s: Session) -> None:
    s.execute(update(User).where(User.name == "cy").values(email="cy@x"))
    s.execute(delete(Address).where(Address.email.in_(["zz", "yy"])))
    user = s.get(User, 2)
    s.delete(user)
    s.flush()


def _queries(s: Session) -> None:
    s.scalars(
        select(User).where(User.id.in_([1, 2, 3])).order_by(User.id).limit(10).offset(5)
    ).all()
    s.execute(select(func.count()).select_from(User)).scalar()
    s.execute(
        select(User.name, func.count(Address.id))
        .join(User.addresses)
        .group_by(User.name)
        .having(func.count(Address.id) > 1)
    ).all()
    s.scalars(select(User).where(User.addresses.any(Address.email.like("%a%")))).all()
    s.execute(select(User.id, func.row_number().over(order_by=User.name))).all()
    s.execute(select(func.lower(User.name), func.coalesce(User.email, "none"))).all()
    s.scalars(select(Document).where(Document.data["a"].as_string() == "x")).all()
    sub = select(Address.user_id, func.count().label("n")).group_by(Address.user_id).subquery()
    s.execute(select(User.name, sub.c.n).join(sub, sub.c.user_id == User.id)).all()
    cte = select(User.id).where(User.name.startswith("a")).cte("a_users")
    s.execute(select(Address).where(Address.user_id.in_(select(cte.c.id)))).all()


def _savepoints(s: Session) -> None:
    with s.begin_nested():
        s.add(Keyword(word="nested"))
    nested = s.begin_nested()
    s.add(Keyword(word="gone"))
    s.flush()
    nested.rollback()


SCENARIOS: list[tuple[str, Callable[[Session], None]]] = [
    ("session_get", _session_get),
    ("selectinload", _selectinload),
    ("joinedload", _joinedload),
    ("subqueryload", _subqueryload),
    ("lazy_loads", _lazy_loads),
    ("joined_inheritance", _joined_inheritance),
    ("bulk_insert_values", _bulk_insert_values),
    ("insert_returning", _insert_returning),
    ("orm_flush_many", _orm_flush_many),
    ("orm_update_delete", _orm_update_delete),
    ("queries", _queries),
    ("savepoints", _savepoints),
]


def _capture(scenario: Callable[[Session], None]) -> list[tuple[Any, dict[str, Any], str]]:
    """Run ``scenario`` on a fresh seeded database; ``(element, params, sqlite_sql)``."""
    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    with Session(engine) as s:
        _seed(s)
    captured: list[tuple[Any, dict[str, Any], str]] = []
    current: list[tuple[Any, dict[str, Any]]] = []

    @event.listens_for(engine, "before_execute")
    def _element(conn: Any, element: Any, multiparams: Any, params: Any, opts: Any) -> None:
        merged = dict(params or {})
        if multiparams:
            first = multiparams[0]
            merged.update(first[0] if isinstance(first, (list, tuple)) and first else first)
        current[:] = [(element, merged)]

    @event.listens_for(engine, "before_cursor_execute")
    def _cursor(conn: Any, cursor: Any, statement: str, *rest: Any) -> None:
        if current:
            element, params = current[0]
            captured.append((element, params, statement))

    with Session(engine) as s:
        s.expunge_all()
        scenario(s)
        s.rollback()
    engine.dispose()
    return captured


def _rows_for(name: str, element: Any, params: dict[str, Any], sqlite_sql: str) -> Iterator[dict]:
    for driver, make in DIALECTS.items():
        dialect = _recording(make())
        compiled = element.compile(dialect=dialect, column_keys=sorted(params))
        expected = _expected(compiled, element)
        if driver == "sqlite":
            sql = sqlite_sql
        else:
            sql = compiled.construct_expanded_state(params).statement
        yield {
            "scenario": name,
            "driver": driver,
            "dialect": "sqlite" if driver == "sqlite" else "postgresql",
            "sql": sql,
            **expected,
        }


def _on_conflict() -> Iterator[dict]:
    """``on_conflict_do_update`` needs each dialect's own ``insert()``."""
    for driver, make in DIALECTS.items():
        mod = sqlite if driver == "sqlite" else postgresql
        stmt = mod.insert(User).values(id=1, name="ann", email="a@x")
        stmt = stmt.on_conflict_do_update(
            index_elements=[User.id], set_={"name": stmt.excluded.name, "email": "z"}
        )
        dialect = _recording(make())
        compiled = stmt.compile(dialect=dialect)
        yield {
            "scenario": "on_conflict_do_update",
            "driver": driver,
            "dialect": "sqlite" if driver == "sqlite" else "postgresql",
            "sql": compiled.construct_expanded_state().statement,
            **_expected(compiled, stmt),
        }


def generate() -> list[dict[str, Any]]:
    """Every captured statement with its expected analysis, deduplicated, in order."""
    rows: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    for name, scenario in SCENARIOS:
        for element, params, sqlite_sql in _capture(scenario):
            for row in _rows_for(name, element, params, sqlite_sql):
                key = (row["driver"], row["sql"])
                if key not in seen:
                    seen.add(key)
                    rows.append(row)
    rows.extend(_on_conflict())
    return rows


def render(rows: list[dict[str, Any]]) -> str:
    """The exact text of ``orm.json`` for ``rows``."""
    return json.dumps(rows, indent=1, ensure_ascii=False) + "\n"


def main() -> int:
    OUT.write_text(render(generate()), encoding="utf-8")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
