"""What the fake upstream says: Response objects, SSE frames and error envelopes.

Pure functions of the request body and a few ids; nothing here touches sockets or trio, so the
server module only decides *when* bytes go out, never *what* they are. The shapes follow
the Responses API reference and the sequences of the Responses streaming reference byte for byte:
compact JSON, one ``event:`` line and one ``data:`` line per frame, ``type`` and ``sequence_number``
first.

Two paths. A *plain* request (:func:`is_plain`: no tools, no ``include``, no ``text.format``
other than text, no ``reasoning``) gets the canned text of :func:`build_response`, whose delta
frames are pre-encoded: benchmarks measure the gateway on this path, so it stays as cheap as it
was. Every other request gets :func:`build_rich_response`, which answers the way a real model's
output is shaped:

- with a ``context_management`` compaction whose ``compact_threshold`` the input's words
  reach, a ``compaction`` item first (sealed by the caller's account, as reasoning is);
- a reasoning model (``o<digit>…``, ``gpt-5…``, or any request with ``reasoning``) first emits
  a ``reasoning`` item (sequences B/C), with a summary when ``reasoning.summary`` asks for one
  and ``encrypted_content`` when ``include`` asks for it (sealed by the caller's account);
- with function or custom tools, unless the conversation's last input item is a tool output or
  ``tool_choice`` is ``none``, a ``function_call`` / ``custom_tool_call`` of the first tool (or
  the one ``tool_choice`` names) whose arguments are a minimal valid instance of its
  ``parameters`` schema;
- otherwise a message: a minimal instance of the ``json_schema`` format, ``{}`` for
  ``json_object``, text quoting the tool output after one, else the canned text.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import attrs
import orjson

from ..codecs._emitter import response_echo
from ._schema import minimal_instance

__all__ = [
    "MALFORMED_FRAME",
    "BadBody",
    "SseScript",
    "answer_text",
    "as_cancelled",
    "as_queued",
    "build_response",
    "build_rich_response",
    "count_input_tokens",
    "encode_frame",
    "error_envelope",
    "is_plain",
    "json_pieces",
    "model_request",
    "sse_script",
    "word_pieces",
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

# The ``include`` value that asks for reasoning state on reasoning items.
_ENCRYPTED_REASONING: Final = "reasoning.encrypted_content"
# Input item types that carry a tool's result back to the model.
_TOOL_OUTPUT_TYPES: Final = frozenset({"function_call_output", "custom_tool_call_output"})
# What a reasoning model of the fake thinks: shown as the summary when one is asked for, sealed
# into ``encrypted_content`` when that is included; its words are the reasoning tokens.
_REASONING_SUMMARY: Final = (
    "**Answering from a script**\n\nThe fake upstream checks the tools and the format, then "
    "answers."
)
_REASONING_TOKENS: Final = len(_REASONING_SUMMARY.split())
# Names of OpenAI's reasoning models: o1, o3-mini, o4-mini, gpt-5, gpt-5.4-mini, ...
_REASONING_MODEL: Final = re.compile(r"o\d|gpt-5")
_TOOL_TYPES: Final = frozenset({"function", "custom"})
# A custom tool's free-form input: the first words of the canned answer.
_CUSTOM_INPUT: Final = "Sluicegate fake upstream"
# Text streams a word per delta (leading whitespace kept, as the canned answer does); JSON, which
# has no spaces when compact, a token per delta: a string, a punctuation mark, a literal.
_WORD_PIECES: Final = re.compile(r"\s*\S+|\s+")
_JSON_PIECES: Final = re.compile(r'"(?:[^"\\]|\\.)*"|[{}\[\],:]|[^{}\[\],:"\s]+|\s+')


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
    """The final Response object (the Responses API reference) answering the request ``body``.

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
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": produced,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input_tokens + produced,
        },
    }


def is_plain(body: Mapping[str, Any]) -> bool:
    """Whether ``body`` gets the canned answer of :func:`build_response` (module docstring)."""
    return (
        not body.get("tools")
        and not body.get("include")
        and body.get("reasoning") is None
        and _format_type(body) == "text"
        and _compact_threshold(body) is None
    )


def _compact_threshold(body: Mapping[str, Any]) -> int | None:
    """The ``compact_threshold`` of a ``context_management`` compaction entry, if any."""
    entries = body.get("context_management")
    for entry in entries if isinstance(entries, list) else ():
        if isinstance(entry, Mapping) and entry.get("type") == "compaction":
            threshold = entry.get("compact_threshold")
            if isinstance(threshold, int) and not isinstance(threshold, bool):
                return threshold
    return None


def build_rich_response(
    body: Mapping[str, Any],
    *,
    response_id: str,
    created_at: int,
    completed_at: int,
    tokens: int,
    new_id: Callable[[str], str],
    seal: Callable[[str, str], str],
) -> dict[str, Any]:
    """The final Response object answering a request that is not plain (module docstring).

    Args:
        body: the request.
        response_id: the Response's ``id``.
        created_at: unix seconds.
        completed_at: unix seconds, when the answer is complete.
        tokens: words of the canned text, when the answer is that text.
        new_id: a fresh id with the given prefix (``rs``, ``fc``, ``call``, ``msg``, ...).
        seal: the ``encrypted_content`` of a reasoning item, given its id and reasoning text.

    ``max_output_tokens`` cuts a message's text as on the plain path (status ``incomplete``);
    reasoning and tool calls are never cut. ``output_tokens`` counts the reasoning words and one
    token per streamed delta of the text or arguments.
    """
    output: list[dict[str, Any]] = []
    threshold = _compact_threshold(body)
    if threshold is not None and count_input_tokens(body) >= threshold:
        # Server-side compaction (``context_management``): the compaction item comes first,
        # sealed by the account like reasoning state.
        compaction_id = new_id("cmp")
        compacted = {"id": compaction_id, "type": "compaction"}
        output.append(compacted | {"encrypted_content": seal(compaction_id, "compacted")})
    reasoning_tokens = 0
    if _reasoning_model(body):
        item_id = new_id("rs")
        summary = [{"type": "summary_text", "text": _REASONING_SUMMARY}] if _summary(body) else []
        reasoning: dict[str, Any] = {"id": item_id, "type": "reasoning", "summary": summary}
        include = body.get("include")
        if isinstance(include, list) and _ENCRYPTED_REASONING in include:
            reasoning["encrypted_content"] = seal(item_id, _REASONING_SUMMARY)
        output.append(reasoning)
        reasoning_tokens = _REASONING_TOKENS
    incomplete = False
    tool = _tool_to_call(body)
    if tool is None:
        pieces = _message_pieces(body, tokens)
        limit = body.get("max_output_tokens")
        if isinstance(limit, int) and not isinstance(limit, bool) and limit < len(pieces):
            pieces = pieces[: max(limit, 0)]
            incomplete = True
        produced = len(pieces)
        status = "incomplete" if incomplete else "completed"
        part = {"type": "output_text", "text": "".join(pieces), "annotations": [], "logprobs": []}
        message = {"id": new_id("msg"), "type": "message", "status": status, "role": "assistant"}
        output.append(message | {"content": [part]})
    elif tool["type"] == "function":
        arguments = _arguments(tool)
        produced = len(json_pieces(arguments))
        output.append(
            {
                "id": new_id("fc"),
                "type": "function_call",
                "status": "completed",
                "arguments": arguments,
                "call_id": new_id("call"),
                "name": tool["name"],
            }
        )
    else:
        produced = len(word_pieces(_CUSTOM_INPUT))
        output.append(
            {
                "id": new_id("ctc"),
                "type": "custom_tool_call",
                "status": "completed",
                "call_id": new_id("call"),
                "input": _CUSTOM_INPUT,
                "name": tool["name"],
            }
        )
    input_tokens = count_input_tokens(body)
    output_tokens = reasoning_tokens + produced
    echo = response_echo(
        body, response_id=response_id, model=body.get("model") or "", created_at=created_at
    )
    return {
        **echo,
        "status": "incomplete" if incomplete else "completed",
        "completed_at": None if incomplete else completed_at,
        "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
        "output": output,
        "usage": {
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
            "total_tokens": input_tokens + output_tokens,
        },
    }


def word_pieces(text: str) -> list[str]:
    """``text`` as the fake streams it: one word per delta, with its leading whitespace."""
    return _WORD_PIECES.findall(text)


def json_pieces(text: str) -> list[str]:
    """Compact JSON as the fake streams it: a string, a punctuation mark or a literal per delta."""
    pieces: list[str] = _JSON_PIECES.findall(text)
    # Anything the pattern cannot split (not JSON at all) goes out in one piece.
    return pieces if "".join(pieces) == text else [text]


def _format(body: Mapping[str, Any]) -> Mapping[str, Any] | None:
    text = body.get("text")
    if isinstance(text, Mapping):
        fmt = text.get("format")
        if isinstance(fmt, Mapping):
            return fmt
    return None


def _format_type(body: Mapping[str, Any]) -> str:
    fmt = _format(body)
    kind = fmt.get("type") if fmt is not None else None
    return kind if isinstance(kind, str) else "text"


def _reasoning_model(body: Mapping[str, Any]) -> bool:
    reasoning = body.get("reasoning")
    if isinstance(reasoning, Mapping):
        # Effort "none" (gpt-5.1 and later) turns reasoning off.
        return reasoning.get("effort") != "none"
    if reasoning is not None:
        return True
    model = body.get("model")
    return isinstance(model, str) and _REASONING_MODEL.match(model) is not None


def _summary(body: Mapping[str, Any]) -> bool:
    reasoning = body.get("reasoning")
    if not isinstance(reasoning, Mapping):
        return False
    # ``generate_summary`` is the deprecated name of ``summary`` (the Responses API reference).
    return reasoning.get("summary") is not None or reasoning.get("generate_summary") is not None


def _last_tool_output(body: Mapping[str, Any]) -> Mapping[str, Any] | None:
    items = body.get("input")
    if isinstance(items, list) and items:
        last = items[-1]
        if isinstance(last, Mapping) and last.get("type") in _TOOL_OUTPUT_TYPES:
            return last
    return None


def _tool_to_call(body: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The function or custom tool the fake calls now, or None to answer with a message."""
    tools = body.get("tools")
    if not isinstance(tools, list) or _last_tool_output(body) is not None:
        return None
    callable_tools = [
        tool
        for tool in tools
        if isinstance(tool, Mapping)
        and tool.get("type") in _TOOL_TYPES
        and isinstance(tool.get("name"), str)
    ]
    choice = body.get("tool_choice")
    if not callable_tools or choice == "none":
        return None
    if not isinstance(choice, Mapping):
        return callable_tools[0]  # "auto", "required" or absent
    kind = choice.get("type")
    if kind in _TOOL_TYPES:
        forced = (kind, choice.get("name"))
        return next((t for t in callable_tools if (t["type"], t["name"]) == forced), None)
    if kind == "allowed_tools":
        allowed = {
            (a.get("type"), a.get("name"))
            for a in choice.get("tools") or ()
            if isinstance(a, Mapping)
        }
        return next((t for t in callable_tools if (t["type"], t["name"]) in allowed), None)
    return None  # a hosted tool is forced: nothing the fake runs


def _arguments(tool: Mapping[str, Any]) -> str:
    parameters = tool.get("parameters")
    value = minimal_instance(parameters) if parameters is not None else {}
    # Arguments are always a JSON object, even for a schema that is not one.
    return orjson.dumps(value if isinstance(value, dict) else {}).decode()


def _message_pieces(body: Mapping[str, Any], tokens: int) -> list[str]:
    fmt = _format(body)
    kind = _format_type(body)
    if kind == "json_schema" and fmt is not None:
        return json_pieces(orjson.dumps(minimal_instance(fmt.get("schema"))).decode())
    if kind == "json_object":
        return json_pieces("{}")
    tool_output = _last_tool_output(body)
    if tool_output is not None:
        return word_pieces(f"The tool returned: {_output_text(tool_output.get('output'))}")
    return word_pieces(answer_text(tokens))


def _output_text(output: Any) -> str:
    if isinstance(output, str):
        return output
    if isinstance(output, list):
        texts = [
            part["text"]
            for part in output
            if isinstance(part, Mapping) and isinstance(part.get("text"), str)
        ]
        return " ".join(texts)
    return orjson.dumps(output).decode()


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
    """``final`` as a background create call returns it at once (the Responses API reference)."""
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

    ``delta_indices`` are the positions of the deltas (text, arguments, summary): the server
    sleeps ``token_delay`` before each and flushes what it has, so a slow stream is paced per
    token.
    """

    frames: list[bytes]
    delta_indices: frozenset[int]
    #: Index of the terminal event (always the last frame).
    terminal_index: int


def sse_script(
    final: Mapping[str, Any],
    *,
    extra_events: Sequence[Mapping[str, Any]] = (),
    plain: bool = False,
) -> SseScript:
    """The stream of ``final`` (the Responses streaming reference: sequence A for a message, B for a
    function call, C for a reasoning item), with ``extra_events`` inserted right after
    ``response.in_progress`` and every sequence number renumbered gaplessly.

    ``plain``: ``final`` is :func:`build_response`'s one canned message, whose delta frames come
    pre-encoded (the same bytes, without encoding each delta).
    """
    running = _unfinished(final, "in_progress")
    frames: list[bytes] = []
    deltas: set[int] = set()

    def add(event: dict[str, Any]) -> None:
        frames.append(
            encode_frame({"type": event.pop("type"), "sequence_number": len(frames)} | event)
        )

    def add_delta(event: dict[str, Any]) -> None:
        deltas.add(len(frames))
        add(event)

    add({"type": "response.created", "response": running})
    add({"type": "response.in_progress", "response": running})
    for extra in extra_events:
        # The caller's field order is kept; only the sequence number is ours to set.
        frames.append(encode_frame(dict(extra) | {"sequence_number": len(frames)}))
    if plain:
        deltas.update(_canned_message(final, frames, add))
    else:
        json_text = _format_type(final) in ("json_schema", "json_object")
        for index, item in enumerate(final["output"]):
            match item["type"]:
                case "reasoning":
                    _reasoning_events(item, index, add, add_delta)
                case "function_call":
                    _function_call_events(item, index, add, add_delta)
                case "custom_tool_call":
                    _custom_tool_call_events(item, index, add, add_delta)
                case _:
                    _message_events(item, index, add, add_delta, json_text=json_text)
    add({"type": f"response.{final['status']}", "response": final})
    return SseScript(frames=frames, delta_indices=frozenset(deltas), terminal_index=len(frames) - 1)


_Add = Callable[[dict[str, Any]], None]


def _canned_message(final: Mapping[str, Any], frames: list[bytes], add: _Add) -> range:
    """Sequence A for the canned message; returns the indices of its deltas."""
    item = final["output"][0]
    item_id = item["id"]
    text = item["content"][0]["text"]
    produced = final["usage"]["output_tokens"]
    part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
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
    deltas = range(first_delta, len(frames))
    add({"type": "response.output_text.done", **where, "text": text, "logprobs": []})
    add({"type": "response.content_part.done", **where, "part": part})
    add({"type": "response.output_item.done", "output_index": 0, "item": item})
    return deltas


def _message_events(
    item: dict[str, Any], index: int, add: _Add, add_delta: _Add, *, json_text: bool
) -> None:
    add(
        {
            "type": "response.output_item.added",
            "output_index": index,
            "item": item | {"status": "in_progress", "content": []},
        }
    )
    where = {"item_id": item["id"], "output_index": index}
    for content_index, part in enumerate(item["content"]):
        at = where | {"content_index": content_index}
        text = part["text"]
        add({"type": "response.content_part.added", **at, "part": part | {"text": ""}})
        for piece in json_pieces(text) if json_text else word_pieces(text):
            add_delta({"type": "response.output_text.delta", **at, "delta": piece, "logprobs": []})
        add({"type": "response.output_text.done", **at, "text": text, "logprobs": []})
        add({"type": "response.content_part.done", **at, "part": part})
    add({"type": "response.output_item.done", "output_index": index, "item": item})


def _reasoning_events(item: dict[str, Any], index: int, add: _Add, add_delta: _Add) -> None:
    # The summary is streamed part by part (sequence C); encrypted state comes whole on both
    # ``added`` and ``done``, and clients keep the one on ``done`` (§4 rule 6).
    add(
        {
            "type": "response.output_item.added",
            "output_index": index,
            "item": item | {"summary": []},
        }
    )
    where = {"item_id": item["id"], "output_index": index}
    for summary_index, part in enumerate(item["summary"]):
        at = where | {"summary_index": summary_index}
        text = part["text"]
        add({"type": "response.reasoning_summary_part.added", **at, "part": part | {"text": ""}})
        for piece in word_pieces(text):
            add_delta({"type": "response.reasoning_summary_text.delta", **at, "delta": piece})
        add({"type": "response.reasoning_summary_text.done", **at, "text": text})
        add({"type": "response.reasoning_summary_part.done", **at, "part": part})
    add({"type": "response.output_item.done", "output_index": index, "item": item})


def _function_call_events(item: dict[str, Any], index: int, add: _Add, add_delta: _Add) -> None:
    # Sequence B: the item opens with empty arguments, which then stream as deltas.
    add(
        {
            "type": "response.output_item.added",
            "output_index": index,
            "item": item | {"status": "in_progress", "arguments": ""},
        }
    )
    where = {"item_id": item["id"], "output_index": index}
    arguments = item["arguments"]
    for piece in json_pieces(arguments):
        add_delta({"type": "response.function_call_arguments.delta", **where, "delta": piece})
    add(
        {
            "type": "response.function_call_arguments.done",
            **where,
            "arguments": arguments,
            "name": item["name"],
        }
    )
    add({"type": "response.output_item.done", "output_index": index, "item": item})


def _custom_tool_call_events(item: dict[str, Any], index: int, add: _Add, add_delta: _Add) -> None:
    # Sequence I: like a function call, with free-form ``input`` instead of JSON arguments.
    add(
        {
            "type": "response.output_item.added",
            "output_index": index,
            "item": item | {"status": "in_progress", "input": ""},
        }
    )
    where = {"item_id": item["id"], "output_index": index}
    text = item["input"]
    for piece in word_pieces(text):
        add_delta({"type": "response.custom_tool_call_input.delta", **where, "delta": piece})
    add({"type": "response.custom_tool_call_input.done", **where, "input": text})
    add({"type": "response.output_item.done", "output_index": index, "item": item})


def error_envelope(
    message: str, *, type: str, param: str | None = None, code: str | None = None
) -> bytes:
    """The encoded OpenAI error envelope (the Responses API reference)."""
    return orjson.dumps({"error": {"message": message, "type": type, "param": param, "code": code}})


class BadBody(Exception):
    """A request body the Responses API refuses with a 400: its message, param and code."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message, self.param, self.code = message, param, code


def model_request(body: bytes) -> dict[str, Any]:
    """A body as ``/responses`` and its siblings read it: a JSON object naming a ``model``.

    Raises:
        BadBody: not JSON, not an object, or no model.
    """
    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise BadBody("We could not parse the JSON body of your request.") from None
    if not isinstance(request, dict):
        raise BadBody("The request body must be a JSON object.")
    if not isinstance(request.get("model"), str):
        raise BadBody("Missing required parameter: 'model'.", "model", "missing_required_parameter")
    return request
