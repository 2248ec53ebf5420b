"""What the fake upstream says: Response objects, SSE frames and error envelopes.

Pure functions of the request body and a few ids; nothing here touches sockets or trio, so the
server module only decides *when* bytes go out, never *what* they are. The shapes follow
responses-api.md §8/§10 and sequence A of responses-streaming.md §3 byte for byte: compact JSON,
one ``event:`` line and one ``data:`` line per frame, ``type`` and ``sequence_number`` first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

import attrs
import orjson

from ..codecs._bridge import response_echo

__all__ = [
    "MALFORMED_FRAME",
    "SseScript",
    "answer_text",
    "as_cancelled",
    "as_queued",
    "build_response",
    "count_input_tokens",
    "encode_frame",
    "error_envelope",
    "sse_script",
]

# The answer cycles through these words; the same ``tokens`` always gives the same text, so tests
# can predict it and benchmarks compare like with like.
_WORDS: Final = (
    "Sluicegate",
    "fake",
    "upstream",
    "says",
    "hello",
    "with",
    "one",
    "word",
    "per",
    "token,",
    "so",
    "every",
    "answer",
    "is",
    "easy",
    "to",
    "count.",
)
# Deltas are the only per-token work, so their JSON string literals are encoded once up front:
# index 0 is the first word of an answer (no leading space), the rest carry a leading space.
_FIRST_DELTA_JSON: Final = orjson.dumps(_WORDS[0])
_DELTA_JSON: Final = tuple(orjson.dumps(" " + word) for word in _WORDS)
_DELTA_FRAME: Final = (
    b"event: response.output_text.delta\n"
    b'data: {"type":"response.output_text.delta","sequence_number":%d,"item_id":"%b",'
    b'"output_index":0,"content_index":0,"delta":%b,"logprobs":[]}\n\n'
)

#: A frame whose data line is cut off mid-JSON, as a proxy that truncates its buffer would send.
MALFORMED_FRAME: Final = b'event: response.output_text.delta\ndata: {"type":"resp\n\n'


def answer_text(tokens: int) -> str:
    """The deterministic answer of ``tokens`` words (the first without a leading space)."""
    if tokens <= 0:
        return ""
    rest = "".join(" " + _WORDS[i % len(_WORDS)] for i in range(1, tokens))
    return _WORDS[0] + rest


def count_input_tokens(body: Mapping[str, Any]) -> int:
    """Whitespace-separated words in the instructions and in every text of the input.

    Counts a string ``input``, string message ``content`` and ``input_text`` parts; other parts
    (images, files, tool outputs) count nothing, which is all a fake needs to make usage real.
    """
    count = 0
    instructions = body.get("instructions")
    if isinstance(instructions, str):
        count += len(instructions.split())
    items = body.get("input")
    if isinstance(items, str):
        return count + len(items.split())
    if not isinstance(items, list):
        return count
    for item in items:
        if not isinstance(item, dict):
            continue
        content = item.get("content")
        if isinstance(content, str):
            count += len(content.split())
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and part.get("type") == "input_text":
                    text = part.get("text")
                    if isinstance(text, str):
                        count += len(text.split())
    return count


def build_response(
    body: Mapping[str, Any],
    *,
    response_id: str,
    message_id: str,
    created_at: int,
    completed_at: int,
    tokens: int,
) -> dict[str, Any]:
    """The final Response object (responses-api.md §8) answering the request ``body``.

    Produces ``tokens`` words, or ``max_output_tokens`` of them with status ``incomplete`` when
    that is smaller. The echoed configuration carries OpenAI's defaults for absent fields.
    """
    limit = body.get("max_output_tokens")
    produced = tokens
    incomplete = False
    if isinstance(limit, int) and not isinstance(limit, bool) and limit < tokens:
        produced = max(limit, 0)
        incomplete = True
    text = answer_text(produced)
    input_tokens = count_input_tokens(body)
    echo = response_echo(
        body, response_id=response_id, model=body.get("model") or "", created_at=created_at
    )
    return {
        **echo,
        "status": "incomplete" if incomplete else "completed",
        "completed_at": None if incomplete else completed_at,
        "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
        "output": [
            {
                "id": message_id,
                "type": "message",
                "status": "incomplete" if incomplete else "completed",
                "role": "assistant",
                "content": [
                    {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
                ],
            }
        ],
        "usage": {
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": produced,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input_tokens + produced,
        },
    }


def _unfinished(final: Mapping[str, Any], status: str) -> dict[str, Any]:
    # What a client sees before the answer exists: no output, no usage, no completion time.
    return {
        **final,
        "status": status,
        "completed_at": None,
        "incomplete_details": None,
        "output": [],
        "usage": None,
    }


def as_queued(final: Mapping[str, Any]) -> dict[str, Any]:
    """``final`` as a background create call returns it at once (responses-api.md §9)."""
    return _unfinished(final, "queued")


def as_cancelled(final: Mapping[str, Any]) -> dict[str, Any]:
    """``final`` after a cancel reached it before it finished (``usage`` null, §9)."""
    return _unfinished(final, "cancelled")


def encode_frame(event: Mapping[str, Any]) -> bytes:
    """One SSE frame: ``event: <type>``, one compact ``data:`` line, a blank line."""
    return b"event: %b\ndata: %b\n\n" % (str(event["type"]).encode(), orjson.dumps(event))


@attrs.frozen(kw_only=True)
class SseScript:
    """The frames of one streamed answer, in order.

    ``delta_indices`` are the positions of the text deltas: the server sleeps ``token_delay``
    before each and flushes what it has, so a slow stream is paced per token.
    """

    frames: list[bytes]
    delta_indices: frozenset[int]
    #: Index of the terminal event (always the last frame).
    terminal_index: int


def sse_script(
    final: Mapping[str, Any], *, extra_events: Sequence[Mapping[str, Any]] = ()
) -> SseScript:
    """Sequence A of responses-streaming.md §3 for ``final``, with ``extra_events`` inserted
    right after ``response.in_progress`` and every sequence number renumbered gaplessly."""
    item = final["output"][0]
    item_id = item["id"]
    text = item["content"][0]["text"]
    produced = final["usage"]["output_tokens"]
    running = _unfinished(final, "in_progress")
    part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    frames: list[bytes] = []

    def add(event: dict[str, Any]) -> None:
        frames.append(
            encode_frame({"type": event.pop("type"), "sequence_number": len(frames)} | event)
        )

    add({"type": "response.created", "response": running})
    add({"type": "response.in_progress", "response": running})
    for extra in extra_events:
        # The caller's field order is kept; only the sequence number is ours to set.
        frames.append(encode_frame(dict(extra) | {"sequence_number": len(frames)}))
    add(
        {
            "type": "response.output_item.added",
            "output_index": 0,
            "item": item | {"status": "in_progress", "content": []},
        }
    )
    where = {"item_id": item_id, "output_index": 0, "content_index": 0}
    add({"type": "response.content_part.added", **where, "part": part | {"text": ""}})
    first_delta = len(frames)
    item_id_bytes = item_id.encode()
    for i in range(produced):
        word = _DELTA_JSON[i % len(_WORDS)] if i else _FIRST_DELTA_JSON
        frames.append(_DELTA_FRAME % (len(frames), item_id_bytes, word))
    deltas = frozenset(range(first_delta, len(frames)))
    add({"type": "response.output_text.done", **where, "text": text, "logprobs": []})
    add({"type": "response.content_part.done", **where, "part": part})
    add({"type": "response.output_item.done", "output_index": 0, "item": item})
    add({"type": f"response.{final['status']}", "response": final})
    return SseScript(frames=frames, delta_indices=deltas, terminal_index=len(frames) - 1)


def error_envelope(
    message: str, *, type: str, param: str | None = None, code: str | None = None
) -> bytes:
    """The encoded OpenAI error envelope (responses-api.md §10)."""
    return orjson.dumps({"error": {"message": message, "type": type, "param": param, "code": code}})
