"""The SQLite store: the shared store contract, plus what is SQLite's own (schema migration,
WAL, the sqlite3 error boundary)."""

from __future__ import annotations

import ast
import functools
import sqlite3
from pathlib import Path

import pytest
import trio

import sluicegate
import sluicegate.store
from sluicegate import ResponseStatus
from sluicegate.store import (
    SQLITE_SCHEMA_VERSION,
    Store,
    StoreError,
    StoreIntegrityError,
    StoreUnavailableError,
    open_sqlite_store,
)
from sluicegate.store._sqlite import _translate

from .store_contract import Backend, StoreContract, accepted, lifecycle

PACKAGE = Path(sluicegate.__file__).parent


@pytest.fixture(params=["sqlite-file", "sqlite-memory"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite-file":
        return Backend(
            open=functools.partial(open_sqlite_store, tmp_path / "s.db"), persistent=True
        )
    return Backend(open=functools.partial(open_sqlite_store, ":memory:"), persistent=False)


class TestSQLiteStoreContract(StoreContract):
    pass


def _user_version(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        (version,) = db.execute("PRAGMA user_version").fetchone()
        return int(version)
    finally:
        db.close()


async def test_sqlite_store_satisfies_the_store_protocol(tmp_path: Path) -> None:
    async with open_sqlite_store(tmp_path / "s.db") as sqlite_store:
        store: Store = sqlite_store
        assert store.statistics().transactions == 0


async def test_new_database_gets_schema_version_1_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    async with open_sqlite_store(path):
        pass
    assert SQLITE_SCHEMA_VERSION == 1
    assert _user_version(path) == 1
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        db.close()


async def test_older_database_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 0")
    db.close()
    assert _user_version(path) == 0
    async with open_sqlite_store(path) as store:
        await store.append(lifecycle("resp_m"))
        row = await store.get("resp_m")
        assert row is not None
        assert row.status is ResponseStatus.COMPLETED
    assert _user_version(path) == 1


async def test_newer_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(StoreError, match="schema version 99"):
        async with open_sqlite_store(path):
            pass


async def test_sqlite_errors_are_translated_at_open(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="the database failed") as caught:
        async with open_sqlite_store(tmp_path / "missing" / "dir" / "s.db"):
            pass
    assert type(caught.value) is StoreError
    assert caught.value.status_code == 500
    assert isinstance(caught.value.__cause__, sqlite3.Error)


def test_busy_and_constraint_errors_translate_to_their_classes() -> None:
    busy = sqlite3.OperationalError("database is locked")
    busy.sqlite_errorcode = sqlite3.SQLITE_BUSY
    assert type(_translate(busy)) is StoreUnavailableError
    assert _translate(busy).status_code == 503
    constraint = sqlite3.IntegrityError("UNIQUE constraint failed")
    constraint.sqlite_errorcode = sqlite3.SQLITE_CONSTRAINT
    assert type(_translate(constraint)) is StoreIntegrityError


async def test_writer_runs_in_a_given_service_nursery(tmp_path: Path) -> None:
    async with (
        trio.open_nursery() as service,
        open_sqlite_store(tmp_path / "s.db", nursery=service) as store,
    ):
        await store.append([accepted("resp_n")])
        assert await store.get("resp_n") is not None


async def test_one_append_larger_than_batch_max_is_written_whole(tmp_path: Path) -> None:
    async with open_sqlite_store(tmp_path / "s.db", batch_max=2) as store:
        await store.append(lifecycle("resp_big"))
        assert store.statistics().largest_batch == 6


def test_no_sqlite3_import_outside_the_sqlite_backend() -> None:
    """Regression guard: sqlite3 exceptions are translated at one boundary (STYLE, Errors)."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path == PACKAGE / "store" / "_sqlite.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            if any(name.split(".")[0] == "sqlite3" for name in names):
                offenders.append(path.relative_to(PACKAGE))
    assert offenders == []


def test_store_all_is_sorted_and_every_name_exists() -> None:
    names = sluicegate.store.__all__
    assert names == sorted(names)
    for name in names:
        assert hasattr(sluicegate.store, name), name
