"""Instances: every open store registers a row (its ID, host and pid, the digest of its
response-ID secret and its lease) and renews its heartbeat; recovery tells a dead instance from a
live one by the server's clock, and finds the unfinished responses the dead ones left."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

import attrs

from ...errors import StoreError
from ._schema import _migrate

if TYPE_CHECKING:
    from collections.abc import Sequence

    import psycopg

#: An instance (a row of ``instances``) is live while its last heartbeat, by the server's clock
#: (so machines' clocks do not matter), is younger than the lease it declared.
_LIVE: Final = "heartbeat_at >= now() - lease * interval '1 second'"
_INSERT: Final = (
    "INSERT INTO instances (id, started_at, heartbeat_at, lease, id_secret_digest, hostname,"
    " pid) VALUES (%s, now(), now(), %s, %s, %s, %s)"
)
#: What the digest of a secret made at start (not configured) begins with: no other server
#: can have that secret (the workers of one ``sluicegate serve`` share theirs).
_GENERATED: Final = "generated:"
#: Literal statuses, as in the partial index ``responses_unfinished``.
_UNFINISHED: Final = "status IN ('queued', 'in_progress')"


@attrs.frozen(kw_only=True)
class _Registration:
    """What an instance's row says of it."""

    instance: str
    #: Seconds without a heartbeat after which the others judge it dead.
    lease: float
    #: The digest of its response-ID secret; None: unknown.
    digest: str | None
    hostname: str
    pid: int

    def values(self) -> tuple[Any, ...]:
        return (self.instance, self.lease, self.digest, self.hostname, self.pid)


def _register(conn: psycopg.Connection[Any], me: _Registration) -> tuple[int, int]:
    """Migrate, check that the live instances share this one's response-ID secret, and insert
    its row: one transaction under the advisory lock, so instances starting together see each
    other. Returns the schema version before and after.

    Raises:
        StoreError: a newer schema, or a live instance with another secret (or none).
    """
    with conn.transaction():
        versions = _migrate(conn)
        live = conn.execute(
            f"SELECT hostname, pid, id_secret_digest FROM instances WHERE id <> %s AND {_LIVE}"
            " ORDER BY started_at",
            (me.instance,),
        ).fetchall()
        refusal = _secret_refusal(me.digest, live)
        if refusal is not None:
            raise refusal
        conn.execute(_INSERT, me.values())
    return versions


def _secret_refusal(mine: str | None, live: Sequence[Sequence[Any]]) -> StoreError | None:
    """Why this instance may not share the database with the live ones (rows of hostname, pid,
    digest), if it may not: response IDs minted by one must be readable by every other, so all
    need one configured secret (or, the workers of one server, one made at their start)."""
    for hostname, pid, theirs in live:
        if mine is not None and mine == theirs:
            continue
        other = f"another sluicegate instance (host {hostname}, pid {pid})"
        if mine is None or mine.startswith(_GENERATED):
            reason = (
                f"this instance has no general_settings.response_id_secret, and {other} is"
                " using this database"
            )
        elif theirs is None or theirs.startswith(_GENERATED):
            reason = f"{other} started without a response_id_secret is using this database"
        else:
            reason = f"{other} is using this database with a different response_id_secret"
        return StoreError(
            f"{reason}; every instance on one database needs the same"
            " general_settings.response_id_secret: set it on every instance (or stop the"
            " other one first)"
        )
    return None


def _beat(conn: psycopg.Connection[Any], me: _Registration) -> bool:
    """Renew the heartbeat; False if the row was gone (another instance judged this one dead
    and removed it): then it is inserted again."""
    renewed = conn.execute(
        "UPDATE instances SET heartbeat_at = now() WHERE id = %s RETURNING id", (me.instance,)
    ).fetchone()
    if renewed is not None:
        return True
    conn.execute(_INSERT, me.values())
    return False


def _unregister(conn: psycopg.Connection[Any], instance: str) -> None:
    conn.execute("DELETE FROM instances WHERE id = %s", (instance,))


def _orphans(conn: psycopg.Connection[Any], instance: str) -> dict[str, str | None]:
    """The unfinished responses of instances that are not live (no row, or a heartbeat older
    than their lease), oldest first, with the instance each was left by; never
    ``instance``'s own."""
    rows = conn.execute(
        f"SELECT r.id, r.instance FROM responses AS r WHERE r.{_UNFINISHED}"
        " AND r.instance IS DISTINCT FROM %s AND NOT EXISTS"
        f" (SELECT FROM instances AS i WHERE i.id = r.instance AND i.{_LIVE})"
        " ORDER BY r.created_at",
        (instance,),
    ).fetchall()
    return {rid: owner for (rid, owner) in rows}


def _forget_dead(conn: psycopg.Connection[Any]) -> None:
    """Remove the rows of the instances that are not live and left nothing unfinished."""
    conn.execute(
        f"DELETE FROM instances AS i WHERE NOT ({_LIVE}) AND NOT EXISTS"
        f" (SELECT FROM responses AS r WHERE r.instance = i.id AND r.{_UNFINISHED})"
    )
