"""The fake upstream's Conversations API (``/v1/conversations``), and ``conversation`` on create.

A conversation belongs to the account (API key) that created it: another account gets the 404
OpenAI answers for an unknown one. Its items are kept in order; an input message without an
``id`` gets a ``msg_`` one. A create naming a ``conversation`` (an ID or ``{"id": ...}``)
answers from the conversation's items followed by its input (the usage counts them), and once
its answer is complete appends the input and the output (:class:`Turn`); with
``previous_response_id`` too it is a 400. Scripted faults strike these calls as they strike a
non-streamed create: a status, or a body cut in half (malformed JSON), reset or stalled.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qs

import attrs
import orjson

from ._answers import error_envelope
from ._faults import FaultKind

if TYPE_CHECKING:
    from ._http import RequestHead

__all__ = ["CONVERSATION_ROUTES", "Refusal", "Turn", "conversation_turn"]

#: Where a fake keeps its conversations (``FakeUpstream.extra_state``).
_STATE: Final = "conversations"


@attrs.define(eq=False)
class _Conversation:
    account: str
    view: dict[str, Any]
    items: list[dict[str, Any]] = attrs.Factory(list)


def _conversations(upstream: Any) -> dict[str, _Conversation]:
    state: dict[str, _Conversation] = upstream.extra_state.setdefault(_STATE, {})
    return state


def _not_found(conversation_id: str) -> bytes:
    return error_envelope(
        f"Conversation with id '{conversation_id}' not found.",
        type="invalid_request_error",
        param="conversation_id",
    )


def _with_ids(upstream: Any, items: list[Any]) -> list[dict[str, Any]]:
    kept = []
    for item in items:
        if not isinstance(item, dict):
            continue
        kind = item.get("type", "message")
        item = {**item, "type": kind}
        if kind == "message":
            content = item.get("content")
            if isinstance(content, str):
                part = "output_text" if item.get("role") == "assistant" else "input_text"
                item["content"] = [{"type": part, "text": content}]
            item.setdefault("status", "completed")
        if not isinstance(item.get("id"), str):
            item["id"] = upstream._new_id("msg" if kind == "message" else "item")
        kept.append(item)
    return kept


# -- conversation on create --------------------------------------------------------------------


@attrs.frozen
class Refusal:
    """A create the conversation refuses: its status and error envelope."""

    status: int
    body: bytes


@attrs.define(eq=False)
class Turn:
    """A create in a conversation: ``request`` is what the fake answers from (the
    conversation's items, then the input); :meth:`finish` appends the turn."""

    request: dict[str, Any]
    _conversation: _Conversation
    _input: list[dict[str, Any]]

    def finish(self, final: dict[str, Any], *, complete: bool) -> None:
        """Echo the conversation on the answer and, if it is ``complete`` (no fault cut
        it), append the input and the output."""
        final["conversation"] = {"id": self._conversation.view["id"]}
        if complete and final.get("status") == "completed":
            self._conversation.items += self._input
            self._conversation.items += [dict(item) for item in final.get("output") or []]


def conversation_turn(
    upstream: Any, request: dict[str, Any], headers: dict[str, str]
) -> Turn | Refusal | None:
    """The conversation a create names (None: it names none)."""
    value = request.get("conversation")
    if value is None:
        return None
    conversation_id = value.get("id") if isinstance(value, dict) else value
    if not isinstance(conversation_id, str):
        message = "Invalid 'conversation': expected a string or an object with an 'id'."
        return Refusal(400, error_envelope(message, type="invalid_request_error"))
    if request.get("previous_response_id") is not None:
        message = "'previous_response_id' cannot be used together with 'conversation'."
        envelope = error_envelope(
            message, type="invalid_request_error", param="previous_response_id"
        )
        return Refusal(400, envelope)
    found = _conversations(upstream).get(conversation_id)
    account = upstream._account(headers).key.hex()
    if found is None or found.account != account:
        envelope = error_envelope(
            f"Conversation with id '{conversation_id}' not found.",
            type="invalid_request_error",
            param="conversation",
        )
        return Refusal(404, envelope)
    given = request.get("input")
    if isinstance(given, str):
        given = [{"role": "user", "content": given}]
    new = _with_ids(upstream, given if isinstance(given, list) else [])
    answered = {k: v for k, v in request.items() if k != "conversation"}
    answered["input"] = [*found.items, *new]
    return Turn(answered, found, new)


# -- the endpoints -----------------------------------------------------------------------------


async def _faulted(connection: Any, payload: bytes) -> Any:
    """Send ``payload`` (200), or what the next scripted fault makes of it (a status; a body
    cut in half, reset or stalled as a non-streamed create's would be)."""
    fault = connection.upstream._next_fault()
    if fault is not None and fault.kind is FaultKind.STATUS:
        return await connection._send_json(fault.status_code, fault.body, fault.headers)
    return await connection._answer_json(payload, fault)


def _body(body: bytes) -> dict[str, Any] | None:
    try:
        parsed = orjson.loads(body) if body else {}
    except orjson.JSONDecodeError:
        return None
    return parsed if isinstance(parsed, dict) else None


def _owned(connection: Any, head: RequestHead, conversation_id: str) -> _Conversation | None:
    upstream = connection.upstream
    found = _conversations(upstream).get(conversation_id)
    if found is None or found.account != upstream._account(head.headers).key.hex():
        return None
    return found


async def _create(connection: Any, head: RequestHead, body: bytes, match: re.Match[str]) -> Any:
    upstream = connection.upstream
    request = _body(body)
    if request is None:
        return await connection._invalid(
            "We could not parse the JSON body of your request.", param=None, code=None
        )
    items = request.get("items") or []
    if not isinstance(items, list) or len(items) > 20:
        return await connection._invalid(
            "Invalid 'items': expected an array of at most 20 items.", param="items", code=None
        )
    conversation_id = upstream._new_id("conv")
    view = {
        "id": conversation_id,
        "object": "conversation",
        "created_at": int(time.time()),
        "metadata": request.get("metadata") or {},
    }
    account = upstream._account(head.headers).key.hex()
    _conversations(upstream)[conversation_id] = _Conversation(
        account, view, _with_ids(upstream, items)
    )
    return await _faulted(connection, orjson.dumps(view))


async def _one(connection: Any, head: RequestHead, body: bytes, match: re.Match[str]) -> Any:
    """GET (retrieve), POST (update its metadata), DELETE a conversation."""
    conversation_id = match[1]
    found = _owned(connection, head, conversation_id)
    if found is None:
        return await connection._send_json(404, _not_found(conversation_id))
    if head.method == "GET":
        return await _faulted(connection, orjson.dumps(found.view))
    if head.method == "POST":
        request = _body(body)
        if request is None or not isinstance(request.get("metadata"), dict):
            return await connection._invalid(
                "Missing required parameter: 'metadata'.", param="metadata", code=None
            )
        found.view["metadata"] = request["metadata"]
        return await _faulted(connection, orjson.dumps(found.view))
    if head.method == "DELETE":
        del _conversations(connection.upstream)[conversation_id]
        deleted = {"id": conversation_id, "object": "conversation.deleted", "deleted": True}
        return await _faulted(connection, orjson.dumps(deleted))
    return await connection._send_json(
        404, error_envelope("Invalid URL", type="invalid_request_error")
    )


def _page(items: list[dict[str, Any]], has_more: bool) -> bytes:
    return orjson.dumps(
        {
            "object": "list",
            "data": items,
            "first_id": items[0]["id"] if items else None,
            "last_id": items[-1]["id"] if items else None,
            "has_more": has_more,
        }
    )


async def _items(connection: Any, head: RequestHead, body: bytes, match: re.Match[str]) -> Any:
    """GET (list: ``after``, ``limit``, ``order``) and POST (add) a conversation's items."""
    conversation_id = match[1]
    found = _owned(connection, head, conversation_id)
    if found is None:
        return await connection._send_json(404, _not_found(conversation_id))
    if head.method == "POST":
        request = _body(body)
        items = None if request is None else request.get("items")
        if not isinstance(items, list) or not 0 < len(items) <= 20:
            return await connection._invalid(
                "Invalid 'items': expected an array of 1 to 20 items.", param="items", code=None
            )
        added = _with_ids(connection.upstream, items)
        found.items += added
        return await _faulted(connection, _page(added, False))
    query = {k: v[-1] for k, v in parse_qs(head.query).items()}
    ordered = list(found.items)
    if query.get("order", "desc") == "desc":
        ordered.reverse()
    after = query.get("after")
    if after is not None:
        ids = [item["id"] for item in ordered]
        if after not in ids:
            return await connection._invalid(
                f"Invalid 'after': no item '{after}'.", param="after", code=None
            )
        ordered = ordered[ids.index(after) + 1 :]
    limit_text = query.get("limit", "20")
    limit = int(limit_text) if limit_text.isdigit() else 20
    return await _faulted(connection, _page(ordered[:limit], len(ordered) > limit))


async def _item(connection: Any, head: RequestHead, body: bytes, match: re.Match[str]) -> Any:
    """GET and DELETE one item (a delete answers with the conversation)."""
    conversation_id, item_id = match[1], match[2]
    found = _owned(connection, head, conversation_id)
    if found is None:
        return await connection._send_json(404, _not_found(conversation_id))
    index = next((i for i, item in enumerate(found.items) if item["id"] == item_id), None)
    if index is None:
        envelope = error_envelope(
            f"Item with id '{item_id}' not found.", type="invalid_request_error", param="item_id"
        )
        return await connection._send_json(404, envelope)
    if head.method == "DELETE":
        del found.items[index]
        return await _faulted(connection, orjson.dumps(found.view))
    return await _faulted(connection, orjson.dumps(found.items[index]))


CONVERSATION_ROUTES: Final = [
    ("POST", re.compile(r"/v1/conversations"), _create),
    ("*", re.compile(r"/v1/conversations/([^/]+)"), _one),
    ("*", re.compile(r"/v1/conversations/([^/]+)/items"), _items),
    ("*", re.compile(r"/v1/conversations/([^/]+)/items/([^/]+)"), _item),
]
