"""The fake upstream's ``POST /responses/input_tokens``: input token counts as OpenAI answers.

The answer is ``{"object": "response.input_tokens", "input_tokens": N}``, N counted as the
fake counts a create's ``usage.input_tokens`` (``_answers.count_input_tokens``: the words of the
instructions and of every input text), plus, with ``previous_response_id``, the whole usage
(input and output tokens) of that stored response: the context a continuation carries. So a
count made before a create equals that create's ``usage.input_tokens`` when there is no
previous response.

It refuses what a create refuses before answering: no ``model``, a ``previous_response_id``
this fake does not hold, replayed reasoning another account issued. Scripted faults strike it
as they strike a non-streamed create, but only those that fit an answer without a stream: a
``Fault.status`` (that status and body) and ``Fault.malformed_sse`` (a complete HTTP message
whose JSON is cut off); any other fault stays queued for the next create.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Final

import orjson

from ._answers import BadBody, count_input_tokens, error_envelope, model_request
from ._faults import FaultKind

if TYPE_CHECKING:
    from ._http import RequestHead

__all__ = ["INPUT_TOKENS_ROUTES"]

#: The faults a count consumes (module docstring).
_COUNT_FAULTS: Final = frozenset({FaultKind.STATUS, FaultKind.MALFORMED_SSE})


async def _count(connection: Any, head: RequestHead, body: bytes, match: re.Match[str]) -> Any:
    upstream = connection.upstream
    queued = upstream._faults
    fault = queued.popleft() if queued and queued[0].kind in _COUNT_FAULTS else None
    if fault is not None and fault.kind is FaultKind.STATUS:
        return await connection._send_json(fault.status_code, fault.body, fault.headers)
    try:
        request = model_request(body)
    except BadBody as exc:
        return await connection._invalid(exc.message, param=exc.param, code=exc.code)
    items = request.get("input")
    if items is not None and not isinstance(items, str | list):
        return await connection._invalid(
            "Invalid type for 'input': expected a string or an array of input items.",
            param="input",
            code="invalid_type",
        )
    count = count_input_tokens(request)
    previous = request.get("previous_response_id")
    if previous is not None:
        stored = upstream._stored.get(previous)
        if stored is None:
            return await connection._invalid(
                f"Previous response with id '{previous}' not found.",
                param="previous_response_id",
                code="previous_response_not_found",
            )
        usage = stored.final.get("usage") or {}
        count += int(usage.get("input_tokens") or 0) + int(usage.get("output_tokens") or 0)
    if isinstance(items, list):
        refused = upstream._replay_error(upstream._account(head.headers), items)
        if refused is not None:
            status, message, param, code = refused
            envelope = error_envelope(message, type="invalid_request_error", param=param, code=code)
            return await connection._send_json(status, envelope)
    answer = orjson.dumps({"object": "response.input_tokens", "input_tokens": count})
    if fault is not None:  # malformed: the whole message, its JSON cut off
        return await connection._send_json(200, answer[: len(answer) // 2])
    return await connection._send_json(200, answer)


#: ``POST /v1/responses/input_tokens`` (``_extra.EXTRA_ROUTES``).
INPUT_TOKENS_ROUTES: Final = [("POST", re.compile(r"/v1/responses/input_tokens"), _count)]
