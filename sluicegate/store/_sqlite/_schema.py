"""The schema: its versioned migrations (``PRAGMA user_version``), and the writer connection, which
migrates the database it opens."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from ...errors import StoreError
from .._sql import _layout
from ._boundary import _begin_immediate, _Conn, _connect

if TYPE_CHECKING:
    import sqlite3

#: Schema migrations; ``_MIGRATIONS[n]`` takes a database from ``user_version`` n to n + 1.
#: Plain DDL separated by ``;`` (no ``;`` inside literals: the scripts are split on it).
_MIGRATIONS: Final[tuple[str, ...]] = (
    """
    CREATE TABLE responses (
        id TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        status TEXT NOT NULL,
        model TEXT NOT NULL,
        deployment_id TEXT,
        provider TEXT,
        background INTEGER NOT NULL,
        store INTEGER NOT NULL,
        metadata BLOB NOT NULL,
        created_at REAL NOT NULL,
        completed_at REAL,
        usage BLOB,
        cost REAL,
        error BLOB,
        deleted INTEGER NOT NULL DEFAULT 0,
        last_seq INTEGER NOT NULL
    );
    CREATE TABLE events (
        response_id TEXT NOT NULL REFERENCES responses (id),
        seq INTEGER NOT NULL,
        kind TEXT NOT NULL,
        ordinal INTEGER,
        payload BLOB,
        at REAL NOT NULL,
        PRIMARY KEY (response_id, seq)
    ) WITHOUT ROWID;
    CREATE UNIQUE INDEX events_one_terminal ON events (response_id) WHERE kind = 'ended';
    CREATE INDEX responses_by_status ON responses (status);
    CREATE INDEX responses_by_owner ON responses (owner, created_at);
    CREATE INDEX responses_by_model ON responses (model, created_at);
    CREATE INDEX responses_by_created ON responses (created_at)
    """,
    # 2: conversations (previous_id), spend logs (token counts, timings, spend metadata and its
    # tags), retention (purged) and recovery by instance. Token counts of existing rows are
    # taken from their usage, so spend totals cover them too.
    """
    ALTER TABLE responses ADD COLUMN previous_id TEXT;
    ALTER TABLE responses ADD COLUMN upstream_id TEXT;
    ALTER TABLE responses ADD COLUMN spend_metadata BLOB NOT NULL DEFAULT '{}';
    ALTER TABLE responses ADD COLUMN ttft REAL;
    ALTER TABLE responses ADD COLUMN duration REAL;
    ALTER TABLE responses ADD COLUMN input_tokens INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE responses ADD COLUMN output_tokens INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE responses ADD COLUMN cached_tokens INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE responses ADD COLUMN reasoning_tokens INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE responses ADD COLUMN total_tokens INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE responses ADD COLUMN estimated INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE responses ADD COLUMN purged INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE responses ADD COLUMN instance TEXT;
    UPDATE responses SET
        input_tokens = coalesce(CAST(json_extract(CAST(usage AS TEXT),
            '$.input_tokens') AS INTEGER), 0),
        output_tokens = coalesce(CAST(json_extract(CAST(usage AS TEXT),
            '$.output_tokens') AS INTEGER), 0),
        cached_tokens = coalesce(CAST(json_extract(CAST(usage AS TEXT),
            '$.input_tokens_details.cached_tokens') AS INTEGER), 0),
        reasoning_tokens = coalesce(CAST(json_extract(CAST(usage AS TEXT),
            '$.output_tokens_details.reasoning_tokens') AS INTEGER), 0),
        total_tokens = coalesce(CAST(json_extract(CAST(usage AS TEXT),
            '$.total_tokens') AS INTEGER), 0)
    WHERE usage IS NOT NULL AND json_valid(CAST(usage AS TEXT));
    CREATE TABLE spend_tags (
        key TEXT NOT NULL,
        value BLOB NOT NULL,
        response_id TEXT NOT NULL REFERENCES responses (id),
        PRIMARY KEY (key, value, response_id)
    ) WITHOUT ROWID;
    CREATE INDEX responses_to_purge ON responses (completed_at) WHERE purged = 0;
    DROP INDEX responses_by_status;
    CREATE INDEX responses_unfinished ON responses (status)
        WHERE status IN ('queued', 'in_progress')
    """,
    # 3: the proxy's virtual API keys. Only the hash of a secret is kept; models and
    # metadata are JSON (models NULL: every model).
    """
    CREATE TABLE keys (
        key_id TEXT PRIMARY KEY,
        key_hash TEXT UNIQUE NOT NULL,
        alias TEXT,
        models BLOB,
        rpm INTEGER,
        tpm INTEGER,
        max_parallel_requests INTEGER,
        max_budget REAL,
        expires_at REAL,
        created_at REAL NOT NULL,
        metadata BLOB NOT NULL,
        deleted_at REAL
    )
    """,
    # 4: files and batches made through the gateway: owner, deployment and raw ID,
    # the object as last seen; a batch's output file names its batch.
    """
    CREATE TABLE objects (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        owner TEXT NOT NULL,
        model TEXT NOT NULL,
        deployment_id TEXT NOT NULL,
        provider TEXT NOT NULL,
        raw_id TEXT NOT NULL,
        created_at REAL NOT NULL,
        data BLOB NOT NULL,
        spend_metadata BLOB NOT NULL,
        batch_id TEXT,
        settled INTEGER NOT NULL DEFAULT 0,
        deleted_at REAL
    );
    CREATE UNIQUE INDEX objects_by_upstream ON objects (deployment_id, raw_id);
    CREATE INDEX objects_by_owner ON objects (kind, owner, created_at);
    CREATE INDEX objects_by_created ON objects (kind, created_at)
    """,
    # 5: output items by their ID, so replayed items and item references find the response
    # (and deployment) that made them. An index on the items' own JSON, not a table: nothing
    # more to write or keep in step, and content removal (a NULL payload) drops the entry.
    """
    CREATE INDEX events_by_item ON events (json_extract(CAST(payload AS TEXT), '$.id'))
        WHERE kind = 'item_done'
    """,
    # 6: compact keys. Events and spend tags are keyed by the response's integer ``ref`` (its
    # rowid), not by its ``resp_`` ID (some 150 characters, repeated in every event row and its
    # indexes). ``events`` becomes a rowid table: rows are appended in commit order, so pages
    # fill, and a large payload stays on its page (a WITHOUT ROWID row spills past ~1 KB to an
    # overflow page of its own). The tables are rebuilt, every row kept: ``ref`` is the old
    # rowid, so the order of insertion (the tie-break of spend logs) is kept too.
    """
    ALTER TABLE responses RENAME TO responses_5;
    ALTER TABLE events RENAME TO events_5;
    ALTER TABLE spend_tags RENAME TO spend_tags_5;
    CREATE TABLE responses (
        ref INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        owner TEXT NOT NULL,
        status TEXT NOT NULL,
        model TEXT NOT NULL,
        deployment_id TEXT,
        provider TEXT,
        background INTEGER NOT NULL,
        store INTEGER NOT NULL,
        metadata BLOB NOT NULL,
        created_at REAL NOT NULL,
        completed_at REAL,
        usage BLOB,
        cost REAL,
        error BLOB,
        deleted INTEGER NOT NULL DEFAULT 0,
        last_seq INTEGER NOT NULL,
        previous_id TEXT,
        upstream_id TEXT,
        spend_metadata BLOB NOT NULL DEFAULT '{}',
        ttft REAL,
        duration REAL,
        input_tokens INTEGER NOT NULL DEFAULT 0,
        output_tokens INTEGER NOT NULL DEFAULT 0,
        cached_tokens INTEGER NOT NULL DEFAULT 0,
        reasoning_tokens INTEGER NOT NULL DEFAULT 0,
        total_tokens INTEGER NOT NULL DEFAULT 0,
        estimated INTEGER NOT NULL DEFAULT 0,
        purged INTEGER NOT NULL DEFAULT 0,
        instance TEXT
    );
    CREATE TABLE events (
        response_ref INTEGER NOT NULL REFERENCES responses (ref),
        seq INTEGER NOT NULL,
        kind TEXT NOT NULL,
        ordinal INTEGER,
        payload BLOB,
        at REAL NOT NULL,
        PRIMARY KEY (response_ref, seq)
    );
    CREATE TABLE spend_tags (
        key TEXT NOT NULL,
        value BLOB NOT NULL,
        response_ref INTEGER NOT NULL REFERENCES responses (ref),
        PRIMARY KEY (key, value, response_ref)
    ) WITHOUT ROWID;
    INSERT INTO responses (ref, id, owner, status, model, deployment_id, provider, background,
        store, metadata, created_at, completed_at, usage, cost, error, deleted, last_seq,
        previous_id, upstream_id, spend_metadata, ttft, duration, input_tokens, output_tokens,
        cached_tokens, reasoning_tokens, total_tokens, estimated, purged, instance)
    SELECT rowid, id, owner, status, model, deployment_id, provider, background, store,
        metadata, created_at, completed_at, usage, cost, error, deleted, last_seq, previous_id,
        upstream_id, spend_metadata, ttft, duration, input_tokens, output_tokens, cached_tokens,
        reasoning_tokens, total_tokens, estimated, purged, instance
    FROM responses_5 ORDER BY rowid;
    INSERT INTO events (response_ref, seq, kind, ordinal, payload, at)
    SELECT r.ref, e.seq, e.kind, e.ordinal, e.payload, e.at
    FROM events_5 AS e JOIN responses AS r ON r.id = e.response_id ORDER BY r.ref, e.seq;
    INSERT INTO spend_tags (key, value, response_ref)
    SELECT t.key, t.value, r.ref FROM spend_tags_5 AS t JOIN responses AS r ON r.id = t.response_id;
    DROP TABLE spend_tags_5;
    DROP TABLE events_5;
    DROP TABLE responses_5;
    CREATE UNIQUE INDEX events_one_terminal ON events (response_ref) WHERE kind = 'ended';
    CREATE INDEX events_by_item ON events (json_extract(CAST(payload AS TEXT), '$.id'))
        WHERE kind = 'item_done';
    CREATE INDEX responses_by_owner ON responses (owner, created_at);
    CREATE INDEX responses_by_model ON responses (model, created_at);
    CREATE INDEX responses_by_created ON responses (created_at);
    CREATE INDEX responses_to_purge ON responses (completed_at) WHERE purged = 0;
    CREATE INDEX responses_unfinished ON responses (status)
        WHERE status IN ('queued', 'in_progress')
    """,
    # 7: the log in compact rows. A row holds a run of one response's records written in one
    # transaction (at concurrency 1, all of a response; cut past about 1 KB), as a JSON array, keyed
    # by one integer (:func:`_log_key`): no separate primary-key index, and a row or two to insert
    # per response, not one per record. Output items are found by ID through ``items`` (an
    # expression index holds one value per row, and a row may hold many items). The one-end rule is
    # the writer's (it holds the write lock while it checks): its unique index goes, one page less
    # per commit. An unfinished response is no longer in the index of what to purge (it would be
    # written twice: once under NULL, once under its end). Each record of schema 6 becomes a row of
    # its own.
    """
    CREATE TABLE log (
        key INTEGER PRIMARY KEY,
        kinds INTEGER NOT NULL,
        content_size INTEGER NOT NULL,
        last_event INTEGER,
        at REAL NOT NULL,
        body BLOB NOT NULL
    );
    CREATE TABLE items (
        item_id TEXT NOT NULL,
        response_ref INTEGER NOT NULL,
        PRIMARY KEY (item_id, response_ref)
    ) WITHOUT ROWID;
    INSERT INTO log (key, kinds, content_size, last_event, at, body)
    SELECT (response_ref << 32) | seq, 1 << code,
        CASE WHEN code IN (0, 2) THEN coalesce(length(payload), 0) ELSE 0 END,
        CASE WHEN code = 3 THEN ordinal END,
        at,
        CAST('[[' || code || ',' || coalesce(ordinal, 'null') || ','
            || coalesce(CAST(payload AS TEXT), 'null') || ']]' AS BLOB)
    FROM (
        SELECT *, CASE kind WHEN 'accepted' THEN 0 WHEN 'routed' THEN 1 WHEN 'item_done' THEN 2
            WHEN 'stream_event' THEN 3 WHEN 'settled' THEN 4 WHEN 'ended' THEN 5 ELSE 6 END AS code
        FROM events
    ) ORDER BY response_ref, seq;
    INSERT OR IGNORE INTO items (item_id, response_ref)
    SELECT json_extract(CAST(payload AS TEXT), '$.id'), response_ref FROM events
    WHERE kind = 'item_done' AND payload IS NOT NULL AND json_valid(CAST(payload AS TEXT))
        AND json_type(CAST(payload AS TEXT), '$.id') = 'text';
    DROP TABLE events;
    DROP INDEX responses_to_purge;
    CREATE INDEX responses_to_purge ON responses (completed_at)
        WHERE purged = 0 AND completed_at IS NOT NULL
    """,
    # 8: objects by purpose, so one conversation's items are a range of an index rather than
    # a scan of every conversation's. The expression is the one the queries filter on
    # (``_spend._DIALECT.purpose_is``): SQLite uses an index on an expression only for that
    # very expression.
    """
    CREATE INDEX objects_by_purpose
        ON objects (kind, json_extract(CAST(data AS TEXT), '$.purpose'), created_at, id)
    """,
)
SCHEMA_VERSION: Final = len(_MIGRATIONS)

# The log's layout (record kinds, keys, rows) is the SQL backends' (``.._sql._layout``); the
# kinds are named here too, next to the migrations that number them.
_ACCEPTED: Final = _layout._ACCEPTED
_ROUTED: Final = _layout._ROUTED
_ITEM_DONE: Final = _layout._ITEM_DONE
_SETTLED: Final = _layout._SETTLED
_ENDED: Final = _layout._ENDED


def _open_writer(target: str) -> _Conn:
    db = _connect(target)
    try:
        db.execute("PRAGMA journal_mode = WAL")  # answers "memory" for :memory:, which is fine
        db.execute("PRAGMA synchronous = NORMAL")
        # The writer checkpoints itself, in a worker thread (SQLiteStore._checkpoint): an
        # automatic checkpoint would run inside a commit, which may be on the trio thread.
        db.execute("PRAGMA wal_autocheckpoint = 0")
        # A WAL reset after a checkpoint truncates the file (it would keep the largest size it
        # ever reached): its size is then what it holds, which paces the checkpoints.
        db.execute("PRAGMA journal_size_limit = 0")
        db.execute("PRAGMA busy_timeout = 0")  # see _begin_immediate
        _migrate(db)
        file = db.execute("PRAGMA database_list").fetchone()[2]
    except BaseException:
        db.close()
        raise
    return _Conn(db, wal=f"{file}-wal" if file else None)


def _migrate(db: sqlite3.Connection) -> None:
    # IMMEDIATE: two processes opening one file at once migrate one after the other.
    _begin_immediate(db)
    try:
        (version,) = db.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"the database has schema version {version}; this sluicegate knows "
                f"{SCHEMA_VERSION} at most"
            )
        for script in _MIGRATIONS[version:]:
            for statement in script.split(";"):
                if statement.strip():
                    db.execute(statement)
        if version != SCHEMA_VERSION:
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION:d}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
