"""The PostgreSQL store: the shared store contract, plus what is PostgreSQL's own (migrations,
instances with leases and recovery across processes, the shared response-ID secret, a server
that stops and comes back, the psycopg boundary, query plans)."""

from __future__ import annotations

import ast
import functools
import logging
import os
import re
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import psycopg
import psycopg.errors
import pytest
import trio

import sluicegate
from sluicegate import ResponseStatus
from sluicegate.errors import StoreError, StoreIntegrityError, StoreUnavailableError
from sluicegate.store import (
    POSTGRES_SCHEMA_VERSION,
    RECOVERY_ERROR,
    PostgresStore,
    Settled,
    SpendFilter,
    SpendGroup,
    Store,
    migrate_postgres,
    open_postgres_store,
)
from sluicegate.store._postgres._boundary import _translate
from sluicegate.store._postgres._schema import _POSTGRES
from sluicegate.store._sql._layout import _ENDED
from sluicegate.store._sql._queries import _spend_logs_sql, _spend_totals_sql

from .servers import start_postgres
from .store_contract import (
    Backend,
    StoreContract,
    accepted,
    append_spend_rows,
    ended,
    item,
    lifecycle,
    turn,
)

PACKAGE = Path(sluicegate.__file__).parent
REPO = PACKAGE.parent


@pytest.fixture
def backend(postgres_url: str) -> Backend:
    return Backend(open=functools.partial(open_postgres_store, postgres_url), persistent=True)


class TestPostgresStoreContract(StoreContract):
    pass


@contextmanager
def _database(url: str) -> Iterator[psycopg.Connection[Any]]:
    """A connection of the test's own, beside the store's (autocommit)."""
    with psycopg.connect(url, autocommit=True) as conn:
        yield conn


def _one(url: str, sql: str, params: tuple[Any, ...] = ()) -> Any:
    with _database(url) as conn:
        row = conn.execute(sql, params).fetchone()
    return None if row is None else row[0]


#: The digest of the response-ID secret stores sharing a database in a test share.
SECRET = "5" * 64
#: A store whose heartbeat and recovery stay out of the way for a test's length.
quiet = functools.partial(open_postgres_store, heartbeat=60.0, lease=120.0, id_secret_digest=SECRET)


async def _status(store: Store, rid: str) -> ResponseStatus:
    row = await store.get(rid)
    assert row is not None, rid
    return row.status


async def _eventually(check: Callable[[], Awaitable[bool]], *, within: float = 30.0) -> None:
    """Wait until ``check()`` holds, polling under a bound: what another instance (or the
    server's clock) does comes when it comes (a readiness bound, never a timing assertion)."""
    with trio.fail_after(within):
        while True:
            if await check():
                return
            await trio.sleep(0.05)


async def _until_failed(store: Store, rid: str, *, within: float = 30.0) -> None:
    """Wait until another instance's recovery ended ``rid``."""

    async def failed() -> bool:
        return await _status(store, rid) is ResponseStatus.FAILED

    await _eventually(failed, within=within)


def _registered(url: str, instance: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        await trio.lowlevel.checkpoint()
        return bool(_one(url, "SELECT count(*) FROM instances WHERE id = %s", (instance,)))

    return check


async def test_postgres_store_satisfies_the_store_protocol(postgres_url: str) -> None:
    async with open_postgres_store(postgres_url) as postgres_store:
        store: Store = postgres_store
        assert isinstance(postgres_store, PostgresStore)
        assert store.statistics().transactions == 0
        assert re.fullmatch(r"[0-9a-f]{32}", postgres_store.instance)


async def test_the_writer_and_the_heartbeat_run_in_a_given_service_nursery(
    postgres_url: str,
) -> None:
    async with trio.open_nursery() as nursery:
        async with open_postgres_store(postgres_url, nursery=nursery, heartbeat=0.05) as store:
            await store.append(lifecycle("resp_n"))
            await store.append([accepted("resp_running")])

            async def beaten() -> bool:
                await trio.lowlevel.checkpoint()
                sql = "SELECT heartbeat_at > started_at FROM instances WHERE id = %s"
                return bool(_one(postgres_url, sql, (store.instance,)))

            await _eventually(beaten)  # a heartbeat, and a recovery, which ends nothing
            assert await _status(store, "resp_n") is ResponseStatus.COMPLETED
            assert await _status(store, "resp_running") is ResponseStatus.IN_PROGRESS
        assert _one(postgres_url, "SELECT count(*) FROM instances") == 0


async def test_heartbeat_must_be_shorter_than_the_lease(postgres_url: str) -> None:
    with pytest.raises(ValueError, match="less than lease"):
        async with open_postgres_store(postgres_url, heartbeat=5.0, lease=5.0):
            pass  # pragma: no cover


# --- migrations


def test_migrate_postgres_creates_the_schema_once(postgres_url: str) -> None:
    assert migrate_postgres(postgres_url) == (0, POSTGRES_SCHEMA_VERSION)
    assert migrate_postgres(postgres_url) == (POSTGRES_SCHEMA_VERSION, POSTGRES_SCHEMA_VERSION)
    assert _one(postgres_url, "SELECT version FROM schema_version") == POSTGRES_SCHEMA_VERSION
    with _database(postgres_url) as conn:
        tables = {
            name
            for (name,) in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
            )
        }
    assert tables == {
        "schema_version",
        "responses",
        "log",
        "items",
        "spend_tags",
        "keys",
        "objects",
        "instances",
    }


async def test_opening_migrates_a_fresh_database_and_reopening_changes_nothing(
    postgres_url: str,
) -> None:
    async with open_postgres_store(postgres_url) as store:
        await store.append(lifecycle("resp_m"))
    assert _one(postgres_url, "SELECT version FROM schema_version") == POSTGRES_SCHEMA_VERSION
    assert _one(postgres_url, "SELECT count(*) FROM schema_version") == 1
    async with open_postgres_store(postgres_url) as store:
        assert await _status(store, "resp_m") is ResponseStatus.COMPLETED
    assert migrate_postgres(postgres_url) == (POSTGRES_SCHEMA_VERSION, POSTGRES_SCHEMA_VERSION)


async def test_stores_opening_a_fresh_database_together_migrate_it_once(
    postgres_url: str,
) -> None:
    """The advisory lock: the second waits for the first's migration, then finds it done."""
    opened: list[PostgresStore] = []

    async def one(event: trio.Event) -> None:
        async with open_postgres_store(postgres_url, id_secret_digest=SECRET) as store:
            opened.append(store)
            await event.wait()

    done = trio.Event()

    async def all_open() -> bool:
        await trio.lowlevel.checkpoint()
        return len(opened) == 3

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(one, done)
        await _eventually(all_open)
        done.set()
    assert _one(postgres_url, "SELECT count(*) FROM schema_version") == 1


async def test_a_newer_schema_is_refused(postgres_url: str) -> None:
    migrate_postgres(postgres_url)
    newer = POSTGRES_SCHEMA_VERSION + 1
    with _database(postgres_url) as conn:
        conn.execute("UPDATE schema_version SET version = %s", (newer,))
    message = rf"schema version {newer}; this sluicegate knows {POSTGRES_SCHEMA_VERSION} at most"
    with pytest.raises(StoreError, match=message):
        async with open_postgres_store(postgres_url):
            pass  # pragma: no cover
    with pytest.raises(StoreError, match=message):
        migrate_postgres(postgres_url)
    assert _one(postgres_url, "SELECT count(*) FROM instances") == 0


# --- instances, leases and recovery


async def test_an_open_store_registers_its_instance_and_removes_it_on_close(
    postgres_url: str,
) -> None:
    async with open_postgres_store(postgres_url, id_secret_digest="d1") as store:
        with _database(postgres_url) as conn:
            row = conn.execute(
                "SELECT id, hostname, pid, id_secret_digest, lease,"
                " heartbeat_at > now() - interval '1 minute' FROM instances"
            ).fetchone()
        assert row is not None
        assert (row[0], row[2], row[3], row[4], row[5]) == (
            store.instance,
            os.getpid(),
            "d1",
            15.0,
            True,
        )
    assert _one(postgres_url, "SELECT count(*) FROM instances") == 0


async def test_a_dead_instances_responses_are_ended_by_another_ones_periodic_recovery(
    postgres_url: str,
) -> None:
    """An instance whose heartbeat is older than its lease is dead: the periodic recovery of
    a live one ends its unfinished responses (never a live instance's, never its own) and
    removes its row."""
    async with (
        quiet(postgres_url) as dead,
        quiet(postgres_url) as alive,
        open_postgres_store(
            postgres_url, heartbeat=0.1, lease=5.0, id_secret_digest=SECRET
        ) as recoverer,
    ):
        await dead.append([accepted("resp_d1"), accepted("resp_d2", background=True)])
        await dead.append(lifecycle("resp_d_done"))
        await alive.append([accepted("resp_a")])
        await recoverer.append([accepted("resp_r")])
        # Its heartbeat stopped (its store is open, but the row says it has been silent).
        with _database(postgres_url) as conn:
            conn.execute(
                "UPDATE instances SET heartbeat_at = now() - interval '1 hour' WHERE id = %s",
                (dead.instance,),
            )
        await _until_failed(recoverer, "resp_d1")
        await _until_failed(recoverer, "resp_d2")
        row = await recoverer.get("resp_d1")
        assert row is not None and row.error == RECOVERY_ERROR
        assert await _status(recoverer, "resp_d_done") is ResponseStatus.COMPLETED
        assert await _status(recoverer, "resp_a") is ResponseStatus.IN_PROGRESS
        assert await _status(recoverer, "resp_r") is ResponseStatus.IN_PROGRESS
        registered = _registered(postgres_url, dead.instance)

        async def forgotten() -> bool:
            return not await registered()

        await _eventually(forgotten)
        assert _one(postgres_url, "SELECT count(*) FROM instances") == 3 - 1


_HOLDER = """
import sys, trio
from sluicegate.store import open_postgres_store
from tests.store_contract import accepted

async def main(url):
    async with open_postgres_store(
        url, heartbeat=0.5, lease=5.0, id_secret_digest="5" * 64
    ) as store:
        await store.append([accepted("resp_k1"), accepted("resp_k2", background=True)])
        print(store.instance, flush=True)
        await trio.sleep_forever()

trio.run(main, sys.argv[1])
"""


async def test_the_responses_of_an_instance_killed_outright_end_within_its_lease(
    postgres_url: str,
) -> None:
    """``kill -9``: no close, no row removed; its heartbeat just stops. Another instance's
    periodic recovery ends its responses within about its lease and a heartbeat."""
    holder = await trio.lowlevel.open_process(
        [sys.executable, "-c", _HOLDER, postgres_url], cwd=REPO, stdout=subprocess.PIPE
    )
    try:
        assert holder.stdout is not None
        line = b""
        with trio.fail_after(60):
            while not line.endswith(b"\n"):
                chunk = await holder.stdout.receive_some()
                assert chunk, "the holder exited before it was ready"
                line += chunk
        instance = line.decode().strip()
        assert re.fullmatch(r"[0-9a-f]{32}", instance), instance
        async with open_postgres_store(
            postgres_url, heartbeat=0.1, lease=5.0, id_secret_digest=SECRET
        ) as survivor:
            # Alive, it keeps its responses.
            assert await survivor.recover(now=1.0) == 0
            assert await _status(survivor, "resp_k1") is ResponseStatus.IN_PROGRESS
            holder.kill()
            await holder.wait()
            # Within its lease (5 s: a starved holder is not judged dead while it lives) and a
            # heartbeat of the survivor (0.1 s); the bound leaves room for a busy machine.
            with trio.fail_after(60):
                await _until_failed(survivor, "resp_k1")
                await _until_failed(survivor, "resp_k2")
            assert not await _registered(postgres_url, instance)()
    finally:
        holder.kill()
        await holder.wait()


async def test_concurrent_recoveries_end_a_dead_instances_responses_exactly_once(
    postgres_url: str,
) -> None:
    rids = [f"resp_x{n}" for n in range(40)]
    async with quiet(postgres_url) as dead:
        await dead.append([accepted(rid) for rid in rids])
        dead_instance = dead.instance
    # Closed: its row is gone, so it is dead to everyone.
    assert _one(postgres_url, "SELECT count(*) FROM instances") == 0
    async with quiet(postgres_url) as one, quiet(postgres_url) as two:
        # (Each recovered at open already; put the responses back as the dead one left them.)
        with _database(postgres_url) as conn:
            conn.execute(
                "UPDATE responses SET status = 'in_progress', completed_at = NULL,"
                " error = NULL, instance = %s",
                (dead_instance,),
            )
            conn.execute("DELETE FROM log WHERE (key & 4294967295) > 0")
            conn.execute("UPDATE responses SET last_seq = 0")
        counts: list[int] = []

        async def recover(store: PostgresStore) -> None:
            counts.append(await store.recover(now=7.0))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(recover, one)
            nursery.start_soon(recover, two)
        assert sum(counts) == len(rids)
        for rid in rids:
            row = await one.get(rid)
            assert row is not None
            assert (row.status, row.completed_at) == (ResponseStatus.FAILED, 7.0)
    with _database(postgres_url) as conn:
        bodies = conn.execute("SELECT body FROM log").fetchall()
    ends = [kind for (body,) in bodies for kind, _, _ in orjson.loads(body) if kind == _ENDED]
    assert len(ends) == len(rids)


async def test_an_instance_judged_dead_registers_again_and_says_so(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="sluicegate"):
        async with open_postgres_store(postgres_url, heartbeat=0.05, lease=5.0) as store:
            with _database(postgres_url) as conn:
                conn.execute("DELETE FROM instances WHERE id = %s", (store.instance,))
            await _eventually(_registered(postgres_url, store.instance))
    [record] = [r for r in caplog.records if "judged dead" in r.getMessage()]
    assert record.levelno == logging.ERROR


# --- the response-ID secret


@pytest.mark.parametrize(
    ("live", "mine", "message"),
    [
        ("a" * 64, "b" * 64, "is using this database with a different response_id_secret"),
        ("a" * 64, None, "this instance has no general_settings.response_id_secret"),
        (None, "a" * 64, r"started without a response_id_secret is using this database"),
        (None, None, "this instance has no general_settings.response_id_secret"),
        ("generated:" + "a" * 64, "generated:" + "b" * 64, "has no general_settings"),
        ("a" * 64, "generated:" + "a" * 64, "has no general_settings"),
    ],
)
async def test_an_instance_with_another_response_id_secret_refuses_to_open(
    postgres_url: str, live: str | None, mine: str | None, message: str
) -> None:
    async with quiet(postgres_url, id_secret_digest=live):
        with pytest.raises(StoreError, match=message) as caught:
            async with quiet(postgres_url, id_secret_digest=mine):
                pass  # pragma: no cover
        assert f"(host {os.uname().nodename}, pid {os.getpid()})" in caught.value.message
        assert "every instance on one database needs the same" in caught.value.message
        assert _one(postgres_url, "SELECT count(*) FROM instances") == 1


@pytest.mark.parametrize("digest", ["a" * 64, "generated:" + "a" * 64])
async def test_instances_sharing_a_secret_open_together(postgres_url: str, digest: str) -> None:
    async with (
        quiet(postgres_url, id_secret_digest=digest),
        quiet(postgres_url, id_secret_digest=digest),
    ):
        assert _one(postgres_url, "SELECT count(*) FROM instances") == 2


async def test_alone_or_beside_a_dead_instance_any_secret_opens(postgres_url: str) -> None:
    async with quiet(postgres_url, id_secret_digest=None) as first:
        pass
    async with quiet(postgres_url, id_secret_digest="a" * 64) as first:
        with _database(postgres_url) as conn:
            conn.execute(
                "UPDATE instances SET heartbeat_at = now() - interval '1 hour' WHERE id = %s",
                (first.instance,),
            )
        async with quiet(postgres_url, id_secret_digest="b" * 64):
            pass


# --- the database stops and comes back


async def test_a_stopped_server_fails_fast_and_the_same_store_recovers_when_it_is_back() -> None:
    """Stopped (as if killed): appends and reads fail as unavailable within seconds, never
    hang; started again: the same open store writes and reads again (the writer's connection
    and the pool's broken ones are replaced)."""
    with start_postgres() as server:
        url = await trio.to_thread.run_sync(server.create_database)
        async with open_postgres_store(url, heartbeat=0.2, lease=5.0) as store:
            await store.append(lifecycle("resp_before"))
            await trio.to_thread.run_sync(functools.partial(server.stop, "immediate"))
            with trio.fail_after(15):
                with pytest.raises(StoreUnavailableError, match="unreachable") as caught:
                    await store.append(lifecycle("resp_during"))
                assert caught.value.status_code == 503
                with pytest.raises(StoreUnavailableError, match="unreachable"):
                    await store.get("resp_before")
            await trio.to_thread.run_sync(server.start)
            with trio.fail_after(30):
                await store.append(lifecycle("resp_after"))
                assert await _status(store, "resp_after") is ResponseStatus.COMPLETED
                assert await _status(store, "resp_before") is ResponseStatus.COMPLETED
                assert await store.get("resp_during") is None
                assert await store.output_items("resp_after") == [item(0), item(1)]


async def test_an_unreachable_database_fails_the_open_fast() -> None:
    with start_postgres() as server:
        url = await trio.to_thread.run_sync(server.create_database)
        await trio.to_thread.run_sync(server.stop)
        with trio.fail_after(15), pytest.raises(StoreUnavailableError, match="unreachable"):
            async with open_postgres_store(url):
                pass  # pragma: no cover


# --- the psycopg boundary


@pytest.mark.parametrize(
    ("exc", "expected", "message"),
    [
        (psycopg.OperationalError("connection refused"), StoreUnavailableError, "unreachable"),
        (psycopg.errors.AdminShutdown("terminating"), StoreUnavailableError, "unreachable"),
        (psycopg.errors.CannotConnectNow("starting up"), StoreUnavailableError, "unreachable"),
        (psycopg.errors.TooManyConnections("too many"), StoreUnavailableError, "unreachable"),
        (psycopg.errors.DeadlockDetected("deadlock"), StoreUnavailableError, "busy"),
        (psycopg.errors.LockNotAvailable("lock timeout"), StoreUnavailableError, "busy"),
        (psycopg.errors.UniqueViolation("duplicate"), StoreIntegrityError, "refused"),
        (psycopg.errors.UndefinedTable("no table"), StoreError, "failed"),
    ],
)
def test_psycopg_errors_translate_to_their_classes(
    exc: psycopg.Error, expected: type[StoreError], message: str
) -> None:
    translated = _translate(exc)
    assert type(translated) is expected
    assert message in translated.message


async def test_a_value_the_database_cannot_hold_fails_that_append_alone(
    postgres_url: str,
) -> None:
    """A token count past 64 bits (and one just under, which the server refuses) fails the
    fold of its group commit: the batch is written again one append at a time, which refuses
    that append alone and writes the one committed with it."""
    async with open_postgres_store(postgres_url, linger=5.0) as store:
        # 2 ** 63 is no PostgreSQL bigint (one past 64 bits is refused in the caller's task).
        for n, too_big in enumerate((2**63, 2**64 - 1)):
            rid = f"resp_hold{n}"
            await store.enqueue(lifecycle(rid)[:2])  # lingers: shares the next commit
            with pytest.raises(StoreIntegrityError, match="cannot hold"):
                await store.append(
                    [
                        accepted("resp_huge"),
                        Settled(
                            response_id="resp_huge", usage={"input_tokens": too_big}, cost=None
                        ),
                        ended("resp_huge"),
                    ]
                )
            await store.append(lifecycle(rid)[2:])
            assert await _status(store, rid) is ResponseStatus.COMPLETED
            assert await store.get("resp_huge") is None
        # Written: its items are found (the first response that made one).
        origins = await store.item_origins(["msg_0"])
        assert {i: o.response_id for i, o in origins.items()} == {"msg_0": "resp_hold0"}


def test_importing_sluicegate_store_imports_no_psycopg() -> None:
    """The driver is an optional extra: without it ``sluicegate.store`` still imports."""
    code = (
        "import sys\n"
        "sys.modules['psycopg'] = None\n"
        "sys.modules['psycopg_pool'] = None\n"
        "import sluicegate, sluicegate.store\n"
        "assert not [m for m in sys.modules if m.startswith('psycopg') and sys.modules[m]]\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


async def test_without_psycopg_opening_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)
    monkeypatch.delitem(sys.modules, "sluicegate.store._postgres._boundary")
    with pytest.raises(StoreError, match=re.escape("pip install 'sluicegate[postgres]'")):
        async with open_postgres_store("postgresql://nowhere/db"):
            pass  # pragma: no cover
    with pytest.raises(StoreError, match="needs psycopg"):
        migrate_postgres("postgresql://nowhere/db")


def _runtime_imports(path: Path) -> set[str]:
    """The top-level modules a file imports, but for those under ``if TYPE_CHECKING:``."""
    names: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            return
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return names


def test_psycopg_is_imported_by_the_boundary_alone() -> None:
    """Regression guard: psycopg exceptions are translated at one boundary (STYLE, Errors),
    and only a store that opens loads the driver."""
    importers = sorted(
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if _runtime_imports(path) & {"psycopg", "psycopg_pool"}
    )
    assert importers == ["store/_postgres/_boundary.py"]


@pytest.mark.parametrize("package", ["_postgres", "_sql"])
def test_store_modules_import_only_those_listed_before_them(package: str) -> None:
    """Regression guard: no import cycle between a package's modules (one per concern); each
    imports only modules its package docstring lists before it."""
    directory = PACKAGE / "store" / package
    docstring = ast.get_docstring(ast.parse((directory / "__init__.py").read_text())) or ""
    listed = re.findall(r"^- ``(_\w+)``", docstring, flags=re.MULTILINE)
    assert sorted(listed) == sorted(p.stem for p in directory.glob("_*.py") if p.stem != "__init__")
    for position, name in enumerate(listed):
        for node in ast.walk(ast.parse((directory / f"{name}.py").read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                imported = [node.module] if node.module else [a.name for a in node.names]
                for module in imported:
                    assert listed.index(module) < position, (name, module)


# --- query plans

_FILTER_SHAPES = [
    SpendFilter(owner="alice"),
    SpendFilter(model="gpt-a"),
    SpendFilter(start=1.0),
    SpendFilter(start=1.0, end=2.0),
    SpendFilter(owner="alice", start=1.0, end=2.0),
    SpendFilter(owner="alice", model="gpt-a"),
    SpendFilter(metadata={"team": "blue"}),
    SpendFilter(metadata={"team": "blue", "env": {"stage": 1}}),
    SpendFilter(owner="alice", metadata={"team": "blue"}),
    SpendFilter(model="gpt-a", start=1.0, end=2.0, metadata={"team": "blue", "env": "x"}),
]


def _plan(conn: psycopg.Connection[Any], sql: str, params: Any) -> str:
    rows = conn.execute("EXPLAIN " + sql, params).fetchall()
    return "\n".join(row[0] for row in rows)


@pytest.mark.parametrize("where", _FILTER_SHAPES, ids=repr)
async def test_spend_queries_are_served_from_indexes(postgres_url: str, where: SpendFilter) -> None:
    """With sequential scans priced out, no plan reads a whole table: an index serves every
    filter (the planner picks scans on tables this small; on large ones, these indexes)."""
    async with open_postgres_store(postgres_url) as store:
        await append_spend_rows(store)
    with _database(postgres_url) as conn:
        conn.execute("SET enable_seqscan = off")
        plans = [
            _plan(conn, *_spend_logs_sql(where, _POSTGRES, limit=100, newest_first=newest))
            for newest in (True, False)
        ]
        groups: tuple[SpendGroup, ...] = ("owner", "model", "day")
        plans += [_plan(conn, *_spend_totals_sql(where, _POSTGRES, group_by=g)) for g in groups]
    for plan in plans:
        assert "Seq Scan" not in plan, plan
        if where.metadata:
            assert "spend_tags_pkey" in plan, plan


async def test_conversations_and_item_lookups_are_served_from_indexes(postgres_url: str) -> None:
    async with open_postgres_store(postgres_url) as store:
        await store.append(turn("resp_t1", None))
        await store.append(turn("resp_t2", "resp_t1"))
    with _database(postgres_url) as conn:
        conn.execute("SET enable_seqscan = off")
        chain = _plan(
            conn,
            "WITH RECURSIVE chain (id, previous_id, depth) AS ("
            " SELECT id, previous_id, 1 FROM responses WHERE id = %s UNION ALL"
            " SELECT r.id, r.previous_id, chain.depth + 1 FROM chain"
            " JOIN responses AS r ON r.id = chain.previous_id WHERE chain.depth < %s)"
            " SELECT * FROM chain",
            ("resp_t2", 5),
        )
        content = _plan(
            conn,
            "SELECT l.key FROM unnest(%s::bigint[]) AS c (ref) JOIN log AS l"
            " ON l.key BETWEEN c.ref << 32 AND (c.ref << 32) | 4294967295",
            ([1, 2],),
        )
        items = _plan(
            conn,
            "SELECT r.id FROM items AS i JOIN responses AS r ON r.ref = i.response_ref"
            " WHERE i.item_id = ANY(%s)",
            (["a", "b"],),
        )
    for plan in (chain, content, items):
        assert "Seq Scan" not in plan, plan
    assert "responses_id_key" in chain and "log_pkey" in content and "items_pkey" in items


async def test_synchronous_commit_off_is_the_writers_own_session_setting(
    postgres_url: str,
) -> None:
    """``synchronous_commit=False`` (``general_settings.store.synchronous_commit``) sets it off
    for the writer's session only, and the records are written as ever; by default commits
    wait for the server's flush."""
    for wanted, shown in ((True, "on"), (False, "off")):
        async with open_postgres_store(postgres_url, synchronous_commit=wanted) as store:
            records = lifecycle(f"resp_sync_{shown}")
            await store.append(records)
            writer = store._db.writer
            assert writer is not None
            setting = await trio.to_thread.run_sync(_show_synchronous_commit, writer)
            assert setting == (shown,)
            row = await store.get(f"resp_sync_{shown}")
            assert row is not None and row.status.is_terminal
    # Nobody else's session is changed: the database's own setting stands.
    assert _one(postgres_url, "SHOW synchronous_commit") == "on"


def _show_synchronous_commit(conn: psycopg.Connection[Any]) -> tuple[Any, ...] | None:
    return conn.execute("SHOW synchronous_commit").fetchone()
