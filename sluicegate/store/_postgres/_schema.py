"""The schema: its versioned migrations (the ``schema_version`` table), applied in one
transaction under an advisory lock, so instances starting together migrate once; and the
dialect of the statements both backends run alike."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from ...errors import StoreError
from .._sql._queries import _Dialect

if TYPE_CHECKING:
    import psycopg

#: The key of the transaction-level advisory lock that migrations and instance registration
#: hold: ``sluicega`` as a big-endian 64-bit integer.
_LOCK_KEY: Final = int.from_bytes(b"sluicega", "big")
#: How many ``ref`` a writer takes from the ``response_refs`` sequence at once (its increment):
#: a new response costs no round trip for its ref, and a writer that closes wastes less than a
#: block (a ref has 31 bits: billions of blocks).
_REF_BLOCK: Final = 128

#: Schema migrations; ``_MIGRATIONS[n]`` takes a database from version n to n + 1. Each is one
#: script of DDL (no bound parameters), run in the migrating transaction.
_MIGRATIONS: Final[tuple[str, ...]] = (
    # 1: the projection (``responses``), the log in compact rows keyed by the response's
    # ``ref`` and sequence number (``.._sql._layout``), output items by ID, spend tags, the
    # proxy's keys, files and batches, and the instances sharing the database. JSON is kept as
    # ``bytea``, as the writer encoded it: the server never parses it (and ``jsonb`` refuses
    # ``\u0000``, which JSON allows). Text keys sort and compare bytewise (``C``), as SQLite's
    # do. A log row stays in its page up to 8 KB, uncompressed (``EXTERNAL``): compressing
    # every row costs the writer's transaction more than it saves.
    f"""
    CREATE TABLE schema_version (version integer NOT NULL);
    INSERT INTO schema_version (version) VALUES (0);
    CREATE SEQUENCE response_refs AS bigint INCREMENT BY {_REF_BLOCK} MINVALUE 1 START 1;
    CREATE TABLE responses (
        ref bigint PRIMARY KEY,
        id text COLLATE "C" NOT NULL UNIQUE,
        owner text COLLATE "C" NOT NULL,
        status text COLLATE "C" NOT NULL,
        model text COLLATE "C" NOT NULL,
        deployment_id text COLLATE "C",
        provider text COLLATE "C",
        background boolean NOT NULL,
        store boolean NOT NULL,
        metadata bytea NOT NULL,
        created_at double precision NOT NULL,
        completed_at double precision,
        usage bytea,
        cost double precision,
        error bytea,
        deleted boolean NOT NULL DEFAULT false,
        last_seq bigint NOT NULL,
        previous_id text COLLATE "C",
        upstream_id text COLLATE "C",
        spend_metadata bytea NOT NULL,
        ttft double precision,
        duration double precision,
        input_tokens bigint NOT NULL DEFAULT 0,
        output_tokens bigint NOT NULL DEFAULT 0,
        cached_tokens bigint NOT NULL DEFAULT 0,
        reasoning_tokens bigint NOT NULL DEFAULT 0,
        total_tokens bigint NOT NULL DEFAULT 0,
        estimated boolean NOT NULL DEFAULT false,
        purged boolean NOT NULL DEFAULT false,
        instance text COLLATE "C"
    );
    CREATE INDEX responses_by_owner ON responses (owner, created_at, ref);
    CREATE INDEX responses_by_model ON responses (model, created_at, ref);
    CREATE INDEX responses_by_created ON responses (created_at, ref);
    CREATE INDEX responses_to_purge ON responses (completed_at)
        WHERE NOT purged AND completed_at IS NOT NULL;
    CREATE INDEX responses_unfinished ON responses (instance)
        WHERE status IN ('queued', 'in_progress');
    CREATE TABLE log (
        key bigint PRIMARY KEY,
        kinds integer NOT NULL,
        content_size integer NOT NULL,
        last_event bigint,
        at double precision NOT NULL,
        body bytea NOT NULL
    ) WITH (toast_tuple_target = 8160);
    ALTER TABLE log ALTER COLUMN body SET STORAGE EXTERNAL;
    CREATE TABLE items (
        item_id text COLLATE "C" NOT NULL,
        response_ref bigint NOT NULL,
        PRIMARY KEY (item_id, response_ref)
    );
    CREATE TABLE spend_tags (
        key text COLLATE "C" NOT NULL,
        value bytea NOT NULL,
        response_ref bigint NOT NULL,
        PRIMARY KEY (key, value, response_ref)
    );
    CREATE TABLE keys (
        key_id text COLLATE "C" PRIMARY KEY,
        key_hash text COLLATE "C" NOT NULL UNIQUE,
        alias text,
        models bytea,
        rpm bigint,
        tpm bigint,
        max_parallel_requests bigint,
        max_budget double precision,
        expires_at double precision,
        created_at double precision NOT NULL,
        metadata bytea NOT NULL,
        deleted_at double precision
    );
    CREATE TABLE objects (
        id text COLLATE "C" PRIMARY KEY,
        kind text COLLATE "C" NOT NULL,
        owner text COLLATE "C" NOT NULL,
        model text COLLATE "C" NOT NULL,
        deployment_id text COLLATE "C" NOT NULL,
        provider text COLLATE "C" NOT NULL,
        raw_id text COLLATE "C" NOT NULL,
        created_at double precision NOT NULL,
        data bytea NOT NULL,
        spend_metadata bytea NOT NULL,
        batch_id text COLLATE "C",
        settled boolean NOT NULL DEFAULT false,
        deleted_at double precision,
        purpose text COLLATE "C"
    );
    CREATE UNIQUE INDEX objects_by_upstream ON objects (deployment_id, raw_id);
    CREATE INDEX objects_by_owner ON objects (kind, owner, created_at, id);
    CREATE INDEX objects_by_created ON objects (kind, created_at, id);
    CREATE TABLE instances (
        id text COLLATE "C" PRIMARY KEY,
        started_at timestamptz NOT NULL,
        heartbeat_at timestamptz NOT NULL,
        lease double precision NOT NULL,
        id_secret_digest text,
        hostname text NOT NULL,
        pid integer NOT NULL
    )
    """,
    # 2: objects by purpose, so one conversation's items are a range of an index rather than
    # a scan of every conversation's.
    """
    CREATE INDEX objects_by_purpose ON objects (kind, purpose, created_at, id)
    """,
)
POSTGRES_SCHEMA_VERSION: Final = len(_MIGRATIONS)

#: What the statements both backends run alike (``.._sql._queries``) say in PostgreSQL.
_POSTGRES: Final = _Dialect(
    mark="%s",
    tag_join="JOIN",
    # ``day`` is the UTC date of creation.
    group_keys={
        "owner": "r.owner",
        "model": "r.model",
        "day": "to_char(to_timestamp(r.created_at) AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
    },
    cost_sum="coalesce(sum(r.cost), 0)",
    purpose_is="purpose = %s",
)


def _migrate(conn: psycopg.Connection[Any]) -> tuple[int, int]:
    """Take the advisory lock and apply the pending migrations, in the caller's open
    transaction (whose commit releases the lock); returns the version before and after.

    Raises:
        StoreError: the database has a newer schema than this code knows.
    """
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
    (table,) = _one(conn, "SELECT to_regclass('schema_version') IS NOT NULL")
    version = _one(conn, "SELECT version FROM schema_version")[0] if table else 0
    if version > POSTGRES_SCHEMA_VERSION:
        raise StoreError(
            f"the database has schema version {version}; this sluicegate knows "
            f"{POSTGRES_SCHEMA_VERSION} at most"
        )
    for script in _MIGRATIONS[version:]:
        conn.execute(script)
    if version != POSTGRES_SCHEMA_VERSION:
        conn.execute("UPDATE schema_version SET version = %s", (POSTGRES_SCHEMA_VERSION,))
    return version, POSTGRES_SCHEMA_VERSION


def _one(conn: psycopg.Connection[Any], sql: str) -> tuple[Any, ...]:
    row = conn.execute(sql).fetchone()
    if row is None:
        raise StoreError(f"the database holds no schema version ({sql})")
    return tuple(row)
