"""What the SQL backends (SQLite, PostgreSQL) share. They keep the same log (compact rows of a
response's records, keyed by its ``ref`` and sequence number) and the same projection, so
everything but the SQL, the connections and the exception boundary is written once:

- ``_layout``: the JSON of stored values, the record kinds, the log's keys and rows, the spend
  columns a usage fills in;
- ``_encode``: records into payloads and projection changes, in the caller's task;
- ``_jobs``: what the writer's channel carries;
- ``_decode``: projection rows, log rows' records, final responses, conversations, spend rows,
  keys and objects, from the rows a backend reads;
- ``_queries``: the SQL both backends build alike (spend, pages of objects), given a dialect;
- ``_fold``: appends folded into a transaction's writes with the log's rules checked, content
  removal, and the driver of a group-commit transaction over a backend's ``_Transaction``;
- ``_store``: the writer actor (group commit, enqueue with linger) and the public methods, which
  a backend's store subclasses.
"""
