"""The fake upstream's ``POST /responses/compact``: a conversation compacted as OpenAI answers.

The answer is a ``response.compaction`` object: the input's user messages, then one
``compaction`` item whose ``encrypted_content`` is sealed by the calling account exactly as its
reasoning is (``_accounts``), so a create that replays it under another account is refused with
``invalid_encrypted_content`` (``FakeUpstream._replay_error``). Its usage counts the input's
words and a fixed summary. Scripted faults strike it as they strike a non-streamed create's
JSON body (a status, a malformed or cut body, a reset or a stall mid-body); a reset before the
headers is not one of them (this table's handlers answer through the connection's own
senders, and the server's ``_Next`` stays the server's).
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Any, Final

import orjson

from ._answers import BadBody, count_input_tokens, error_envelope, model_request
from ._faults import FaultKind

if TYPE_CHECKING:
    from ._http import RequestHead

__all__ = ["COMPACTION_ROUTES", "COMPACTION_SUMMARY"]

#: What the fake's compaction "remembers", sealed into ``encrypted_content``; its words are
#: the compaction's output tokens.
COMPACTION_SUMMARY: Final = "The user and the fake upstream talked; nothing else happened."
_SUMMARY_TOKENS: Final = len(COMPACTION_SUMMARY.split())


async def _compact(connection: Any, head: RequestHead, body: bytes, match: re.Match[str]) -> Any:
    upstream = connection.upstream
    fault = upstream._next_fault()
    kind = fault.kind if fault is not None else None
    if fault is not None and kind is FaultKind.STATUS:
        return await connection._send_json(fault.status_code, fault.body, fault.headers)
    try:
        request = model_request(body)
    except BadBody as exc:
        return await connection._invalid(exc.message, param=exc.param, code=exc.code)
    previous = request.get("previous_response_id")
    if previous is not None and previous not in upstream._stored:
        return await connection._invalid(
            f"Previous response with id '{previous}' not found.",
            param="previous_response_id",
            code="previous_response_not_found",
        )
    items = request.get("input")
    account = upstream._account(head.headers)
    if isinstance(items, list):
        refused = upstream._replay_error(account, items)
        if refused is not None:
            status, message, param, code = refused
            envelope = error_envelope(message, type="invalid_request_error", param=param, code=code)
            return await connection._send_json(status, envelope)
    item_id = upstream._new_id("cmp")
    output = [*_user_messages(items, upstream._new_id)]
    output.append(
        {
            "id": item_id,
            "type": "compaction",
            "encrypted_content": account.seal(item_id, COMPACTION_SUMMARY),
        }
    )
    input_tokens = count_input_tokens(request)
    answer = {
        "id": upstream._new_id("resp"),
        "object": "response.compaction",
        "created_at": int(time.time()),
        "output": output,
        "usage": {
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": _SUMMARY_TOKENS,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input_tokens + _SUMMARY_TOKENS,
        },
    }
    state = upstream.extra_state.setdefault("compaction", {"compacted": 0})
    state["compacted"] += 1
    return await connection._answer_json(orjson.dumps(answer), fault)


def _user_messages(items: Any, new_id: Any) -> list[dict[str, Any]]:
    if isinstance(items, str):
        items = [{"role": "user", "content": items}]
    if not isinstance(items, list):
        return []
    out: list[dict[str, Any]] = []
    for item in items:
        if not isinstance(item, dict) or item.get("role") != "user":
            continue
        if item.get("type", "message") != "message":
            continue
        content = item.get("content")
        if isinstance(content, str):
            content = [{"type": "input_text", "text": content}]
        out.append(
            {
                "id": new_id("msg"),
                "type": "message",
                "status": "completed",
                "role": "user",
                "content": content,
            }
        )
    return out


COMPACTION_ROUTES: Final = [("POST", re.compile(r"/v1/responses/compact"), _compact)]
