"""Transaction ends the cache must see besides ``do_commit``/``do_rollback``.

Installed by :func:`querycache.integration.engine.attach`: two-phase commit,
the failed state of a PostgreSQL transaction, and connections going back to
the pool (which ends their *raw* mark).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from querycache.integration.drivers import (
    clear_flag,
    set_flag,
    transaction_ended,
    transaction_failed,
)
from querycache.invalidation.transactions import STATE_KEY, state_of

if TYPE_CHECKING:
    from querycache.cache import QueryCache
    from querycache.integration.engine import EngineBinding

__all__ = ["attach_twophase", "checked_in", "clear_failed", "guarded", "info_of", "mark_failed"]


def info_of(fairy: Any) -> dict[str, Any] | None:
    """The pool record's ``info`` of ``fairy``, or None (first-connect probe)."""
    # the ad-hoc connection SQLAlchemy uses while first connecting has no info
    try:
        return fairy.info  # type: ignore[no-any-return]
    except NotImplementedError:
        return None


def mark_failed(fairy: Any) -> None:
    """After an error on PostgreSQL: mark an aborted transaction *failed*."""
    info = info_of(fairy) if fairy is not None else None
    if info is not None and transaction_failed(fairy):
        set_flag(info, "failed")


def clear_failed(fairy: Any) -> None:
    """After ``ROLLBACK TO SAVEPOINT``: the transaction works again."""
    clear_flag(info_of(fairy) if fairy is not None else None, "failed")


def checked_in(info: dict[str, Any]) -> None:
    """A connection back in the pool: its transaction and its raw mark are over."""
    transaction_ended(info)
    clear_flag(info, "raw")


def attach_twophase(core: QueryCache, binding: EngineBinding, dialect: Any) -> None:
    """Two-phase commits bypass ``do_commit`` (psycopg's ``tpc_commit``, or
    ``COMMIT PREPARED`` followed by a rollback): wrap them too.

    ``PREPARE TRANSACTION`` detaches the transaction from its connection, so
    its pending writes move to ``prepared[xid]``; committing the xid applies
    them, rolling it back drops them. A recovered xid this process did not
    prepare may have written anything: its commit invalidates the scope.
    """
    prepared: dict[str, tuple[set[str], bool, bool]] = {}
    original_prepare = dialect.do_prepare_twophase
    original_commit = dialect.do_commit_twophase
    original_rollback = dialect.do_rollback_twophase

    def do_prepare_twophase(connection: Any, xid: Any) -> None:
        original_prepare(connection, xid)
        info = info_of(connection._dbapi_connection)
        state = info.get(STATE_KEY) if info is not None else None
        if state is not None:
            written, everything = state.take_writes()
            prepared[str(xid)] = (written, everything, state.ddl)
            state.ddl = False
        else:
            prepared[str(xid)] = (set(), False, False)

    def do_commit_twophase(
        connection: Any, xid: Any, is_prepared: bool = True, recover: bool = False
    ) -> None:
        fairy = connection._dbapi_connection
        try:
            original_commit(connection, xid, is_prepared=is_prepared, recover=recover)
        finally:  # also when it raised: it may have committed
            guarded(core, "commit", _finish, (fairy, str(xid), is_prepared, recover, True))

    def do_rollback_twophase(
        connection: Any, xid: Any, is_prepared: bool = True, recover: bool = False
    ) -> None:
        fairy = connection._dbapi_connection
        try:
            original_rollback(connection, xid, is_prepared=is_prepared, recover=recover)
        finally:
            guarded(core, "rollback", _finish, (fairy, str(xid), is_prepared, recover, False))

    def _finish(args: tuple[Any, str, bool, bool, bool]) -> None:
        fairy, xid, is_prepared, recover, committed = args
        writes = prepared.pop(xid, None)
        if committed:
            if writes is None and is_prepared and recover:
                writes = (set(), True, True)  # prepared elsewhere: unknown writes
            if writes is not None:
                info = info_of(fairy) if fairy is not None else None
                if info is not None:  # hand them back so one commit applies all
                    written, everything, ddl = writes
                    state = state_of(info)
                    state.everything = state.everything or everything
                    state.written |= written
                    state.ddl = state.ddl or ddl
                else:
                    core.invalidate_scope(binding.scope, None, binding.is_async)
            binding.apply_pending(fairy)
        else:
            binding.drop_pending(fairy)
        transaction_ended(info_of(fairy) if fairy is not None else None)

    dialect.do_prepare_twophase = do_prepare_twophase
    dialect.do_commit_twophase = do_commit_twophase
    dialect.do_rollback_twophase = do_rollback_twophase


def guarded(core: QueryCache, where: str, fn: Any, arg: Any) -> None:
    """``fn(arg)``; a failure is the cache's, counted and logged, never raised."""
    try:
        fn(arg)
    except Exception as exc:
        core.failed(where, exc)
