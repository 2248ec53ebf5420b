"""The SQLite backend: the embedded default store.

Theory of operation:

- **One writer actor** owns the write connection. :meth:`SQLiteStore.append` encodes its records (in
  the caller's task, so a record that is not JSON fails there), puts them on a bounded channel with
  a :class:`trio.Event`, and waits. The writer takes everything queued (until ``batch_max`` records;
  one append is never split) and writes it in **one** transaction: this is group commit, many
  responses share one fsync. The appends of a transaction are *folded* (``.._sql._fold._Fold``): the
  log's rules are checked in Python, under the write lock, append by append, and an append that
  breaks them (a second ``Ended``) is left out whole and refused alone; then each response gets one
  projection INSERT or UPDATE and one run of log rows, however many appends and records name it. A
  value only the database can refuse (an integer past 64 bits, a second acceptance of a response it
  holds) rolls the transaction back, and it is written again one append at a time, each in its own
  ``SAVEPOINT``, which refuses that append alone (so are keys, objects and purges, always). A failed
  ``COMMIT`` fails them all. :meth:`SQLiteStore.enqueue` puts records on the same channel and
  returns without waiting for the commit; nobody waits for its verdict, so a refusal is logged (the
  response's later appends then fail on the log's rules). One channel keeps the order: whatever is
  queued first is committed first. An enqueued record lingers (``linger``, 50 ms) for more work
  before it is committed alone, so at low concurrency a response's acceptance and its end share one
  transaction.
- **Reads** run on a small pool of read connections; WAL lets them run while the writer commits.
  ``:memory:`` is one database per connection, so an in-memory store has one connection that
  reads and the writer share under a lock (a shared-cache URI would let readers see it too, but
  shared cache locks tables and fails readers with ``SQLITE_LOCKED`` while a write is open).
- **Threads or inline**: by default a file store does its SQL in worker threads, so the trio loop
  never waits on disk. An in-memory store does it inline, on the trio thread (still with a
  checkpoint around each read and commit): memory never waits on disk, and a test running a
  gateway on it under ``autojump_clock`` stays deterministic (the clock would jump while a task
  waits on a worker thread, firing unrelated deadlines). ``threads=`` overrides either default.
  Even a threaded store commits *small* transactions (up to 32 appends and 64 KiB; what
  concurrency 1 to 16 makes) inline: a worker thread's round trip costs more CPU than such a
  commit. That is safe for the
  loop because the write connection never waits: its busy timeout is 0, so a database another
  process is writing sends the commit to a worker thread to wait there (backing off, up to
  5 s), and it never checkpoints inside a commit (``wal_autocheckpoint=0``): the writer runs a
  PASSIVE checkpoint in a worker thread each time the WAL grew by 16 MB. It goes by the WAL
  file's size, read after each commit (a small commit writes whole pages of the table and of
  each index it touches, many times its records' bytes); ``journal_size_limit=0`` truncates the
  file when the WAL is reset, so its size is what it holds.
- **Durability**: ``journal_mode=WAL`` with ``synchronous=NORMAL``. A committed append survives a
  crash of the process (it is in the WAL file before ``COMMIT`` returns, and the caller hears
  of it after); after a power loss or OS crash the last few transactions may be lost (never
  corrupted). ``synchronous=FULL`` would close that gap with one more fsync per group commit;
  ``OFF`` would risk the file itself and is never used.
- **Instances and recovery**: every opened store is an *instance* with a random ID, written to
  ``responses.instance`` by ``Accepted``. A file store holds an exclusive ``flock`` on
  ``<db>-instances/<instance>.lock`` for its lifetime (the file appears already locked: it is
  locked under a temporary name, then renamed) and removes it on close. Several processes (or
  stores in one process) may share a file, so :meth:`SQLiteStore.recover` ends only the
  unfinished responses of *dead* instances: no instance recorded (schema 1), no lock file, or a
  lock file whose lock it can take (the process died holding it; it deletes the file once those
  responses are ended). Never its own. An in-memory store is alone with its database.
- **Spend**: the projection keeps the token counts (from ``Settled.usage``), cost, timings and
  the caller's ``spend_metadata``, which content removal never touches. Each top-level pair of
  ``spend_metadata`` is a row of ``spend_tags`` (key, canonical JSON value, response), so a
  metadata filter is a primary-key search; owner, model and time filters use the indexes of
  ``responses``. Spend queries never scan a table (only totals with no filter at all read
  every row, as they must).
- **Retention**: :meth:`SQLiteStore.purge` removes the content of responses that ended before a
  time, as ``Deleted`` does but without a tombstone. It goes through the writer's channel (at
  most ``batch_max`` responses per transaction), so it is ordered with appends and never races
  one.
- **Keys**: the proxy's virtual API keys are rows of ``keys``, found by the hash of the
  secret (its UNIQUE index). :meth:`SQLiteStore.put_key` and :meth:`SQLiteStore.delete_key` go
  through the writer's channel like a purge, so they are ordered with the appends around them
  and never need a write lock of their own. A deleted key keeps its row (``deleted_at``), so
  neither its ID nor its hash is ever taken again.
- **Storage**: a response's projection row has an integer ``ref`` (its rowid); its log rows,
  spend tags and item IDs are keyed by it, not by the ``resp_`` ID (some 150 characters),
  which is stored once, in its row and the UNIQUE index that finds it. The log (``log``) is
  kept in compact rows: a row holds a run of one response's records written in one
  transaction (at concurrency 1, all of them), as one JSON array of ``[kind, ordinal,
  payload]``, each payload encoded once in the caller's task and joined as bytes. Its key is
  the ``ref`` and the first record's sequence number (``ref << 32 | seq``): a response's rows
  are one range of the table's own B-tree, in order, with no index of their own. A run is cut
  past about 1 KB, so that rows pack pages well. ``kinds`` (a bit per kind), ``content_size``
  and ``last_event`` let reads skip rows without loading them. Output items are found by ID
  through ``items`` (item ID, ``ref``): one row per item; a row of the log may hold many.
  Each record's payload holds what the row does not: the fields that ``Accepted`` and
  ``Ended`` set once (owner, model, status, times, ...) are in the row alone; ``Routed`` and
  ``Settled`` are positional arrays (nothing reads them back; the row holds the last of
  each); the final response of an ``Ended`` leaves out its own ID, the output items that
  ``ItemDone`` records of the same append hold byte for byte (the recorder appends them
  together) and its usage when a ``Settled`` of the append holds it, which its reader puts
  back. The unique index that once kept one ``Ended`` per response is gone: the fold checks
  that rule under the write lock, as it checks the others.
- **Schema**: ``PRAGMA user_version`` is the schema version; :data:`_MIGRATIONS` are applied in
  order, in one ``BEGIN IMMEDIATE`` transaction, when a store opens.
- ``sqlite3`` exceptions (and ``OSError`` of the instance lock files) are translated into
  :mod:`sluicegate.errors` classes in :func:`._boundary._guarded`, and nowhere else: nothing
  outside this package imports ``sqlite3``.

What does not depend on SQLite (the log's layout, encoding, folding, the writer actor and the
public methods, what reads make of rows) is the SQL backends' common part, ``.._sql``, which the
PostgreSQL backend shares. One module per concern, each importing only those listed before it:

- ``_boundary``: the ``sqlite3`` boundary (errors, connections, threads or inline);
- ``_schema``: the migrations (and the record kinds they number); opening the writer connection
  migrates;
- ``_spend``: SQLite's dialect of the statements both backends build (spend queries, pages of
  objects, content removal);
- ``_recovery``: the instances' lock files and the unfinished responses they left;
- ``_retention``: the retention purge;
- ``_keys``: writing keys and objects, and reading objects;
- ``_encode``: the records' encoding (the SQL backends'), which SQLite binds as it is;
- ``_writer``: a folded batch's statements, the jobs', and the group-commit transaction;
- ``_reads``: the projection rows, the records' payloads, item origins and conversations;
- ``_store``: :class:`SQLiteStore` (its transaction, inline or in a thread, checkpoints, reads,
  recovery) and :func:`open_sqlite_store`.
"""

from __future__ import annotations

from ._schema import SCHEMA_VERSION as SCHEMA_VERSION
from ._store import SQLiteStore as SQLiteStore
from ._store import open_sqlite_store as open_sqlite_store

__all__ = ["SCHEMA_VERSION", "SQLiteStore", "open_sqlite_store"]
