"""The SQLite store: the shared store contract, plus what is SQLite's own (schema migration,
WAL, the sqlite3 error boundary, inline mode, instance locks, query plans)."""

from __future__ import annotations

import ast
import collections
import fcntl
import functools
import itertools
import os
import re
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs
import orjson
import pytest
import trio
import trio.testing

import sluicegate
import sluicegate.store
import sluicegate.store._sqlite._store
from sluicegate import ResponseStatus
from sluicegate.errors import InvalidRequestError
from sluicegate.store import (
    RECOVERY_ERROR,
    SQLITE_SCHEMA_VERSION,
    Deleted,
    Ended,
    ItemDone,
    Settled,
    SpendFilter,
    SpendGroup,
    Store,
    StoreError,
    StoreIntegrityError,
    StoreUnavailableError,
    open_sqlite_store,
)
from sluicegate.store._sqlite._boundary import _translate
from sluicegate.store._sqlite._encode import _encode_all
from sluicegate.store._sqlite._reads import _item_origins_sql
from sluicegate.store._sqlite._schema import (
    _ACCEPTED,
    _ENDED,
    _ITEM_DONE,
    _MIGRATIONS,
    _ROUTED,
    _SETTLED,
    _open_writer,
)
from sluicegate.store._sqlite._spend import _spend_logs_query, _spend_totals_query
from sluicegate.store._sqlite._writer import _Job, _Pending, _write_batch

from .store_contract import (
    FULL_KEY,
    USAGE,
    Backend,
    StoreContract,
    accepted,
    ended,
    item,
    lifecycle,
    turn,
)

PACKAGE = Path(sluicegate.__file__).parent


@pytest.fixture(params=["sqlite-file", "sqlite-memory-inline", "sqlite-file-inline"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite-file":
        return Backend(
            open=functools.partial(open_sqlite_store, tmp_path / "s.db"), persistent=True
        )
    if request.param == "sqlite-file-inline":
        return Backend(
            open=functools.partial(open_sqlite_store, tmp_path / "s.db", threads=False),
            persistent=True,
        )
    # :memory: runs inline by default.
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


@contextmanager
def _database(path: Path) -> Iterator[sqlite3.Connection]:
    db = sqlite3.connect(path, isolation_level=None)
    try:
        yield db
    finally:
        db.close()


def _lock_files(path: Path) -> list[str]:
    return sorted(os.listdir(f"{path}-instances"))


def _symlink(target: Path, link: Path) -> None:
    link.symlink_to(target)


def _leave_lock_file(path: Path, instance: str) -> None:
    """What a process that died holding its instance lock leaves behind: the file, unlocked."""
    Path(f"{path}-instances/{instance}.lock").touch()


async def test_new_database_gets_the_current_schema_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    async with open_sqlite_store(path):
        pass
    assert SQLITE_SCHEMA_VERSION == 8
    assert _user_version(path) == 8
    with _database(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        # The keys table: only the secret's hash, unique, is kept.
        columns = [
            (name, kind, bool(notnull), pk)
            for _, name, kind, notnull, _, pk in db.execute("PRAGMA table_info(keys)")
        ]
        assert columns == [
            ("key_id", "TEXT", False, 1),
            ("key_hash", "TEXT", True, 0),
            ("alias", "TEXT", False, 0),
            ("models", "BLOB", False, 0),
            ("rpm", "INTEGER", False, 0),
            ("tpm", "INTEGER", False, 0),
            ("max_parallel_requests", "INTEGER", False, 0),
            ("max_budget", "REAL", False, 0),
            ("expires_at", "REAL", False, 0),
            ("created_at", "REAL", True, 0),
            ("metadata", "BLOB", True, 0),
            ("deleted_at", "REAL", False, 0),
        ]
        unique = [
            [column for _, _, column in db.execute(f"PRAGMA index_info({name})")]
            for _, name, is_unique, *_ in db.execute("PRAGMA index_list(keys)")
            if is_unique
        ]
        assert sorted(unique) == [["key_hash"], ["key_id"]]


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
    assert _user_version(path) == SQLITE_SCHEMA_VERSION


def _create_version_1(path: Path) -> None:
    """A database as schema 1 left it: one finished response, one left running."""
    accepted_payload = {
        "owner": "key-1",
        "model": "gpt-test",
        "params": {},
        "input_items": [{"role": "user", "content": "hi"}],
        "background": False,
        "store": True,
        "metadata": {},
        "created_at": 100.0,
    }
    ended_payload = {
        "status": "completed",
        "error": None,
        "response": {"id": "resp_v1"},
        "completed_at": 200.0,
    }
    with _database(path) as db:
        for statement in _MIGRATIONS[0].split(";"):
            if statement.strip():
                db.execute(statement)
        db.execute("PRAGMA user_version = 1")
        insert = (
            "INSERT INTO responses (id, owner, status, model, deployment_id, provider,"
            " background, store, metadata, created_at, completed_at, usage, cost, error, deleted,"
            " last_seq) VALUES (?, 'key-1', ?, 'gpt-test', 'dep-1', 'openai', 0, 1, ?, 100.0,"
            " ?, ?, ?, NULL, 0, ?)"
        )
        db.execute(insert, ("resp_v1", "completed", b"{}", 200.0, orjson.dumps(USAGE), 0.25, 2))
        db.execute(insert, ("resp_v1run", "in_progress", b"{}", None, None, None, 0))
        events = [
            ("resp_v1", 0, "accepted", None, orjson.dumps(accepted_payload)),
            ("resp_v1", 1, "item_done", 0, orjson.dumps(item(0))),
            ("resp_v1", 2, "ended", None, orjson.dumps(ended_payload)),
            ("resp_v1run", 0, "accepted", None, orjson.dumps(accepted_payload)),
        ]
        db.executemany(
            "INSERT INTO events (response_id, seq, kind, ordinal, payload, at)"
            " VALUES (?, ?, ?, ?, ?, 1.0)",
            events,
        )


async def test_version_1_database_migrates_to_the_current_schema_and_keeps_its_rows(
    tmp_path: Path,
) -> None:
    path = tmp_path / "v1.db"
    _create_version_1(path)
    assert _user_version(path) == 1
    async with open_sqlite_store(path) as store:
        assert _user_version(path) == SQLITE_SCHEMA_VERSION
        row = await store.get("resp_v1")
        assert row is not None
        assert (row.status, row.usage, row.cost, row.completed_at) == (
            ResponseStatus.COMPLETED,
            USAGE,
            0.25,
            200.0,
        )
        assert (row.previous_id, row.upstream_id, row.spend_metadata) == (None, None, {})
        assert (row.ttft, row.duration, row.estimated, row.purged) == (None, None, False, False)
        assert await store.final_response("resp_v1") == {"id": "resp_v1"}
        assert await store.conversation("resp_v1", max_turns=1, max_bytes=10_000) == [
            {"role": "user", "content": "hi"},
            item(0),
        ]
        # The token counts of existing rows come from their usage.
        logs = await store.spend_logs(SpendFilter(owner="key-1", end=150.0))
        assert [log.response_id for log in logs] == ["resp_v1run", "resp_v1"]
        log = logs[1]
        assert (log.response_id, log.input_tokens, log.output_tokens) == ("resp_v1", 3, 5)
        assert (log.cached_tokens, log.reasoning_tokens, log.total_tokens) == (2, 4, 8)
        # Schema 1 recorded no instance: what it left running is recovered.
        running = await store.get("resp_v1run")
        assert running is not None
        assert (running.status, running.error) == (ResponseStatus.FAILED, RECOVERY_ERROR)
        assert store.statistics().records_appended == 1


def _create_version_2(path: Path) -> None:
    """A database as schema 2 left it: schema 1's rows migrated, and a finished response of
    schema 2 with spend metadata (and its tag) and a previous response."""
    _create_version_1(path)
    accepted_payload = {
        "owner": "key-2",
        "model": "gpt-test",
        "params": {},
        "input_items": [{"role": "user", "content": "again"}],
        "background": False,
        "store": True,
        "metadata": {},
        "created_at": 300.0,
        "previous_id": "resp_v1",
        "spend_metadata": {"team": "blue"},
    }
    ended_payload = {
        "status": "completed",
        "error": None,
        "response": {"id": "resp_v2"},
        "completed_at": 301.0,
        "ttft": 0.25,
        "duration": 1.0,
    }
    with _database(path) as db:
        for statement in _MIGRATIONS[1].split(";"):
            if statement.strip():
                db.execute(statement)
        db.execute("PRAGMA user_version = 2")
        db.execute(
            "INSERT INTO responses (id, owner, status, model, deployment_id, provider,"
            " background, store, metadata, created_at, completed_at, usage, cost, error, deleted,"
            " last_seq, previous_id, spend_metadata, ttft, duration, input_tokens, output_tokens,"
            " total_tokens) VALUES ('resp_v2', 'key-2', 'completed', 'gpt-test', 'dep-1',"
            " 'openai', 0, 1, ?, 300.0, 301.0, NULL, 0.5, NULL, 0, 1, 'resp_v1', ?, 0.25, 1.0,"
            " 4, 6, 10)",
            (b"{}", orjson.dumps({"team": "blue"})),
        )
        db.execute(
            "INSERT INTO spend_tags (key, value, response_id) VALUES ('team', ?, 'resp_v2')",
            (orjson.dumps("blue"),),
        )
        db.executemany(
            "INSERT INTO events (response_id, seq, kind, ordinal, payload, at)"
            " VALUES ('resp_v2', ?, ?, NULL, ?, 2.0)",
            [
                (0, "accepted", orjson.dumps(accepted_payload)),
                (1, "ended", orjson.dumps(ended_payload)),
            ],
        )


async def test_version_2_database_migrates_to_the_current_schema_and_keeps_its_rows(
    tmp_path: Path,
) -> None:
    path = tmp_path / "v2.db"
    _create_version_2(path)
    assert _user_version(path) == 2
    async with open_sqlite_store(path) as store:
        assert _user_version(path) == SQLITE_SCHEMA_VERSION
        row = await store.get("resp_v2")
        assert row is not None
        assert (row.owner, row.status, row.cost, row.previous_id) == (
            "key-2",
            ResponseStatus.COMPLETED,
            0.5,
            "resp_v1",
        )
        assert (row.spend_metadata, row.ttft, row.duration) == ({"team": "blue"}, 0.25, 1.0)
        assert await store.final_response("resp_v2") == {"id": "resp_v2"}
        assert await store.conversation("resp_v2", max_turns=2, max_bytes=10_000) == [
            {"role": "user", "content": "hi"},
            item(0),
            {"role": "user", "content": "again"},
        ]
        logs = await store.spend_logs(SpendFilter(metadata={"team": "blue"}))
        assert [(log.response_id, log.input_tokens, log.output_tokens) for log in logs] == [
            ("resp_v2", 4, 6)
        ]
        totals = await store.spend_totals(SpendFilter(owner="key-2"), group_by="owner")
        assert [(t.key, t.requests, t.cost) for t in totals] == [("key-2", 1, 0.5)]
        v1 = await store.get("resp_v1")
        assert v1 is not None
        assert v1.status is ResponseStatus.COMPLETED
        # The new table is there and empty.
        assert await store.get_key(FULL_KEY.key_id) is None
        await store.put_key(FULL_KEY)
        assert await store.find_key(FULL_KEY.key_hash) == FULL_KEY


#: A ``resp_`` ID as long as the gateway's (what schema 6 stops repeating in every event).
_LONG_ID = "resp_" + "A" * 148


def _create_version_5(path: Path) -> None:
    """A database as schema 5 left it: events and spend tags keyed by the ``resp_`` ID. A
    finished response (its end holding the whole final response), one continuing it, one
    deleted, one left running; rows inserted out of ID order, two created at the same time."""
    with _database(path) as db:
        for script in _MIGRATIONS[:5]:
            for statement in script.split(";"):
                if statement.strip():
                    db.execute(statement)
        db.execute("PRAGMA user_version = 5")
        insert = (
            "INSERT INTO responses (id, owner, status, model, deployment_id, provider,"
            " background, store, metadata, created_at, completed_at, usage, cost, error, deleted,"
            " last_seq, previous_id, upstream_id, spend_metadata, input_tokens, output_tokens,"
            " total_tokens, instance) VALUES (?, 'key-5', ?, 'gpt-test', 'dep-1', 'openai', 0, 1,"
            " '{}', ?, ?, ?, ?, NULL, ?, ?, ?, ?, ?, 3, 5, 8, NULL)"
        )
        usage = orjson.dumps(USAGE)
        blue = orjson.dumps({"team": "blue"})
        rows = [
            (_LONG_ID, "completed", 500.0, 501.0, usage, 0.25, 0, 4, None, "up_1", blue),
            ("resp_0v5b", "completed", 500.0, 502.0, usage, 0.5, 0, 2, _LONG_ID, None, b"{}"),
            ("resp_v5del", "completed", 400.0, 401.0, usage, 0.125, 1, 3, None, None, b"{}"),
            ("resp_v5run", "in_progress", 600.0, None, None, None, 0, 0, None, None, b"{}"),
        ]
        db.executemany(insert, rows)
        db.execute(
            "INSERT INTO spend_tags (key, value, response_id) VALUES ('team', ?, ?)",
            (orjson.dumps("blue"), _LONG_ID),
        )

        def accepted_payload(content: str) -> bytes:
            return orjson.dumps({"owner": "key-5", "input_items": [{"content": content}]})

        final = {"id": _LONG_ID, "status": "completed", "output": [item(0), item(1)]}
        ended_payload = {"status": "completed", "error": None, "response": final}
        events = [
            (_LONG_ID, 0, "accepted", None, accepted_payload("first")),
            (_LONG_ID, 1, "routed", 0, orjson.dumps({"deployment_id": "dep-1"})),
            (_LONG_ID, 2, "item_done", 0, orjson.dumps(item(0))),
            (_LONG_ID, 3, "item_done", 1, orjson.dumps(item(1))),
            (_LONG_ID, 4, "ended", None, orjson.dumps(ended_payload)),
            ("resp_0v5b", 0, "accepted", None, accepted_payload("second")),
            ("resp_0v5b", 1, "item_done", 0, orjson.dumps({"id": "msg_b"})),
            ("resp_0v5b", 2, "ended", None, orjson.dumps({**ended_payload, "response": {}})),
            ("resp_v5del", 0, "accepted", None, None),
            ("resp_v5del", 1, "item_done", 0, None),
            ("resp_v5del", 2, "ended", None, orjson.dumps({**ended_payload, "response": None})),
            ("resp_v5del", 3, "deleted", None, orjson.dumps({"deleted_at": 402.0})),
            ("resp_v5run", 0, "accepted", None, accepted_payload("third")),
        ]
        db.executemany(
            "INSERT INTO events (response_id, seq, kind, ordinal, payload, at)"
            " VALUES (?, ?, ?, ?, ?, 1.0)",
            events,
        )


async def test_version_5_database_migrates_to_compact_keys_and_keeps_every_row(
    tmp_path: Path,
) -> None:
    path = tmp_path / "v5.db"
    _create_version_5(path)
    with _database(path) as db:
        before = db.execute("SELECT count(*) FROM events").fetchone()
    async with open_sqlite_store(path) as store:
        assert _user_version(path) == SQLITE_SCHEMA_VERSION
        with _database(path) as db:
            # Every event kept, a log row each (and one more: the running response's
            # recovery); none names its response by ID any more.
            (after,) = db.execute("SELECT count(*) FROM log").fetchone()
            assert after == before[0] + 1
            assert _tables(db) >= {"log", "items"} and "events" not in _tables(db)
            # The refs are the old rowids: the order of insertion is kept.
            refs = db.execute("SELECT id FROM responses ORDER BY ref").fetchall()
            assert [r[0] for r in refs] == [_LONG_ID, "resp_0v5b", "resp_v5del", "resp_v5run"]
        row = await store.get(_LONG_ID)
        assert row is not None
        assert (row.status, row.usage, row.cost, row.upstream_id) == (
            ResponseStatus.COMPLETED,
            USAGE,
            0.25,
            "up_1",
        )
        # An end written by schema 5 holds the whole final response: it reads as it did.
        assert await store.final_response(_LONG_ID) == {
            "id": _LONG_ID,
            "status": "completed",
            "output": [item(0), item(1)],
        }
        assert await store.output_items(_LONG_ID) == [item(0), item(1)]
        assert await store.input_items("resp_0v5b") == [{"content": "second"}]
        assert await store.conversation("resp_0v5b", max_turns=2, max_bytes=10_000) == [
            {"content": "first"},
            item(0),
            item(1),
            {"content": "second"},
            {"id": "msg_b"},
        ]
        origins = await store.item_origins(["msg_1", "msg_b"])
        assert {i: o.response_id for i, o in origins.items()} == {
            "msg_1": _LONG_ID,
            "msg_b": "resp_0v5b",
        }
        # Spend: the tags find their response; ties of creation time keep insertion order.
        logs = await store.spend_logs(SpendFilter(metadata={"team": "blue"}))
        assert [log.response_id for log in logs] == [_LONG_ID]
        logs = await store.spend_logs(SpendFilter(start=500.0, end=501.0), newest_first=False)
        assert [log.response_id for log in logs] == [_LONG_ID, "resp_0v5b"]
        deleted = await store.get("resp_v5del")
        assert deleted is not None and deleted.deleted
        assert await store.final_response("resp_v5del") is None
        running = await store.get("resp_v5run")
        assert running is not None
        assert (running.status, running.error) == (ResponseStatus.FAILED, RECOVERY_ERROR)
        # New responses come after the migrated ones, and a second acceptance is refused.
        await store.append(lifecycle("resp_v6"))
        assert await store.final_response("resp_v6") is not None
        with pytest.raises(StoreIntegrityError, match="already accepted"):
            await store.append([accepted(_LONG_ID)])
    with _database(path) as db:
        assert db.execute("SELECT max(ref), count(*) FROM responses").fetchone() == (5, 5)
        assert db.execute("PRAGMA foreign_key_check").fetchall() == []
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


def _create_version_6(path: Path) -> None:
    """A database as schema 6 left it: one ``events`` row per record, keyed by the response's
    ``ref``. A finished response whose end refers to its items (``same_id``, ``output_refs``),
    one continuing it, one deleted, a streamed background one, one left running."""
    with _database(path) as db:
        for script in _MIGRATIONS[:6]:
            for statement in script.split(";"):
                if statement.strip():
                    db.execute(statement)
        db.execute("PRAGMA user_version = 6")
        usage = orjson.dumps(USAGE)
        rows = [
            (1, _LONG_ID, "completed", 0, 500.0, 501.0, usage, 0, 5, None, b'{"team":"blue"}'),
            (2, "resp_v6next", "completed", 0, 502.0, 503.0, usage, 0, 2, _LONG_ID, b"{}"),
            (3, "resp_v6del", "completed", 0, 400.0, 401.0, usage, 1, 3, None, b"{}"),
            (4, "resp_v6bg", "completed", 1, 504.0, 505.0, None, 0, 4, None, b"{}"),
            (5, "resp_v6run", "in_progress", 0, 600.0, None, None, 0, 0, None, b"{}"),
        ]
        db.executemany(
            "INSERT INTO responses (ref, id, owner, status, model, deployment_id, provider,"
            " background, store, metadata, created_at, completed_at, usage, cost, deleted,"
            " last_seq, previous_id, spend_metadata, instance) VALUES (?, ?, 'key-6', ?,"
            " 'gpt-test', 'dep-1', 'openai', ?, 1, '{}', ?, ?, ?, 0.25, ?, ?, ?, ?, NULL)",
            rows,
        )
        db.execute(
            "INSERT INTO spend_tags (key, value, response_ref) VALUES ('team', ?, 1)",
            (orjson.dumps("blue"),),
        )

        def accepted_payload(content: str) -> bytes:
            return orjson.dumps({"params": {}, "input_items": [{"content": content}]})

        # As schema 6 stored an end whose items are in the same append: the response's own
        # ID and those items left out, their sequence numbers in ``output_refs``.
        refs_end = {
            "response": {"id": 0, "status": "completed", "output": [0, 0], "x": 1},
            "same_id": True,
            "output_refs": [3, 2],
        }
        whole_end = {"response": {"id": "resp_v6next", "output": [{"id": "msg_b"}]}}
        stream = [
            (4, n + 1, "stream_event", n, orjson.dumps({"sequence_number": n})) for n in range(3)
        ]
        events = [
            (1, 0, "accepted", None, accepted_payload("first")),
            (1, 1, "routed", 1, orjson.dumps({"deployment_id": "dep-1"})),
            (1, 2, "item_done", 1, orjson.dumps(item(1))),
            (1, 3, "item_done", 0, orjson.dumps(item(0))),
            (1, 4, "settled", None, orjson.dumps({"usage": USAGE, "cost": 0.25})),
            (1, 5, "ended", None, orjson.dumps(refs_end)),
            (2, 0, "accepted", None, accepted_payload("second")),
            (2, 1, "item_done", 0, orjson.dumps({"id": "msg_b"})),
            (2, 2, "ended", None, orjson.dumps(whole_end)),
            (3, 0, "accepted", None, None),
            (3, 1, "item_done", 0, None),
            (3, 2, "ended", None, orjson.dumps({"response": None})),
            (3, 3, "deleted", None, orjson.dumps({"deleted_at": 402.0})),
            (4, 0, "accepted", None, accepted_payload("third")),
            *stream,
            (4, 4, "ended", None, orjson.dumps({"response": {"id": "resp_v6bg"}})),
            (5, 0, "accepted", None, accepted_payload("fourth")),
        ]
        db.executemany(
            "INSERT INTO events (response_ref, seq, kind, ordinal, payload, at)"
            " VALUES (?, ?, ?, ?, ?, 1.0)",
            events,
        )


async def test_version_6_database_migrates_to_the_log_and_keeps_every_record(
    tmp_path: Path,
) -> None:
    path = tmp_path / "v6.db"
    _create_version_6(path)
    with _database(path) as db:
        (before,) = db.execute("SELECT count(*) FROM events").fetchone()
    async with open_sqlite_store(path) as store:
        assert _user_version(path) == SQLITE_SCHEMA_VERSION
        with _database(path) as db:
            assert "events" not in _tables(db)
            # A row per record of schema 6 (and one more: the running response's recovery).
            assert db.execute("SELECT count(*) FROM log").fetchone() == (before + 1,)
            # Only finished responses are in the index of what to purge.
            (sql,) = db.execute(
                "SELECT sql FROM sqlite_schema WHERE name = 'responses_to_purge'"
            ).fetchone()
            assert "completed_at IS NOT NULL" in sql
        # Every read as before: the end rebuilt from the items it refers to.
        assert await store.final_response(_LONG_ID) == {
            "id": _LONG_ID,
            "status": "completed",
            "output": [item(0), item(1)],
            "x": 1,
        }
        assert await store.output_items(_LONG_ID) == [item(0), item(1)]
        assert await store.input_items(_LONG_ID) == [{"content": "first"}]
        assert await store.final_response("resp_v6next") == {
            "id": "resp_v6next",
            "output": [{"id": "msg_b"}],
        }
        assert await store.conversation("resp_v6next", max_turns=2, max_bytes=10_000) == [
            {"content": "first"},
            item(0),
            item(1),
            {"content": "second"},
            {"id": "msg_b"},
        ]
        origins = await store.item_origins(["msg_0", "msg_b"])
        assert {i: o.response_id for i, o in origins.items()} == {
            "msg_0": _LONG_ID,
            "msg_b": "resp_v6next",
        }
        numbers = [e["sequence_number"] for e in await store.stream_events("resp_v6bg", after=0)]
        assert numbers == [1, 2]
        deleted = await store.get("resp_v6del")
        assert deleted is not None and deleted.deleted
        assert await store.final_response("resp_v6del") is None
        assert await store.input_items("resp_v6del") == []
        logs = await store.spend_logs(SpendFilter(metadata={"team": "blue"}))
        assert [log.response_id for log in logs] == [_LONG_ID]
        running = await store.get("resp_v6run")
        assert running is not None
        assert (running.status, running.error) == (ResponseStatus.FAILED, RECOVERY_ERROR)
        # The log's rules hold for migrated responses, and content removal finds their rows.
        with pytest.raises(StoreIntegrityError, match="already ended"):
            await store.append([ended("resp_v6next")])
        with pytest.raises(StoreIntegrityError, match="already accepted"):
            await store.append([accepted(_LONG_ID)])
        await store.append([Deleted(response_id=_LONG_ID, deleted_at=600.0)])
        assert await store.final_response(_LONG_ID) is None
        assert await store.output_items(_LONG_ID) == []
        assert await store.item_origins(["msg_0", "msg_1"]) == {}
        assert await store.purge(before=506.0) == 4  # every ended one, deleted or not
        assert await store.stream_events("resp_v6bg") == []
        # New responses come after the migrated ones.
        await store.append(lifecycle("resp_v7"))
        assert await store.final_response("resp_v7") == ended("resp_v7").response
    with _database(path) as db:
        assert db.execute("SELECT max(ref), count(*) FROM responses").fetchone() == (6, 6)
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        # Nothing of the removed content is left: no payload of those responses' content.
        assert db.execute("SELECT count(*) FROM items WHERE response_ref <= 4").fetchone() == (0,)


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
        if path.is_relative_to(PACKAGE / "store" / "_sqlite"):
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


#: The SQLite backend's modules, in the order of its package docstring.
_SQLITE_MODULES = [
    "_boundary",
    "_schema",
    "_spend",
    "_recovery",
    "_retention",
    "_keys",
    "_encode",
    "_writer",
    "_reads",
    "_store",
]


def test_sqlite_modules_import_only_those_listed_before_them() -> None:
    """Regression guard: no import cycle between the SQLite backend's modules (one per
    concern); each imports only modules its package docstring lists before it."""
    package = PACKAGE / "store" / "_sqlite"
    assert sorted(p.stem for p in package.glob("_*.py") if p.stem != "__init__") == sorted(
        _SQLITE_MODULES
    )
    docstring = ast.get_docstring(ast.parse((package / "__init__.py").read_text())) or ""
    listed = re.findall(r"^- ``(_\w+)``", docstring, flags=re.MULTILINE)
    assert listed == _SQLITE_MODULES
    for position, name in enumerate(_SQLITE_MODULES):
        for node in ast.walk(ast.parse((package / f"{name}.py").read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                imported = [node.module] if node.module else [a.name for a in node.names]
                for module in imported:
                    assert _SQLITE_MODULES.index(module) < position, (name, module)


def test_store_all_is_sorted_and_every_name_exists() -> None:
    names = sluicegate.store.__all__
    assert names == sorted(names)
    for name in names:
        assert hasattr(sluicegate.store, name), name


# --- compact storage


def _file_size(path: Path) -> int:
    return path.stat().st_size


def _tables(db: sqlite3.Connection) -> set[str]:
    return {name for (name,) in db.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")}


def _log_rows(path: Path, rid: str) -> list[tuple[int, list[list[Any]]]]:
    """A response's log rows as stored: the sequence number of each row's first record, and
    its records (kind, ordinal, payload)."""
    with _database(path) as db:
        rows = db.execute(
            "SELECT key, body FROM log WHERE key >> 32 = (SELECT ref FROM responses WHERE id = ?)"
            " ORDER BY key",
            (rid,),
        ).fetchall()
    return [(key & 0xFFFFFFFF, orjson.loads(body)) for key, body in rows]


def _ended_payload(path: Path, rid: str) -> dict[str, Any]:
    [payload] = [
        payload
        for _, records in _log_rows(path, rid)
        for kind, _, payload in records
        if kind == _ENDED
    ]
    assert isinstance(payload, dict)
    return payload


async def test_the_final_response_does_not_store_what_the_log_already_holds(
    tmp_path: Path,
) -> None:
    """Regression guard for the store's size: the end keeps neither the response's own ID nor
    the output items its ItemDone records hold, and the final response still reads whole."""
    path = tmp_path / "s.db"
    final = {"id": _LONG_ID, "status": "completed", "output": [item(0), item(1)], "x": 1}
    async with open_sqlite_store(path) as store:
        # Items out of index order, the end in the same append (what the recorder does).
        await store.append(
            [
                accepted(_LONG_ID),
                ItemDone(response_id=_LONG_ID, output_index=1, item=item(1)),
                ItemDone(response_id=_LONG_ID, output_index=0, item=item(0)),
                Ended(
                    response_id=_LONG_ID,
                    status="completed",
                    error=None,
                    response=final,
                    completed_at=2.0,
                ),
            ]
        )
        stored = _ended_payload(path, _LONG_ID)
        assert _LONG_ID.encode() not in orjson.dumps(stored)
        assert b"msg_" not in orjson.dumps(stored)
        assert stored["output_refs"] == [2, 1]  # the items' sequence numbers
        response = await store.final_response(_LONG_ID)
        assert response == final
        assert list(response) == list(final)  # the keys in their order

        # What no ItemDone of the append holds stays in the end: an item that differs from
        # its ItemDone, one never recorded, and items recorded by an earlier append.
        other = {**item(0), "status": "incomplete"}
        mixed = {"id": "resp_other_id", "output": [other, item(1), item(7)]}
        await store.append([accepted("resp_mixed")])
        await store.append(
            [
                ItemDone(response_id="resp_mixed", output_index=0, item=item(0)),
                ItemDone(response_id="resp_mixed", output_index=1, item=item(1)),
                Ended(
                    response_id="resp_mixed",
                    status="completed",
                    error=None,
                    response=mixed,
                    completed_at=2.0,
                ),
            ]
        )
        stored = _ended_payload(path, "resp_mixed")
        assert stored["output_refs"] == [None, 2, None]
        assert "same_id" not in stored
        assert await store.final_response("resp_mixed") == mixed
        await store.append([accepted("resp_bg", background=True)])
        await store.append([ItemDone(response_id="resp_bg", output_index=0, item=item(0))])
        await store.append([ended("resp_bg")])
        assert "output_refs" not in _ended_payload(path, "resp_bg")
        assert await store.final_response("resp_bg") == ended("resp_bg").response

        # Removing the content removes the references too.
        await store.append([Deleted(response_id=_LONG_ID, deleted_at=3.0)])
        assert _ended_payload(path, _LONG_ID) == {"response": None}
        assert await store.final_response(_LONG_ID) is None


async def test_a_value_the_database_cannot_hold_fails_that_append_alone(
    tmp_path: Path,
) -> None:
    """A token count past 64 bits is JSON but no SQLite integer: the fold of its group commit
    fails, and the batch is written again one append at a time, which refuses that append
    alone and writes the one committed with it."""
    async with open_sqlite_store(tmp_path / "s.db", linger=5.0) as store:
        await store.enqueue(lifecycle("resp_hold")[:2])  # lingers: shares the next commit
        too_big = {"input_tokens": 2**63, "output_tokens": 1}
        with pytest.raises(StoreIntegrityError, match="cannot hold"):
            await store.append(
                [
                    accepted("resp_huge"),
                    Settled(response_id="resp_huge", usage=too_big, cost=None),
                    ended("resp_huge"),
                ]
            )
        assert store.statistics().transactions == 1
        await store.append(lifecycle("resp_hold")[2:])
        row = await store.get("resp_hold")
        assert row is not None and row.status is ResponseStatus.COMPLETED
        assert await store.output_items("resp_hold") == [item(0), item(1)]
        assert await store.get("resp_huge") is None
        origins = await store.item_origins(["msg_0"])
        assert {i: o.response_id for i, o in origins.items()} == {"msg_0": "resp_hold"}


async def test_a_group_commit_writes_a_response_in_one_row_of_each_table(
    tmp_path: Path,
) -> None:
    """Regression guard for the recording CPU (docs/benchmarks.md, "Recording alone"): the
    appends of a group commit are folded, so responses accepted and ended in it cost one
    projection INSERT, one log row and one ``items`` row per output item each, however many
    records and appends they have: no read, no UPDATE, no savepoint."""
    writer = _open_writer(str(tmp_path / "s.db"))
    try:
        batch: list[_Job] = []
        for n in range(4):
            records = lifecycle(f"resp_l{n}")
            batch += [
                _Pending(_encode_all(records[:2]), detached=True),
                _Pending(_encode_all(records[2:])),
            ]
        statements: list[str] = []
        writer.db.set_trace_callback(statements.append)
        _write_batch(writer, batch, "0" * 32)
        writer.db.set_trace_callback(None)
        assert [job.error for job in batch] == [None] * len(batch)
        counts = collections.Counter(
            " ".join(statement.split()[:3]).removesuffix(" (") for statement in statements
        )
        assert counts == {
            "BEGIN IMMEDIATE": 1,
            "INSERT INTO responses": 4,
            "INSERT INTO spend_tags": 4,  # one spend-metadata pair each
            "INSERT INTO log": 4,
            "INSERT OR IGNORE": 8,
            "COMMIT": 1,
        }, statements
    finally:
        writer.close()
    path = tmp_path / "s.db"
    [(first, stored)] = _log_rows(path, "resp_l0")
    assert first == 0
    assert [kind for kind, _, _ in stored] == [
        _ACCEPTED,
        _ROUTED,
        _ITEM_DONE,
        _ITEM_DONE,
        _SETTLED,
        _ENDED,
    ]
    async with open_sqlite_store(path) as store:
        assert await store.final_response("resp_l3") == ended("resp_l3").response
        assert await store.output_items("resp_l3") == [item(0), item(1)]
        row = await store.get("resp_l3")
        assert row is not None and row.status is ResponseStatus.COMPLETED


async def test_the_final_response_does_not_store_the_usage_its_settlement_holds(
    tmp_path: Path,
) -> None:
    """Regression guard for the store's size: a final response's usage, the same as the
    ``Settled`` of its append (what the recorder appends), is kept once, and reads whole."""
    path = tmp_path / "s.db"
    final = {"id": _LONG_ID, "status": "completed", "output": [], "usage": USAGE, "x": 1}
    settled = Settled(response_id=_LONG_ID, usage=USAGE, cost=0.25)
    end = Ended(
        response_id=_LONG_ID, status="completed", error=None, response=final, completed_at=2.0
    )
    other = {**final, "id": "resp_other_usage", "usage": {**USAGE, "total_tokens": 9}}
    async with open_sqlite_store(path) as store:
        await store.append([accepted(_LONG_ID), settled, end])
        stored = _ended_payload(path, _LONG_ID)
        assert stored["usage_ref"] == 1  # the Settled's sequence number
        assert stored["response"]["usage"] == 0
        assert b"input_tokens" not in orjson.dumps(stored)
        response = await store.final_response(_LONG_ID)
        assert response == final
        assert list(response) == list(final)  # the keys in their order
        row = await store.get(_LONG_ID)
        assert row is not None and row.usage == USAGE

        # A usage that differs from the settled one stays in the end.
        rid = "resp_other_usage"
        await store.append(
            [
                accepted(rid),
                attrs.evolve(settled, response_id=rid),
                attrs.evolve(end, response_id=rid, response=other),
            ]
        )
        assert "usage_ref" not in _ended_payload(path, rid)
        assert await store.final_response(rid) == other

        # Removing the content removes the reference; the settlement stays in the row.
        await store.append([Deleted(response_id=_LONG_ID, deleted_at=3.0)])
        assert _ended_payload(path, _LONG_ID) == {"response": None}
        assert await store.final_response(_LONG_ID) is None
        row = await store.get(_LONG_ID)
        assert row is not None and (row.usage, row.cost) == (USAGE, 0.25)


async def test_records_larger_than_a_row_are_split_and_read_whole(tmp_path: Path) -> None:
    """A run of records is cut into rows of about 1 KB (so they pack pages): an end whose items
    and usage sit in earlier rows of its append is still put back together."""
    path = tmp_path / "s.db"
    items = [{**item(i), "text": f"{i}" * 700} for i in range(3)]
    final = {"id": _LONG_ID, "output": items, "usage": USAGE}
    async with open_sqlite_store(path) as store:
        await store.append(
            [
                accepted(_LONG_ID),
                *(
                    ItemDone(response_id=_LONG_ID, output_index=i, item=x)
                    for i, x in enumerate(items)
                ),
                Settled(response_id=_LONG_ID, usage=USAGE, cost=0.25),
                Ended(
                    response_id=_LONG_ID,
                    status="completed",
                    error=None,
                    response=final,
                    completed_at=2.0,
                ),
            ]
        )
        rows = _log_rows(path, _LONG_ID)
        assert len(rows) > 2
        assert [seq for seq, _ in rows] == sorted(seq for seq, _ in rows)
        ended = _ended_payload(path, _LONG_ID)
        assert (ended["output_refs"], ended["usage_ref"]) == ([1, 2, 3], 4)
        assert await store.final_response(_LONG_ID) == final
        assert await store.output_items(_LONG_ID) == items
        assert await store.input_items(_LONG_ID) == accepted(_LONG_ID).input_items


async def test_the_wal_is_checkpointed_as_it_grows_and_truncated_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: checkpoints were paced by the records' payloads, while each small commit
    writes whole pages of the table and of every index it touches, many times its payload: the
    WAL grew to a hundred megabytes between two checkpoints, and its file never shrank."""
    monkeypatch.setattr(sluicegate.store._sqlite._store, "_CHECKPOINT_BYTES", 256 * 1024)
    path = tmp_path / "s.db"
    wal = Path(f"{path}-wal")
    sizes: list[int] = []
    async with open_sqlite_store(path, linger=0) as store:
        for n in range(300):
            await store.append(lifecycle(f"resp_w{n}"))
            sizes.append(_file_size(wal))
        assert await store.final_response("resp_w0") == ended("resp_w0").response
    # Far more was written than the bound (each commit writes several pages)...
    assert sum(b - a for a, b in itertools.pairwise(sizes) if b > a) > 4 * 256 * 1024
    # ...but the file never held much more than the bound: it was reset and truncated.
    assert max(sizes) < 2 * 256 * 1024
    assert any(b < a for a, b in itertools.pairwise(sizes))


# --- inline mode


async def test_memory_store_runs_inline_so_autojump_clock_never_jumps(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Regression: a store waiting on worker threads let autojump_clock jump to the next
    deadline (here, the sleeper's) in the middle of a test."""
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.sleep, 1000)
        async with open_sqlite_store(":memory:") as store:
            await store.append(lifecycle("resp_i"))
            await store.enqueue([accepted("resp_j")])
            await store.append([ended("resp_j")])
            assert await store.output_items("resp_i") == [item(0), item(1)]
            assert len(await store.spend_logs(SpendFilter())) == 2
            assert await store.purge(before=1000.0) == 2
            assert await store.recover(now=1.0) == 0
        assert trio.current_time() == start
        nursery.cancel_scope.cancel()


async def test_memory_store_can_still_use_threads() -> None:
    async with open_sqlite_store(":memory:", threads=True) as store:
        await store.append(lifecycle("resp_t"))
        assert await store.output_items("resp_t") == [item(0), item(1)]
        assert await store.conversation("resp_t", max_turns=1, max_bytes=10_000) == [
            {"role": "user", "content": "hello resp_t"},
            item(0),
            item(1),
        ]


# --- instances and recovery


async def test_stores_opening_one_file_by_different_paths_share_the_instance_locks(
    tmp_path: Path,
) -> None:
    """Regression guard: lock files next to the path as given would let a store opened through
    a symlink take the other's responses for a dead process's."""
    path = tmp_path / "s.db"
    link = tmp_path / "link.db"
    async with open_sqlite_store(path) as first:
        await first.append([accepted("resp_live")])
        _symlink(path, link)
        async with open_sqlite_store(link) as second:
            assert await second.recover(now=5.0) == 0
            row = await second.get("resp_live")
            assert row is not None
            assert row.status is ResponseStatus.IN_PROGRESS


async def test_a_second_store_on_one_file_leaves_the_firsts_responses_alone(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.db"
    async with open_sqlite_store(path) as first:
        await first.append([accepted("resp_live")])
        async with open_sqlite_store(path) as second:
            assert second.instance != first.instance
            assert _lock_files(path) == sorted(
                [f"{first.instance}.lock", f"{second.instance}.lock"]
            )
            # Opening recovered nothing, and neither does asking again.
            assert second.statistics().records_appended == 0
            assert await second.recover(now=5.0) == 0
            row = await second.get("resp_live")
            assert row is not None
            assert row.status is ResponseStatus.IN_PROGRESS
        assert _lock_files(path) == [f"{first.instance}.lock"]
        await first.append([ended("resp_live")])
        row = await first.get("resp_live")
        assert row is not None
        assert row.status is ResponseStatus.COMPLETED
    assert _lock_files(path) == []


async def test_a_store_recovers_the_responses_of_one_that_closed_before_they_ended(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.db"
    async with open_sqlite_store(path) as first:
        async with open_sqlite_store(path) as second:
            await second.append([accepted("resp_orphan")])
        assert await first.recover(now=7.0) == 1
        row = await first.get("resp_orphan")
        assert row is not None
        assert (row.status, row.completed_at, row.error) == (
            ResponseStatus.FAILED,
            7.0,
            RECOVERY_ERROR,
        )
        assert await first.recover(now=8.0) == 0


async def test_a_dead_instances_responses_are_recovered_and_its_lock_file_removed(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.db"
    async with open_sqlite_store(path) as crashed:
        await crashed.append([accepted("resp_crash")])
    # A process that died holding its lock leaves the file, and nobody holds the lock. So does
    # one that died with nothing unfinished.
    _leave_lock_file(path, crashed.instance)
    _leave_lock_file(path, "0" * 32)
    async with open_sqlite_store(path) as store:
        assert store.statistics().records_appended == 1
        row = await store.get("resp_crash")
        assert row is not None
        assert (row.status, row.error) == (ResponseStatus.FAILED, RECOVERY_ERROR)
        assert _lock_files(path) == [f"{store.instance}.lock"]


async def test_a_lock_file_held_by_a_live_process_keeps_its_responses_alive(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.db"
    async with open_sqlite_store(path) as other:
        await other.append([accepted("resp_elsewhere")])
    # The other process is still running: its lock file exists and is locked.
    lock_path = f"{path}-instances/{other.instance}.lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        async with open_sqlite_store(path) as store:
            row = await store.get("resp_elsewhere")
            assert row is not None
            assert row.status is ResponseStatus.IN_PROGRESS
            assert await store.recover(now=9.0) == 0
            assert _lock_files(path) == sorted([f"{other.instance}.lock", f"{store.instance}.lock"])
            os.close(fd)  # the other process dies
            fd = -1
            assert await store.recover(now=9.0) == 1
            assert _lock_files(path) == [f"{store.instance}.lock"]
    finally:
        if fd >= 0:
            os.close(fd)


async def test_recovery_skips_responses_another_store_ended_first() -> None:
    """Two stores opening at once both see a dead process's responses unfinished; whichever
    ends one second must not fail (its whole batch used to be refused)."""
    async with open_sqlite_store(":memory:") as store:
        await store.append([accepted("resp_a"), accepted("resp_b"), accepted("resp_c")])
        await store.append([ended("resp_b")])  # the other store was faster for this one
        assert await store._end_as_failed(["resp_a", "resp_b", "resp_c"], now=3.0) == 2
        for rid, status in (
            ("resp_a", ResponseStatus.FAILED),
            ("resp_b", ResponseStatus.COMPLETED),
            ("resp_c", ResponseStatus.FAILED),
        ):
            row = await store.get(rid)
            assert row is not None
            assert row.status is status


# --- conversations


async def test_conversation_size_is_checked_before_any_content_is_loaded(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.db"
    async with open_sqlite_store(path) as store:
        await store.append(turn("resp_t1", None))
        await store.append(turn("resp_t2", "resp_t1"))
    with _database(path) as db:
        (size,) = db.execute("SELECT sum(content_size) FROM log").fetchone()
        # The stored size of the conversation: its inputs' and output items' payloads.
        assert size == sum(
            len(orjson.dumps(payload))
            for rid in ("resp_t1", "resp_t2")
            for _, records in _log_rows(path, rid)
            for kind, _, payload in records
            if kind in (_ACCEPTED, _ITEM_DONE)
        )
        # Same length, not JSON: loading it would fail.
        db.execute(
            "UPDATE log SET body = zeroblob(length(body))"
            " WHERE key >> 32 = (SELECT ref FROM responses WHERE id = 'resp_t1')"
        )
    async with open_sqlite_store(path) as store:
        with pytest.raises(
            InvalidRequestError, match=rf"larger than {size - 1} bytes \({size} bytes stored\)"
        ):
            await store.conversation("resp_t2", max_turns=2, max_bytes=size - 1)
        # At the limit the items are loaded, and the corrupt one shows it.
        with pytest.raises(StoreError, match="corrupt record"):
            await store.conversation("resp_t2", max_turns=2, max_bytes=size)


# --- spend query plans

_FILTER_SHAPES = [
    SpendFilter(),
    SpendFilter(owner="alice"),
    SpendFilter(model="gpt-a"),
    SpendFilter(start=1.0),
    SpendFilter(end=2.0),
    SpendFilter(start=1.0, end=2.0),
    SpendFilter(owner="alice", start=1.0, end=2.0),
    SpendFilter(owner="alice", model="gpt-a"),
    SpendFilter(owner="alice", model="gpt-a", start=1.0, end=2.0),
    SpendFilter(metadata={"team": "blue"}),
    SpendFilter(metadata={"team": "blue", "env": {"stage": 1}}),
    SpendFilter(owner="alice", metadata={"team": "blue"}),
    SpendFilter(model="gpt-a", start=1.0, end=2.0, metadata={"team": "blue", "env": "x"}),
]


def _assert_indexed(plan: str, where: SpendFilter) -> None:
    for line in plan.splitlines():
        if line.startswith("SCAN "):
            # Walking an index of responses is fine (in order, for a limited newest-first
            # page); reading the whole table or the tags is not.
            assert re.fullmatch(r"SCAN r USING (COVERING )?INDEX \w+", line), plan
    if where.metadata:
        # Driven by the tags' primary key, whatever else is filtered.
        first = plan.splitlines()[0]
        assert first.startswith("SEARCH t USING PRIMARY KEY (key=? AND value=?"), plan
    elif where.owner is None and where.model is None and where != SpendFilter():
        assert "SEARCH r USING INDEX responses_by_created (created_at" in plan, plan


@pytest.mark.parametrize("where", _FILTER_SHAPES, ids=repr)
async def test_spend_queries_are_served_from_indexes(where: SpendFilter) -> None:
    async with open_sqlite_store(":memory:") as store:
        for newest_first in (True, False):
            query = _spend_logs_query(where, limit=100, newest_first=newest_first)
            plan = await store._query_plan(query)
            _assert_indexed(plan, where)
            if not where.metadata:
                # The index gives the order: a page does not sort every matching row.
                assert "TEMP B-TREE" not in plan, plan
        if where == SpendFilter():
            return  # totals of everything read every row, as they must
        groups: tuple[SpendGroup, ...] = ("owner", "model", "day")
        for group_by in groups:
            plan = await store._query_plan(_spend_totals_query(where, group_by=group_by))
            _assert_indexed(plan, where)


# --- retention


async def test_purge_runs_in_transactions_of_at_most_batch_max_responses(
    tmp_path: Path,
) -> None:
    async with open_sqlite_store(tmp_path / "s.db", batch_max=2) as store:
        for n in range(5):
            await store.append([accepted(f"resp_p{n}"), ended(f"resp_p{n}", at=10.0 + n)])
        before = store.statistics()
        assert await store.purge(before=100.0) == 5
        after = store.statistics()
        assert after.transactions - before.transactions == 3  # 2 + 2 + 1
        assert after.records_appended == before.records_appended
        for n in range(5):
            row = await store.get(f"resp_p{n}")
            assert row is not None
            assert row.purged is True
        # A tombstone after a purge is still taken (and finds nothing to remove).
        await store.append([Deleted(response_id="resp_p0", deleted_at=200.0)])
        row = await store.get("resp_p0")
        assert row is not None
        assert (row.deleted, row.purged) == (True, True)


async def test_a_commit_blocked_by_another_process_waits_in_a_thread_not_on_the_loop(
    tmp_path: Path,
) -> None:
    """Small commits run inline on the trio thread; when another process holds the write lock,
    the commit must not wait there (the loop would stall) but in a worker thread."""
    path = tmp_path / "busy.db"
    async with open_sqlite_store(path) as store:
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another process, writing
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await trio.sleep(0.01)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(tick)
            with trio.move_on_after(0.3):
                await store.append([accepted("resp_busy")])
                raise AssertionError("the append committed while the database was locked")
            assert ticks >= 10  # the loop ran on meanwhile
            other.execute("COMMIT")
            other.close()
            await store.append([accepted("resp_after")])  # behind the first one: both in
            nursery.cancel_scope.cancel()
        assert await store.get("resp_busy") is not None
        assert await store.get("resp_after") is not None


async def test_item_lookup_searches_the_item_index(tmp_path: Path) -> None:
    """Replayed item IDs are looked up on the request path: an index search, never a scan."""
    path = tmp_path / "s.db"
    async with open_sqlite_store(path):
        pass
    with _database(path) as db:
        plan = db.execute("EXPLAIN QUERY PLAN " + _item_origins_sql(2), ("a", "b")).fetchall()
    steps = [str(row[-1]) for row in plan]
    assert "SEARCH i USING PRIMARY KEY (item_id=?)" in steps, steps
    assert not any(step.startswith("SCAN") for step in steps), steps


async def test_one_conversations_items_are_read_through_the_purpose_index(tmp_path: Path) -> None:
    """Regression: a held conversation's items are the objects of one ``purpose``; the page
    query must search ``objects_by_purpose`` (migration 8), not scan every conversation's
    items. The plan is SQLite's for the very query the store runs."""
    from sluicegate.store._sql._queries import _list_objects
    from sluicegate.store._sqlite._spend import _SQLITE

    path = tmp_path / "s.db"
    async with open_sqlite_store(path):
        pass
    statements: list[tuple[str, Any]] = []

    @attrs.define
    class Recording:
        db: sqlite3.Connection

        def execute(self, sql: str, args: Any = ()) -> sqlite3.Cursor:
            statements.append((sql, args))
            return self.db.execute(sql, args)

    with _database(path) as db:
        _list_objects(Recording(db), _SQLITE, "conversation_item", None, None, 10, False, "conv_a")  # type: ignore[arg-type]
        sql, args = statements[-1]
        plan = " ".join(str(row) for row in db.execute(f"EXPLAIN QUERY PLAN {sql}", args))
    assert "objects_by_purpose" in plan, plan
