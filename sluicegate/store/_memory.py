"""The memory backend: a bounded store that lives as long as its opener (the stateless mode).

Theory of operation:

- **As given.** The records are kept as the caller built them, never encoded: an append costs
  a few dictionary operations per record. The caller hands them over (the recorder builds
  fresh records and never touches them again), so nothing is copied on the way in. What goes
  out is a copy (a JSON round trip, which gives back exactly what a SQLite store would):
  whoever reads may change what it got without changing the store.
- **Checked like SQLite.** The contract refuses a record that is not JSON in the caller's
  task, so an append is encoded once, all its content in one ``orjson.dumps`` call whose bytes
  are dropped (a few microseconds a response, measured in ``docs/event-store.md``). Upstream
  content nested deeper than the encoder goes is replaced by the same stand-in as SQLite's, in
  that part alone. The log's rules (one ``Accepted``, one ``Ended``, nothing before
  ``Accepted``) are checked on the whole append before any of it is applied: all or nothing.
  An append is applied at once, so ``enqueue`` is ``append`` whose refusal is logged.
- **The bound.** Running responses are always kept whole (the gateway's concurrency bounds
  them). Once ended, a response keeps its content until ``max_responses`` responses hold
  content; then the one that ended first loses it, exactly as the retention purge removes
  it from a SQLite store: its row stays, marked ``purged`` (a GET is a 404, continuing it a 400
  ``previous_response_not_found``, its items are no longer found), and so does its spend row.
  Rows without content (purged, evicted, deleted) are kept for ``max_responses`` more removals,
  then forgotten: the store reads them as unknown. At most ``2 * max_responses`` rows (plus the
  running ones), at most ``max_responses`` responses' content.
- **Spend.** Spend logs list the rows kept. Spend totals by owner or model group, without a
  time or metadata filter (what a key's budget asks), are counted as responses are appended and
  cover every response since the store opened, forgotten ones included: one counter per owner
  and model group. Totals by day, or filtered by time or metadata, sum the rows kept.
- **Keys, files and batches.** Keys are never forgotten (an admin makes each one). Files and
  batches are: at most ``max_responses`` of them, the oldest first.
- **One process.** Nothing outlives the store and nothing is shared: crash recovery has nothing
  to do, and several worker processes cannot share one (``sluicegate serve`` refuses
  ``--workers`` above 1 with this backend).
"""

from __future__ import annotations

import bisect
import collections
import heapq
import logging
import operator
import time
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Final

import attrs
import orjson
import trio

from .._types import ResponseStatus
from ..errors import InvalidRequestError, StoreIntegrityError, StoreUnavailableError
from ._interface import (
    KeyRow,
    ObjectKind,
    ObjectRow,
    SpendFilter,
    SpendGroup,
    SpendLog,
    SpendTotal,
    StoreStatistics,
)
from ._records import (
    Accepted,
    Deleted,
    Ended,
    ItemDone,
    ItemOrigin,
    Record,
    ResponseRow,
    Routed,
    Settled,
    StreamEventRecorded,
)
from ._storable import storable, too_deep

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence

__all__ = ["DEFAULT_MAX_RESPONSES", "MemoryStore", "open_memory_store"]

logger = logging.getLogger("sluicegate")

#: How many responses' content a memory store keeps by default.
DEFAULT_MAX_RESPONSES: Final = 10_000

#: The record kinds as errors name them (the SQLite backend's names).
_KINDS: Final[dict[type[Record], str]] = {
    Accepted: "accepted",
    Routed: "routed",
    ItemDone: "item_done",
    StreamEventRecorded: "stream_event",
    Settled: "settled",
    Ended: "ended",
    Deleted: "deleted",
}

#: The largest integer a SQLite store holds: a key this store takes, that one takes too.
_INT64: Final = 2**63


def _copy(value: Any) -> Any:
    """A copy of stored JSON, as a SQLite store would read it back."""
    return None if value is None else orjson.loads(orjson.dumps(value))


def _not_json(exc: Exception) -> StoreIntegrityError:
    error = StoreIntegrityError(f"a record is not JSON-serializable: {exc}")
    error.__cause__ = exc
    return error


def _json_parts(records: Sequence[Record]) -> list[Any]:
    """The JSON content of an append's records, for one encoding that checks it all."""
    parts: list[Any] = []
    for record in records:
        match record:
            case ItemDone():
                parts.append(record.item)
            case Ended():
                parts += (record.response, record.error)
            case Accepted():
                parts += (record.params, record.input_items, record.metadata, record.spend_metadata)
            case Settled():
                parts.append(record.usage)
            case StreamEventRecorded():
                parts.append(record.event)
            case Routed() | Deleted():
                pass
            case _:
                raise TypeError(f"not a store record: {record!r}")
    return parts


def _with_stand_ins(record: Record) -> Record:
    """``record`` with upstream content too deep to encode replaced (the levels a SQLite store
    replaces at: an item's fields, an event's item's fields, a response's items' fields);
    anything else that fails to encode is refused."""
    match record:
        case ItemDone():
            item = storable(record.item, 1)
            return record if item is record.item else attrs.evolve(record, item=item)
        case StreamEventRecorded():
            event = storable(record.event, 2)
            return record if event is record.event else attrs.evolve(record, event=event)
        case Ended():
            _encoded(record.error)
            response = storable(record.response, 3)
            return (
                record if response is record.response else attrs.evolve(record, response=response)
            )
    for part in _json_parts([record]):
        _encoded(part)  # not upstream content: refused whatever the reason
    return record


def _checked(records: Sequence[Record]) -> Sequence[Record]:
    """The records, checked to be JSON (one encoding, its bytes dropped); content too deep to
    encode replaced by a stand-in (then a new list)."""
    try:
        orjson.dumps(_json_parts(records))
    except orjson.JSONEncodeError as exc:
        if not too_deep(exc):
            raise _not_json(exc) from exc
        return [_with_stand_ins(record) for record in records]
    return records


def _encoded(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError as exc:
        raise _not_json(exc) from exc


def _canonical(value: Any) -> bytes:
    """A spend metadata value as JSON with sorted keys: equal values, equal bytes (as
    SQLite's ``spend_tags`` compares them: ``1``, ``1.0`` and ``true`` differ)."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def _count(container: Any, key: str) -> int:
    """A token count of a usage object; anything missing or not a count is 0."""
    value = container.get(key) if isinstance(container, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _day(created_at: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(created_at))


@attrs.define(eq=False)
class _Entry:
    """One response, its records folded: what its row says, and its content as given (which
    removing the content lets go of)."""

    #: Acceptance order (spend logs' tie-break, as SQLite's rowid).
    order: int
    status: ResponseStatus
    # What ``Accepted`` set.
    owner: str
    model: str
    background: bool
    store: bool
    metadata: dict[str, Any]
    created_at: float
    previous_id: str | None
    spend_metadata: dict[str, Any]
    params: dict[str, Any]
    input_items: list[dict[str, Any]]
    deployment_id: str | None = None
    provider: str | None = None
    upstream_id: str | None = None
    settled: Settled | None = None
    # What ``Ended`` set.
    ended: bool = False
    completed_at: float | None = None
    error: dict[str, Any] | None = None
    ttft: float | None = None
    duration: float | None = None
    #: The final Response.
    response: dict[str, Any] | None = None
    items: list[ItemDone] = attrs.Factory(list)
    #: In ``sequence_number`` order (arrival order among equals).
    events: list[StreamEventRecorded] = attrs.Factory(list)
    deleted: bool = False
    purged: bool = False

    @property
    def content_removed(self) -> bool:
        return self.deleted or self.purged


def _sequence_number(record: StreamEventRecorded) -> int:
    return record.sequence_number


_OUTPUT_INDEX = operator.attrgetter("output_index")


@attrs.define(eq=False)
class _Totals:
    """Spend counted for one owner and model group."""

    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float = 0.0

    def add(self, settled: Settled, sign: int) -> None:
        usage = settled.usage
        self.input_tokens += sign * _count(usage, "input_tokens")
        self.output_tokens += sign * _count(usage, "output_tokens")
        if settled.cost is not None:
            self.cost += sign * settled.cost


@attrs.define(eq=False)
class MemoryStore:
    """The memory event store; open it with :func:`open_memory_store` (the module docstring is
    the theory of operation)."""

    _max_responses: int
    _rows: dict[str, _Entry] = attrs.Factory(dict)
    #: Ended responses that keep their content, in the order they ended.
    _whole: collections.OrderedDict[str, None] = attrs.Factory(collections.OrderedDict)
    #: Ended responses whose content is gone, in the order it went.
    _removed: collections.OrderedDict[str, None] = attrs.Factory(collections.OrderedDict)
    #: Output item ID -> the response that holds it, or those that do in the order they
    #: recorded it (an ID in several responses is rare: a dict, used as an ordered set, only
    #: then).
    _items: dict[str, str | dict[str, None]] = attrs.Factory(dict)
    #: Spend counted per (owner, model group), since the store opened.
    _totals: dict[tuple[str, str], _Totals] = attrs.Factory(dict)
    _keys: dict[str, KeyRow] = attrs.Factory(dict)
    _key_ids: dict[str, str] = attrs.Factory(dict)
    _objects: dict[str, ObjectRow] = attrs.Factory(dict)
    _object_ids: dict[tuple[str, str], str] = attrs.Factory(dict)
    _accepted: int = 0
    #: Running responses deleted before they ended: rows that hold no content yet are in
    #: neither ``_whole`` nor ``_removed``.
    _deleted_running: int = 0
    _closed: bool = False
    _records_appended: int = 0
    _transactions: int = 0
    _largest_batch: int = 0

    @property
    def max_responses(self) -> int:
        """The most responses whose content the store keeps."""
        return self._max_responses

    def statistics(self) -> StoreStatistics:
        return StoreStatistics(
            records_appended=self._records_appended,
            transactions=self._transactions,
            largest_batch=self._largest_batch,
            pending=0,
        )

    def _check_open(self) -> None:
        if self._closed:
            raise StoreUnavailableError("the store is closed")

    async def _checkpoint(self) -> None:
        await trio.lowlevel.checkpoint()
        self._check_open()

    # -- writing

    async def append(self, records: Sequence[Record]) -> None:
        """See :meth:`sluicegate.store.Store.append`."""
        # Cancelled before: nothing is written. Once written, a cancellation never hides it.
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            self._append(records)
        finally:
            await trio.lowlevel.cancel_shielded_checkpoint()

    async def enqueue(self, records: Sequence[Record]) -> None:
        """See :meth:`sluicegate.store.Store.enqueue`."""
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            self._append(records, detached=True)
        finally:
            await trio.lowlevel.cancel_shielded_checkpoint()

    def _append(self, records: Sequence[Record], *, detached: bool = False) -> None:
        self._check_open()
        if not records:
            return
        records = _checked(records)  # not JSON: the caller's error, even for an enqueue
        try:
            self._check_rules(records)
        except StoreIntegrityError as exc:
            if not detached:
                raise
            responses = sorted({record.response_id for record in records})
            logger.error("the store refused enqueued records of %s: %s", ", ".join(responses), exc)
            return
        for record in records:
            self._apply(record)
        self._records_appended += len(records)
        self._transactions += 1
        self._largest_batch = max(self._largest_batch, len(records))
        self._keep_bound()

    def _check_rules(self, records: Sequence[Record]) -> None:
        """The log's rules, over the whole append before any of it is applied."""
        ended: dict[str, bool] = {}  # response -> it has ended, for those known so far
        for record in records:
            rid = record.response_id
            has_ended = ended.get(rid)
            if has_ended is None:
                entry = self._rows.get(rid)
                if entry is not None:
                    has_ended = entry.ended
            if type(record) is Accepted:
                if has_ended is not None:
                    raise StoreIntegrityError(f"response {rid} was already accepted")
                ended[rid] = False
            elif has_ended is None:
                kind = _KINDS[type(record)]
                raise StoreIntegrityError(f"{kind} for response {rid}, which was never accepted")
            elif type(record) is Ended:
                if has_ended:
                    raise StoreIntegrityError(f"response {rid} has already ended")
                ended[rid] = True
            else:
                ended[rid] = has_ended

    def _apply(self, record: Record) -> None:
        """Fold one record in (the log's rules were checked)."""
        rid = record.response_id
        match record:
            case Accepted():
                status = ResponseStatus.QUEUED if record.background else ResponseStatus.IN_PROGRESS
                self._accepted += 1
                self._rows[rid] = _Entry(
                    self._accepted,
                    status,
                    record.owner,
                    record.model,
                    record.background,
                    record.store,
                    record.metadata,
                    record.created_at,
                    record.previous_id,
                    record.spend_metadata,
                    record.params,
                    record.input_items,
                )
                totals = self._totals.get((record.owner, record.model))
                if totals is None:
                    totals = self._totals[record.owner, record.model] = _Totals()
                totals.requests += 1
                return
        entry = self._rows[rid]
        match record:
            case Routed():
                if entry.status is ResponseStatus.QUEUED:
                    entry.status = ResponseStatus.IN_PROGRESS
                entry.deployment_id = record.deployment_id
                entry.provider = record.provider
                if record.upstream_id is not None:
                    entry.upstream_id = record.upstream_id
            case ItemDone():
                if not entry.content_removed:
                    entry.items.append(record)
                    item_id = record.item.get("id") if isinstance(record.item, dict) else None
                    if isinstance(item_id, str):
                        self._index_item(item_id, rid)
            case StreamEventRecorded():
                if not entry.content_removed:
                    bisect.insort(entry.events, record, key=_sequence_number)
            case Settled():
                totals = self._totals[entry.owner, entry.model]
                if entry.settled is not None:
                    totals.add(entry.settled, -1)
                totals.add(record, 1)
                entry.settled = record
            case Ended():
                entry.status = record.status
                entry.ended = True
                entry.completed_at = record.completed_at
                entry.error = record.error
                entry.ttft = record.ttft
                entry.duration = record.duration
                if entry.content_removed:
                    self._removed[rid] = None
                    self._deleted_running -= 1
                else:
                    entry.response = record.response
                    self._whole[rid] = None
            case Deleted():
                if not (entry.ended or entry.deleted):
                    self._deleted_running += 1
                entry.deleted = True
                self._remove_content(rid, entry)

    def _index_item(self, item_id: str, rid: str) -> None:
        held = self._items.get(item_id)
        if held is None:
            self._items[item_id] = rid
        elif isinstance(held, dict):
            held[rid] = None
        elif held != rid:
            self._items[item_id] = {held: None, rid: None}

    def _unindex_item(self, item_id: str, rid: str) -> None:
        held = self._items.get(item_id)
        if held == rid:
            del self._items[item_id]
        elif isinstance(held, dict):
            held.pop(rid, None)
            if len(held) == 1:
                self._items[item_id] = next(iter(held))

    def _remove_content(self, rid: str, entry: _Entry) -> None:
        """Drop a response's content (deletion, retention, the bound); its row and spend stay.
        An ended one moves to the rows without content."""
        for done in entry.items:
            item_id = done.item.get("id") if isinstance(done.item, dict) else None
            if isinstance(item_id, str):
                self._unindex_item(item_id, rid)
        entry.items = []
        entry.events = []
        entry.params = {}
        entry.input_items = []
        entry.response = None
        if entry.ended:
            self._whole.pop(rid, None)
            self._removed[rid] = None

    def _keep_bound(self) -> None:
        """Evict the content of the responses that ended first, then forget the rows that lost
        their content first (see the module docstring)."""
        holding = len(self._rows) - len(self._removed) - self._deleted_running
        excess = holding - self._max_responses
        while excess > 0 and self._whole:
            rid, _ = self._whole.popitem(last=False)
            entry = self._rows[rid]
            entry.purged = True
            self._remove_content(rid, entry)
            excess -= 1
        while len(self._removed) > self._max_responses:
            rid, _ = self._removed.popitem(last=False)
            del self._rows[rid]

    # -- reading responses

    def _row(self, rid: str, entry: _Entry) -> ResponseRow:
        settled = entry.settled
        return ResponseRow(
            id=rid,
            owner=entry.owner,
            status=entry.status,
            model=entry.model,
            deployment_id=entry.deployment_id,
            provider=entry.provider,
            background=entry.background,
            store=entry.store,
            metadata=_copy(entry.metadata),
            created_at=entry.created_at,
            completed_at=entry.completed_at,
            usage=None if settled is None else _copy(settled.usage),
            cost=None if settled is None else settled.cost,
            error=_copy(entry.error),
            deleted=entry.deleted,
            previous_id=entry.previous_id,
            upstream_id=entry.upstream_id,
            spend_metadata=_copy(entry.spend_metadata),
            ttft=entry.ttft,
            duration=entry.duration,
            estimated=False if settled is None else settled.estimated,
            purged=entry.purged,
        )

    def _content(self, rid: str) -> _Entry | None:
        entry = self._rows.get(rid)
        return None if entry is None or entry.content_removed else entry

    async def get(self, response_id: str) -> ResponseRow | None:
        """See :meth:`sluicegate.store.Store.get`."""
        await self._checkpoint()
        entry = self._rows.get(response_id)
        return None if entry is None else self._row(response_id, entry)

    async def get_many(self, response_ids: Sequence[str]) -> dict[str, ResponseRow]:
        """See :meth:`sluicegate.store.Store.get_many`."""
        await self._checkpoint()
        rows: dict[str, ResponseRow] = {}
        for rid in response_ids:
            entry = self._rows.get(rid)
            if entry is not None and rid not in rows:
                rows[rid] = self._row(rid, entry)
        return rows

    async def final_response(self, response_id: str) -> dict[str, Any] | None:
        """See :meth:`sluicegate.store.Store.final_response`."""
        await self._checkpoint()
        entry = self._content(response_id)
        if entry is None:
            return None
        response: dict[str, Any] | None = _copy(entry.response)
        return response

    async def input_items(self, response_id: str) -> list[dict[str, Any]]:
        """See :meth:`sluicegate.store.Store.input_items`."""
        await self._checkpoint()
        entry = self._content(response_id)
        items: list[dict[str, Any]] = [] if entry is None else _copy(entry.input_items)
        return items

    async def output_items(self, response_id: str) -> list[dict[str, Any]]:
        """See :meth:`sluicegate.store.Store.output_items`."""
        await self._checkpoint()
        entry = self._content(response_id)
        if entry is None:
            return []
        items: list[dict[str, Any]] = _copy(
            [done.item for done in sorted(entry.items, key=_OUTPUT_INDEX)]
        )
        return items

    async def item_origins(self, item_ids: Sequence[str]) -> dict[str, ItemOrigin]:
        """See :meth:`sluicegate.store.Store.item_origins`."""
        await self._checkpoint()
        found: dict[str, ItemOrigin] = {}
        for item_id in item_ids:
            held = self._items.get(item_id) if isinstance(item_id, str) else None
            if held is None or item_id in found:
                continue
            rid = held if isinstance(held, str) else next(iter(held))
            entry = self._rows[rid]
            found[item_id] = ItemOrigin(
                item_id=item_id,
                response_id=rid,
                owner=entry.owner,
                deployment_id=entry.deployment_id,
                provider=entry.provider,
            )
        return found

    async def stream_events(
        self, response_id: str, *, after: int = -1, limit: int = 1000
    ) -> list[dict[str, Any]]:
        """See :meth:`sluicegate.store.Store.stream_events`."""
        await self._checkpoint()
        entry = self._content(response_id)
        if entry is None or limit <= 0:
            return []
        start = bisect.bisect_right(entry.events, after, key=_sequence_number)
        events: list[dict[str, Any]] = _copy(
            [record.event for record in entry.events[start : start + limit]]
        )
        return events

    async def conversation(
        self, response_id: str, *, max_turns: int, max_bytes: int
    ) -> list[dict[str, Any]]:
        """See :meth:`sluicegate.store.Store.conversation`. The stored size is what a SQLite
        store would hold: each turn's parameters and input items, and its output items, as
        JSON."""
        await self._checkpoint()
        # The chain, newest first: at most one more than allowed, to tell "too long" apart.
        chain: list[tuple[str, _Entry]] = []
        rid: str | None = response_id
        while rid is not None and len(chain) <= max_turns:
            entry = self._rows.get(rid)
            if entry is None:
                break
            chain.append((rid, entry))
            rid = entry.previous_id
        if not chain:
            raise _not_found(response_id)
        for rid, entry in chain[:max_turns]:
            if entry.content_removed:
                raise _not_found(rid)
            if not entry.store:
                raise InvalidRequestError(
                    f"Previous response with id '{rid}' was created with store=false, so it "
                    "was not kept and cannot be continued.",
                    param="previous_response_id",
                    code=_NOT_FOUND,
                )
        if len(chain) > max_turns:
            raise _too_long(
                f"The conversation is longer than {max_turns} turns, the most this gateway "
                "continues; raise general_settings.store.max_conversation_turns to allow more."
            )
        oldest_previous = chain[-1][1].previous_id
        if oldest_previous is not None:  # the walk stopped short of the limit: a missing link
            raise _not_found(oldest_previous)
        size = 0
        turns: list[tuple[bytes, list[bytes]]] = []
        for _, entry in reversed(chain):
            given = orjson.dumps({"params": entry.params, "input_items": entry.input_items})
            outputs = [orjson.dumps(done.item) for done in sorted(entry.items, key=_OUTPUT_INDEX)]
            size += len(given) + sum(map(len, outputs))
            turns.append((given, outputs))
        if size > max_bytes:
            raise _too_long(
                f"The conversation is larger than {max_bytes} bytes ({size} bytes stored), the "
                "most this gateway continues; raise general_settings.store.max_conversation_bytes"
                " to allow more."
            )
        items: list[dict[str, Any]] = []
        for given, outputs in turns:
            items += orjson.loads(given)["input_items"]
            items += map(orjson.loads, outputs)
        return items

    # -- spend

    def _matching(self, where: SpendFilter) -> list[tuple[str, _Entry]]:
        """The rows kept that ``where`` selects."""
        tags = [(key, _canonical(value)) for key, value in (where.metadata or {}).items()]
        found = []
        for rid, entry in self._rows.items():
            if where.owner is not None and entry.owner != where.owner:
                continue
            if where.model is not None and entry.model != where.model:
                continue
            if where.start is not None and not entry.created_at >= where.start:
                continue
            if where.end is not None and not entry.created_at < where.end:
                continue
            metadata = entry.spend_metadata
            if tags and not all(
                key in metadata and _canonical(metadata[key]) == value for key, value in tags
            ):
                continue
            found.append((rid, entry))
        return found

    async def spend_logs(
        self, where: SpendFilter, *, limit: int = 100, newest_first: bool = True
    ) -> list[SpendLog]:
        """See :meth:`sluicegate.store.Store.spend_logs`. The rows kept (a scan of them: at most
        ``2 * max_responses`` and the running ones)."""
        await self._checkpoint()
        if limit <= 0:
            return []
        matching = self._matching(where)

        def when(row: tuple[str, _Entry]) -> tuple[float, int]:
            return row[1].created_at, row[1].order

        pick = heapq.nlargest if newest_first else heapq.nsmallest
        return [_spend_log(rid, entry) for rid, entry in pick(limit, matching, key=when)]

    async def spend_totals(self, where: SpendFilter, *, group_by: SpendGroup) -> list[SpendTotal]:
        """See :meth:`sluicegate.store.Store.spend_totals`. By owner or model group with no time
        or metadata filter: every response since the store opened (counted); otherwise the rows
        kept."""
        if group_by not in ("owner", "model", "day"):
            raise ValueError(f"group_by must be one of day, model, owner, not {group_by!r}")
        await self._checkpoint()
        groups: dict[str, _Totals] = {}
        counted = where.start is None and where.end is None and not where.metadata
        if counted and group_by != "day":
            for (owner, model), totals in self._totals.items():
                if where.owner is not None and owner != where.owner:
                    continue
                if where.model is not None and model != where.model:
                    continue
                group = groups.setdefault(owner if group_by == "owner" else model, _Totals())
                group.requests += totals.requests
                group.input_tokens += totals.input_tokens
                group.output_tokens += totals.output_tokens
                group.cost += totals.cost
        else:
            for _, entry in self._matching(where):
                key = (
                    entry.owner
                    if group_by == "owner"
                    else entry.model
                    if group_by == "model"
                    else _day(entry.created_at)
                )
                group = groups.setdefault(key, _Totals())
                group.requests += 1
                if entry.settled is not None:
                    group.add(entry.settled, 1)
        return [
            SpendTotal(
                key=key,
                requests=group.requests,
                input_tokens=group.input_tokens,
                output_tokens=group.output_tokens,
                cost=group.cost,
            )
            for key, group in sorted(groups.items())
        ]

    # -- retention and recovery

    async def purge(self, *, before: float) -> int:
        """See :meth:`sluicegate.store.Store.purge`."""
        await self._checkpoint()
        due: list[tuple[float, str, _Entry]] = []
        for rid in (*self._whole, *self._removed):
            entry = self._rows[rid]
            assert entry.completed_at is not None  # ended
            if not entry.purged and entry.completed_at < before:
                due.append((entry.completed_at, rid, entry))
        due.sort(key=operator.itemgetter(0))  # oldest first, as a SQLite store purges
        for _, rid, entry in due:
            entry.purged = True
            self._remove_content(rid, entry)
        self._keep_bound()
        return len(due)

    async def recover(self, *, now: float) -> int:
        """See :meth:`sluicegate.store.Store.recover`: nothing to do, no other process or
        store ever had this one's responses."""
        await self._checkpoint()
        return 0

    # -- keys

    async def put_key(self, key: KeyRow) -> None:
        """See :meth:`sluicegate.store.Store.put_key`."""
        await self._checkpoint()
        metadata = orjson.loads(_encoded(key.metadata))
        _encoded(key.models)
        for name in ("rpm", "tpm", "max_parallel_requests"):
            value = getattr(key, name)
            if isinstance(value, int) and not -_INT64 <= value < _INT64:
                raise StoreIntegrityError(f"a value the store cannot hold: {name} is past 64 bits")
        if key.key_id in self._keys or key.key_hash in self._key_ids:
            # Our own message: never one that could carry a value of the row (the hash).
            raise StoreIntegrityError(
                f"key {key.key_id} was refused: a key with this ID or secret exists"
            )
        self._keys[key.key_id] = attrs.evolve(key, metadata=metadata)
        self._key_ids[key.key_hash] = key.key_id

    async def find_key(self, key_hash: str) -> KeyRow | None:
        """See :meth:`sluicegate.store.Store.find_key`."""
        await self._checkpoint()
        key_id = self._key_ids.get(key_hash)
        return None if key_id is None else _key_copy(self._keys[key_id])

    async def get_key(self, key_id: str) -> KeyRow | None:
        """See :meth:`sluicegate.store.Store.get_key`."""
        await self._checkpoint()
        key = self._keys.get(key_id)
        return None if key is None else _key_copy(key)

    async def delete_key(self, key_id: str, *, at: float) -> bool:
        """See :meth:`sluicegate.store.Store.delete_key`."""
        await self._checkpoint()
        key = self._keys.get(key_id)
        if key is None or key.deleted_at is not None:
            return False
        self._keys[key_id] = attrs.evolve(key, deleted_at=at)
        return True

    # -- files and batches

    async def put_object(self, row: ObjectRow) -> None:
        """See :meth:`sluicegate.store.Store.put_object`."""
        await self._checkpoint()
        data = orjson.loads(_encoded(row.data))
        spend_metadata = orjson.loads(_encoded(row.spend_metadata))
        held = self._objects.get(row.id)
        if held is not None:
            # A fresher view of the same object: only what changes upstream is replaced.
            self._objects[row.id] = attrs.evolve(
                held, data=data, settled=row.settled, deleted_at=row.deleted_at
            )
            return
        upstream = (row.deployment_id, row.raw_id)
        if upstream in self._object_ids:
            raise StoreIntegrityError(
                f"{row.kind} {row.id} was refused: deployment {row.deployment_id!r} already has "
                "an object with its upstream ID"
            )
        self._objects[row.id] = attrs.evolve(row, data=data, spend_metadata=spend_metadata)
        self._object_ids[upstream] = row.id
        while len(self._objects) > self._max_responses:
            oldest = self._objects.pop(next(iter(self._objects)))
            del self._object_ids[oldest.deployment_id, oldest.raw_id]

    async def get_object(self, object_id: str) -> ObjectRow | None:
        """See :meth:`sluicegate.store.Store.get_object`."""
        await self._checkpoint()
        row = self._objects.get(object_id)
        return None if row is None else _object_copy(row)

    async def find_object(self, deployment_id: str, raw_id: str) -> ObjectRow | None:
        """See :meth:`sluicegate.store.Store.find_object`."""
        await self._checkpoint()
        object_id = self._object_ids.get((deployment_id, raw_id))
        return None if object_id is None else _object_copy(self._objects[object_id])

    async def list_objects(
        self,
        kind: ObjectKind,
        *,
        owner: str | None,
        after: str | None = None,
        limit: int = 20,
        newest_first: bool = True,
        purpose: str | None = None,
    ) -> list[ObjectRow]:
        """See :meth:`sluicegate.store.Store.list_objects`."""
        await self._checkpoint()
        anchor = None if after is None else self._objects.get(after)
        rows = []
        for row in self._objects.values():
            if row.kind != kind or row.deleted_at is not None:
                continue
            if owner is not None and row.owner != owner:
                continue
            if purpose is not None and row.data.get("purpose") != purpose:
                continue
            if anchor is not None:
                position = (row.created_at, row.id)
                start = (anchor.created_at, anchor.id)
                if not (position < start if newest_first else position > start):
                    continue
            rows.append(row)
        rows.sort(key=lambda row: (row.created_at, row.id), reverse=newest_first)
        return [_object_copy(row) for row in rows[: max(limit, 0)]]

    # -- closing

    def _close(self) -> None:
        self._closed = True
        for table in (
            self._rows,
            self._whole,
            self._removed,
            self._items,
            self._totals,
            self._keys,
            self._key_ids,
            self._objects,
            self._object_ids,
        ):
            table.clear()


_NOT_FOUND: Final = "previous_response_not_found"


def _not_found(response_id: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"Previous response with id '{response_id}' not found.",
        param="previous_response_id",
        code=_NOT_FOUND,
    )


def _too_long(message: str) -> InvalidRequestError:
    return InvalidRequestError(message, param="previous_response_id", code="conversation_too_long")


def _spend_log(rid: str, entry: _Entry) -> SpendLog:
    settled = entry.settled
    usage = None if settled is None else settled.usage
    usage = usage if isinstance(usage, dict) else {}
    return SpendLog(
        response_id=rid,
        owner=entry.owner,
        model=entry.model,
        deployment_id=entry.deployment_id,
        provider=entry.provider,
        status=entry.status.value,
        input_tokens=_count(usage, "input_tokens"),
        output_tokens=_count(usage, "output_tokens"),
        cached_tokens=_count(usage.get("input_tokens_details"), "cached_tokens"),
        reasoning_tokens=_count(usage.get("output_tokens_details"), "reasoning_tokens"),
        total_tokens=_count(usage, "total_tokens"),
        cost=None if settled is None else settled.cost,
        estimated=False if settled is None else settled.estimated,
        ttft=entry.ttft,
        duration=entry.duration,
        created_at=entry.created_at,
        completed_at=entry.completed_at,
        spend_metadata=_copy(entry.spend_metadata),
    )


def _key_copy(key: KeyRow) -> KeyRow:
    return attrs.evolve(key, metadata=_copy(key.metadata))


def _object_copy(row: ObjectRow) -> ObjectRow:
    return attrs.evolve(row, data=_copy(row.data), spend_metadata=_copy(row.spend_metadata))


@asynccontextmanager
async def open_memory_store(
    *, max_responses: int = DEFAULT_MAX_RESPONSES
) -> AsyncIterator[MemoryStore]:
    """Open a memory store: nothing is written anywhere, and everything is gone when the block
    exits (the stateless mode, ``general_settings.store.backend: memory``).

    Args:
        max_responses: the most responses whose content is kept (running ones always are);
            past it, the content of the one that ended first is evicted as a retention purge
            removes it, and after as many evictions more its row is forgotten. Also the most
            files and batches kept.

    Raises:
        ValueError: ``max_responses`` is below 1.
    """
    if max_responses < 1:
        raise ValueError("max_responses must be at least 1")
    store = MemoryStore(max_responses)
    await trio.lowlevel.checkpoint()
    try:
        yield store
    finally:
        store._close()
