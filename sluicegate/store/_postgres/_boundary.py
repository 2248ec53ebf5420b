"""The ``psycopg`` boundary: its exceptions translated (:func:`_guarded`, the one place), the
writer's connection (replaced once it broke), the pool of the others, and the settings of every
connection. The only module of the package that imports ``psycopg`` (:mod:`._store` imports it
when a store opens, so ``sluicegate.store`` imports without the driver installed)."""

from __future__ import annotations

import contextlib
import logging
import select
from typing import TYPE_CHECKING, Any, Final, ParamSpec, TypeVar

import attrs
import orjson
import psycopg
import psycopg_pool

from ...errors import StoreError, StoreIntegrityError, StoreUnavailableError
from .._sql._jobs import _PutKeyJob, _PutObjectJob
from ._schema import _migrate

if TYPE_CHECKING:
    from collections.abc import Callable

    from .._sql._jobs import _Job

_T = TypeVar("_T")
_P = ParamSpec("_P")

logger = logging.getLogger("sluicegate")

#: Seconds to connect before giving up (libpq's ``connect_timeout``, 2 at least), and the most
#: a read waits for a pool connection: a database that is down fails a request in seconds.
_CONNECT_TIMEOUT: Final = 5
#: Every connection: autocommit (transactions are begun and ended by the statements that need
#: them), and TCP keepalives and a user timeout, so a connection to a server that vanished
#: without closing it (a network partition, a machine gone) fails in seconds, not hours.
_PARAMS: Final[dict[str, Any]] = {
    "autocommit": True,
    "connect_timeout": _CONNECT_TIMEOUT,
    "application_name": "sluicegate",
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 20_000,
}
#: Set on every new connection (one round trip). A writer that waits for rows another instance
#: holds gives up after ``lock_timeout`` (its appends fail as busy, a 503) rather than hang; a
#: session of ours left idle inside a transaction (a process frozen mid-transaction) is ended
#: by the server, which releases its locks.
_SESSION: Final = "SET lock_timeout = '10s'; SET idle_in_transaction_session_timeout = '60s'"
#: How many times a transaction is tried while it loses deadlocks or serialization conflicts.
_WRITE_ATTEMPTS: Final = 3


# --- the psycopg boundary --------------------------------------------------------------------


def _unreachable(exc: psycopg.Error) -> bool:
    """A connection that failed or broke, a server shutting down or starting up, or one out of
    connection slots: the database is not there for us (for now)."""
    if isinstance(exc, psycopg.OperationalError) and exc.sqlstate is None:
        return True  # libpq's own: refused, timed out, closed, the pool's timeout
    return (exc.sqlstate or "").startswith(("08", "57P", "53300"))


def _lost_to_another(exc: psycopg.Error) -> bool:
    """A transaction rolled back for another's sake (a deadlock, a serialization conflict:
    class 40): trying it again may well succeed."""
    return (exc.sqlstate or "").startswith("40")


def _translate(exc: psycopg.Error) -> StoreError:
    if _unreachable(exc):
        return StoreUnavailableError(f"the database is unreachable: {exc}")
    if _lost_to_another(exc) or exc.sqlstate == "55P03":  # 55P03: lock_timeout
        return StoreUnavailableError(f"the database is busy: {exc}")
    if isinstance(exc, psycopg.IntegrityError):
        return StoreIntegrityError(f"the database refused the records: {exc}")
    return StoreError(f"the database failed: {exc}")


def _guarded(fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
    """Run ``fn``, with ``psycopg`` exceptions translated (the one boundary); so is a stored
    payload that is not JSON (a corrupt database)."""
    try:
        return fn(*args, **kwargs)
    except psycopg.Error as exc:
        raise _translate(exc) from exc
    except orjson.JSONDecodeError as exc:
        raise StoreError(f"the database holds a corrupt record: {exc}") from exc


def _refusal(exc: Exception, job: _Job | None) -> StoreError | None:
    """The error that refuses one job alone (``.._sql._fold._Transaction.refusal``): a
    constraint of the schema, or a value the database cannot hold (an integer past 64 bits,
    a NUL in a text). None: ``exc`` fails the transaction."""
    if isinstance(exc, psycopg.IntegrityError):
        if isinstance(job, _PutKeyJob | _PutObjectJob):
            return job.conflict()
        return _translate(exc)
    if isinstance(exc, psycopg.DataError | orjson.JSONEncodeError):
        # (An integer past 64 bits is refused by the writer's encoder, one under by the
        # server.)
        return StoreIntegrityError(f"a value the database cannot hold: {exc}")
    return None


# --- connections -----------------------------------------------------------------------------


def _configure(conn: psycopg.Connection[Any]) -> None:
    conn.execute(_SESSION)


def _gone(conn: psycopg.Connection[Any]) -> bool:
    """Whether an idle connection broke, or was closed by the server since it was last used (a
    restart, a shutdown): it then has something to read, the server's goodbye or the end of the
    stream, where an idle connection is sent nothing. One ``poll``, no round trip."""
    if conn.closed:
        return True
    poller = select.poll()
    poller.register(conn.fileno(), select.POLLIN)
    return bool(poller.poll(0))


def _check(conn: psycopg.Connection[Any]) -> None:
    """The pool's check of a connection it lends: one that is gone is closed (so the pool drops
    it, not lends it again) and replaced."""
    if _gone(conn):
        conn.close()
        raise psycopg.OperationalError("the server closed the connection")


def _connect(url: str) -> psycopg.Connection[Any]:
    conn = psycopg.connect(url, **_PARAMS)
    try:
        _configure(conn)
    except BaseException:
        conn.close()
        raise
    return conn


@attrs.define(eq=False)
class _Database:
    """The connections of one store: the writer's own (used by one transaction at a time,
    replaced before the next one once it broke), and a pool for reads, instances and recovery
    (each connection checked when lent, and replaced once it broke)."""

    url: str
    pool: psycopg_pool.ConnectionPool[psycopg.Connection[Any]]
    writer: psycopg.Connection[Any] | None = None
    #: The writer's commits wait for the server's WAL flush (PostgreSQL's
    #: ``synchronous_commit``); off, a crash of the database server (not of the gateway) may
    #: lose the last fraction of a second of commits.
    synchronous_commit: bool = True

    @classmethod
    def open(cls, url: str, pool_size: int, synchronous_commit: bool = True) -> _Database:
        """Connect the writer (so a database that is down fails the open at once), then open
        the pool."""
        database = cls(
            url=url,
            synchronous_commit=synchronous_commit,
            pool=psycopg_pool.ConnectionPool(
                url,
                kwargs=_PARAMS,
                min_size=1,
                max_size=pool_size,
                open=False,
                configure=_configure,
                check=_check,
                timeout=_CONNECT_TIMEOUT,
                # The pool retries a failed connection with a growing delay (1 s, 2 s, ...):
                # it gives up after as long as a read waits, so a read after the database
                # came back starts a fresh attempt instead of waiting out a long delay.
                reconnect_timeout=_CONNECT_TIMEOUT,
                name="sluicegate-store",
            ),
        )
        try:
            _guarded(database._writer_connection)
            _guarded(database.pool.open, wait=True, timeout=_CONNECT_TIMEOUT)
        except BaseException:
            database.close()
            raise
        return database

    def _writer_connection(self) -> psycopg.Connection[Any]:
        if self.writer is not None and _gone(self.writer):
            # Broken, or closed by a server that restarted: replaced before a transaction
            # is sent on it.
            self.writer.close()
            self.writer = None
        if self.writer is None:
            writer = _connect(self.url)
            if not self.synchronous_commit:
                try:
                    writer.execute("SET synchronous_commit = off")
                except BaseException:
                    writer.close()
                    raise
            self.writer = writer
        return self.writer

    @staticmethod
    def refusal(exc: Exception, job: _Job | None) -> StoreError | None:
        """See :func:`_refusal`."""
        return _refusal(exc, job)

    def write(self, fn: Callable[[psycopg.Connection[Any]], _T]) -> _T:
        """Run ``fn`` (a whole transaction, which rolls itself back on failure) on the writer's
        connection, errors translated; again (up to ``_WRITE_ATTEMPTS`` times in all) while it
        loses deadlocks or serialization conflicts to other instances' writers."""
        return _guarded(self._write, fn)

    def _write(self, fn: Callable[[psycopg.Connection[Any]], _T]) -> _T:
        for attempt in range(1, _WRITE_ATTEMPTS):
            try:
                return fn(self._writer_connection())
            except psycopg.Error as exc:
                if not _lost_to_another(exc):
                    raise
                logger.info("a store transaction lost to another (attempt %d): %s", attempt, exc)
        return fn(self._writer_connection())

    def read(self, fn: Callable[[psycopg.Connection[Any]], _T]) -> _T:
        """Run ``fn`` on a pool connection (checked when lent: one the server closed is
        replaced), errors translated."""
        return _guarded(self._read, fn)

    def _read(self, fn: Callable[[psycopg.Connection[Any]], _T]) -> _T:
        with self.pool.connection() as conn:
            return fn(conn)

    def close(self) -> None:
        """Close the pool and the writer's connection; what fails to close is logged."""
        try:
            self.pool.close(timeout=_CONNECT_TIMEOUT)
        except psycopg.Error:
            logger.warning("closing the store's connection pool failed", exc_info=True)
        if self.writer is not None:
            with contextlib.suppress(psycopg.Error):  # a broken connection is closed already
                self.writer.close()
            self.writer = None


def _migrate_now(conn: psycopg.Connection[Any]) -> tuple[int, int]:
    """Apply the pending migrations in a transaction of their own."""
    with conn.transaction():
        return _migrate(conn)


def _migrate_url(url: str) -> tuple[int, int]:
    """``migrate_postgres``: one connection, one migrating transaction."""

    def migrate() -> tuple[int, int]:
        with _connect(url) as conn:
            return _migrate_now(conn)

    return _guarded(migrate)
