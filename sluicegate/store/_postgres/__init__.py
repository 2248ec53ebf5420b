"""The PostgreSQL backend: one database shared by many instances (processes, machines).

Theory of operation:

- **The same log as SQLite.** Both SQL backends keep one layout (``.._sql``): a projection row per
  response with an integer ``ref``, and its records in compact log rows keyed by ``ref`` and
  sequence number, their payloads encoded once in the caller's task. Encoding, folding appends
  (the log's rules checked in Python, an append that breaks them refused alone), the
  group-commit writer actor, content removal and everything reads make of the rows are shared;
  this package brings the SQL, the connections and the exception boundary. JSON is stored as
  ``bytea``, byte for byte as encoded: reads parse it, the server never does.
- **Threads.** psycopg's synchronous connections, used from trio worker threads: nothing blocks
  the loop on the network. The writer has a connection of its own; reads, heartbeats and
  recovery take one from a ``psycopg_pool.ConnectionPool`` of ``pool_size`` (at most that many
  reads in flight, so no thread waits on the pool).
- **Group commit**, as SQLite's: :meth:`PostgresStore.append` queues its encoded records on a
  bounded channel and waits; the writer takes everything queued (until ``batch_max`` records;
  one append never split) into one transaction. A batch of appends is **pipelined**, in the
  implicit transaction the server runs until the pipeline's sync (no ``BEGIN``, no ``COMMIT``):
  the states of the responses it continues are read (``SELECT ... FOR UPDATE``, in ID order),
  the log's rules checked in Python, and **one statement** writes everything, whatever the
  number of responses and tables: new and updated projection rows, spend tags, log rows and
  items, each table's rows bound as one JSON array that the server turns into rows
  (``json_to_recordset``). That is two round trips, one for a batch of new responses only, and
  a fraction of the client's CPU of a statement per table (psycopg costs some 45 µs a
  statement, 15 a row of an ``executemany``). The row locks keep another instance's writer (or
  recovery) off those responses until the commit, so the rules hold across instances: two
  instances ending one response end it once. A value the database refuses (an integer past 64
  bits; a second acceptance another instance committed first) fails that statement; the batch
  is written again one job at a time in an explicit transaction, each in a ``SAVEPOINT``, which
  refuses that job alone (so are keys, objects and purges, always). A transaction that lost a
  deadlock or a serialization conflict is tried again. New responses take their ``ref`` from
  the ``response_refs`` sequence, a block of ``_REF_BLOCK`` at a time.
  :meth:`PostgresStore.enqueue` (with ``linger``), keys, objects and purges go through the same
  channel, in order.
- **Unreachable, then back.** A connection that fails (refused, reset, the server shutting
  down, out of connection slots) is a :class:`~sluicegate.errors.StoreUnavailableError` (503)
  within seconds: connecting times out after ``_CONNECT_TIMEOUT``, a read waits as long for a
  pool connection, and TCP keepalives and a user timeout end a connection to a server that
  vanished. The store needs no reopening: before a transaction, the writer replaces its
  connection if it broke or the server closed it meanwhile (an idle connection with something
  to read: one ``poll``, no round trip); the pool checks each connection it lends the same way.
  A transaction cut by a failure in its commit may have committed: its appends fail anyway.
- **Instances and recovery.** Every open store registers a row in ``instances`` (ID, host, pid,
  the digest of its response-ID secret, its lease) and renews ``heartbeat_at`` every
  ``heartbeat`` seconds, with the *server's* ``now()``, so machines' clocks do not matter; its
  row goes when it closes. An instance is dead when it has no row or its heartbeat is older
  than its lease. :meth:`PostgresStore.recover` ends the unfinished responses of dead instances
  as failed (through the writer: the row locks make it once, however many instances recover at
  once), never a live instance's or its own, then removes the dead instances' rows. It runs
  when a store opens and after every heartbeat, so the responses of an instance killed
  outright end within about ``lease + heartbeat`` seconds. An instance that finds its own row
  gone (another judged it dead: its heartbeat was late by more than its lease) registers again
  and logs an error.
- **One response-ID secret.** A response ID minted by one instance must be readable by every
  other: at open, under the advisory lock, a store whose secret's digest differs from a live
  instance's (or where either has none) refuses to open and says which instance and what to do.
  Alone on the database, no digest is fine.
- **Schema**: the ``schema_version`` table; :data:`_schema._MIGRATIONS` are applied in one
  transaction under ``pg_advisory_xact_lock`` when a store opens (with the instance's
  registration) or by :func:`migrate_postgres`. A newer schema is refused.
- ``psycopg`` exceptions are translated into :mod:`sluicegate.errors` classes in
  :func:`._boundary._guarded`, and nowhere else. ``_boundary`` is the one module that imports
  ``psycopg``, and only when a store opens: ``sluicegate.store`` imports without the optional
  driver (``pip install 'sluicegate[postgres]'``).

One module per concern, each importing only those listed before it:

- ``_schema``: the migrations, and applying them under the advisory lock;
- ``_instances``: registration (with the secret check), heartbeats, dead instances' unfinished
  responses;
- ``_writer``: the refs, a folded batch's statements, the jobs', the pipelined transaction;
- ``_reads``: the reads' SQL;
- ``_boundary``: the ``psycopg`` boundary (errors, the writer's connection, the pool);
- ``_store``: :class:`PostgresStore` (the transaction, reads, heartbeat and recovery),
  :func:`open_postgres_store` and :func:`migrate_postgres`.
"""

from __future__ import annotations

from ._schema import POSTGRES_SCHEMA_VERSION as POSTGRES_SCHEMA_VERSION
from ._store import PostgresStore as PostgresStore
from ._store import migrate_postgres as migrate_postgres
from ._store import open_postgres_store as open_postgres_store

__all__ = ["POSTGRES_SCHEMA_VERSION", "PostgresStore", "migrate_postgres", "open_postgres_store"]
