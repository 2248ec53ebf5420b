"""Tests of the sans-IO SSE codec (sluicegate.codecs.sse).

Every decoding fixture goes through :func:`assert_decodes`, which feeds it whole, byte by byte,
split in two at every boundary and in three at a sample of boundary pairs, and demands the same
events each time: chunking must never change what the decoder sees.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator, Sequence

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sluicegate.codecs.sse import ServerSentEvent, SSEDecoder, encode_comment, encode_event
from sluicegate.errors import UpstreamProtocolError

BOM = b"\xef\xbb\xbf"


def Ev(
    data: bytes, event: str = "message", id: str | None = None, retry: int | None = None
) -> ServerSentEvent:
    return ServerSentEvent(event=event, data=data, id=id, retry=retry)


# --- the chunking helper ---------------------------------------------------------------------


def chunkings(stream: bytes) -> Iterator[tuple[str, list[bytes]]]:
    """Ways to deliver ``stream``: whole, byte by byte, every 2-split, sampled 3-splits."""
    n = len(stream)
    yield "whole", [stream]
    yield "byte by byte", [stream[i : i + 1] for i in range(n)]
    for i in range(n + 1):
        yield f"split at {i}", [stream[:i], stream[i:]]
    if n <= 48:
        pairs: Sequence[tuple[int, int]] = list(
            itertools.combinations_with_replacement(range(n + 1), 2)
        )
    else:
        rng = random.Random(n)  # deterministic per fixture
        sampled = set()
        for _ in range(300):
            a, b = rng.randint(0, n), rng.randint(0, n)
            sampled.add((min(a, b), max(a, b)))
        adjacent = {(i, i + 1) for i in range(n)}  # one-byte middle piece everywhere
        pairs = sorted(sampled | adjacent)
    for i, j in pairs:
        yield f"split at {i}, {j}", [stream[:i], stream[i:j], stream[j:]]


def decode(chunks: Sequence[bytes], **kwargs: int) -> list[ServerSentEvent]:
    decoder = SSEDecoder(**kwargs)
    events: list[ServerSentEvent] = []
    for chunk in chunks:
        events += decoder.feed(chunk)
    events += decoder.close()
    return events


def assert_decodes(stream: bytes, expected: list[ServerSentEvent], **kwargs: int) -> None:
    """Decoding ``stream`` (feeds, then close) gives ``expected`` under every chunking."""
    for label, chunks in chunkings(stream):
        assert decode(chunks, **kwargs) == expected, f"{label}: {chunks!r}"


def assert_too_big(stream: bytes, max_event_bytes: int) -> None:
    """Decoding ``stream`` raises UpstreamProtocolError under every chunking."""
    for label, chunks in chunkings(stream):
        with pytest.raises(UpstreamProtocolError, match="max_event_bytes"):
            decode(chunks, max_event_bytes=max_event_bytes)
            pytest.fail(f"did not raise: {label}")


def test_helper_detects_wrong_expectation() -> None:
    with pytest.raises(AssertionError):
        assert_decodes(b"data: a\n\n", [Ev(b"b")])
    with pytest.raises(AssertionError):
        assert_decodes(b"data: a\n\n", [])


# --- a recorded-shape OpenAI Responses stream (the Responses streaming reference A)
# -----------------

RESPONSES_STREAM = (
    b"event: response.created\n"
    b'data: {"type":"response.created","sequence_number":0,"response":{"id":"resp_1","object":'
    b'"response","created_at":1757000000,"status":"in_progress","model":"gpt-5","output":[],'
    b'"usage":null}}\n'
    b"\n"
    b"event: response.in_progress\n"
    b'data: {"type":"response.in_progress","sequence_number":1,"response":{"id":"resp_1",'
    b'"object":"response","created_at":1757000000,"status":"in_progress","model":"gpt-5",'
    b'"output":[],"usage":null}}\n'
    b"\n"
    b"event: response.output_item.added\n"
    b'data: {"type":"response.output_item.added","sequence_number":2,"output_index":0,"item":'
    b'{"id":"msg_1","type":"message","status":"in_progress","role":"assistant","content":[]}}\n'
    b"\n"
    b"event: response.content_part.added\n"
    b'data: {"type":"response.content_part.added","sequence_number":3,"item_id":"msg_1",'
    b'"output_index":0,"content_index":0,"part":{"type":"output_text","text":"",'
    b'"annotations":[]}}\n'
    b"\n"
    b": keepalive\n"
    b"\n"
    b"event: response.output_text.delta\n"
    b'data: {"type":"response.output_text.delta","sequence_number":4,"item_id":"msg_1",'
    b'"output_index":0,"content_index":0,"delta":"Hi","logprobs":[],"obfuscation":"x9Kq"}\n'
    b"\n"
    b"event: response.output_text.delta\n"
    b'data: {"type":"response.output_text.delta","sequence_number":5,"item_id":"msg_1",'
    b'"output_index":0,"content_index":0,"delta":" there!","logprobs":[],"obfuscation":"Q"}\n'
    b"\n"
    b"event: response.output_text.done\n"
    b'data: {"type":"response.output_text.done","sequence_number":6,"item_id":"msg_1",'
    b'"output_index":0,"content_index":0,"text":"Hi there!","logprobs":[]}\n'
    b"\n"
    b"event: response.content_part.done\n"
    b'data: {"type":"response.content_part.done","sequence_number":7,"item_id":"msg_1",'
    b'"output_index":0,"content_index":0,"part":{"type":"output_text","text":"Hi there!",'
    b'"annotations":[]}}\n'
    b"\n"
    b"event: response.output_item.done\n"
    b'data: {"type":"response.output_item.done","sequence_number":8,"output_index":0,"item":'
    b'{"id":"msg_1","type":"message","status":"completed","role":"assistant","content":'
    b'[{"type":"output_text","text":"Hi there!","annotations":[]}]}}\n'
    b"\n"
    b"event: response.completed\n"
    b'data: {"type":"response.completed","sequence_number":9,"response":{"id":"resp_1",'
    b'"object":"response","created_at":1757000000,"status":"completed","model":"gpt-5",'
    b'"output":[{"id":"msg_1","type":"message","status":"completed","role":"assistant",'
    b'"content":[{"type":"output_text","text":"Hi there!","annotations":[]}]}],"usage":'
    b'{"input_tokens":12,"input_tokens_details":{"cached_tokens":0},"output_tokens":4,'
    b'"output_tokens_details":{"reasoning_tokens":0},"total_tokens":16}}}\n'
    b"\n"
)

RESPONSES_EVENT_NAMES = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.delta",
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]


def test_responses_stream_whole() -> None:
    events = SSEDecoder().feed(RESPONSES_STREAM)
    assert [e.event for e in events] == RESPONSES_EVENT_NAMES
    for seq, event in enumerate(events):
        assert type(event.data) is bytes
        payload = orjson.loads(event.data)
        assert payload["type"] == event.event
        assert payload["sequence_number"] == seq
        assert event.id is None
        assert event.retry is None
    assert events[5].data == (
        b'{"type":"response.output_text.delta","sequence_number":5,"item_id":"msg_1",'
        b'"output_index":0,"content_index":0,"delta":" there!","logprobs":[],"obfuscation":"Q"}'
    )


def _responses_events() -> list[ServerSentEvent]:
    events = SSEDecoder().feed(RESPONSES_STREAM)
    assert len(events) == len(RESPONSES_EVENT_NAMES)
    return events


@pytest.mark.parametrize(
    "ending",
    [b"\n", b"\r\n", b"\r"],
    ids=["LF", "CRLF", "CR"],
)
def test_responses_stream_any_chunking_and_line_ending(ending: bytes) -> None:
    assert_decodes(RESPONSES_STREAM.replace(b"\n", ending), _responses_events())


def test_responses_stream_mixed_line_endings() -> None:
    lines = RESPONSES_STREAM.split(b"\n")
    endings = itertools.cycle([b"\r\n", b"\r", b"\n"])
    stream = b""
    for line in lines[:-1]:
        ending = next(endings)
        if stream.endswith(b"\r") and not line and ending == b"\n":
            ending = b"\r\n"  # CR then LF would be one CRLF, not two line ends
        stream += line + ending
    assert_decodes(stream, _responses_events())


def test_encoder_reproduces_responses_stream() -> None:
    frames = [encode_event(e.data, event=e.event) for e in _responses_events()]
    assert b"".join(frames) == RESPONSES_STREAM.replace(b": keepalive\n\n", b"")


# --- decoding rules, one fixture each --------------------------------------------------------

DECODE_CASES: list[tuple[str, bytes, list[ServerSentEvent]]] = [
    (
        "comments and keepalives",
        b": hello\n\n:\n\nevent: a\n: inside an event\ndata: 1\n\n: keepalive\n\n",
        [Ev(b"1", "a")],
    ),
    (
        "multi-line data",
        b"data: line1\ndata: line2\ndata:\ndata:  indented\n\n",
        [Ev(b"line1\nline2\n\n indented")],
    ),
    ("no event line is a message", b"data: x\n\ndata: {}\n\n", [Ev(b"x"), Ev(b"{}")]),
    (
        "empty event name is a message",
        b"event:\ndata: x\n\nevent: \ndata: y\n\n",
        [Ev(b"x"), Ev(b"y")],
    ),
    ("event after data", b"data: x\nevent: late\n\n", [Ev(b"x", "late")]),
    ("last event line wins", b"event: a\nevent: b\ndata: x\n\n", [Ev(b"x", "b")]),
    (
        "one leading space stripped, colons kept",
        b"data:no-space\n\ndata:  two\n\nevent:x\ndata: a:b: c\n\n",
        [Ev(b"no-space"), Ev(b" two"), Ev(b"a:b: c", "x")],
    ),
    (
        "id persists, empty id resets, id with NUL ignored",
        b"id: 1\ndata: a\n\ndata: b\n\nid\ndata: c\n\nid: 2\n\ndata: d\n\n"
        b"id: x\x00y\ndata: e\n\nid:\ndata: f\n\n",
        [
            Ev(b"a", id="1"),
            Ev(b"b", id="1"),
            Ev(b"c"),
            Ev(b"d", id="2"),
            Ev(b"e", id="2"),
            Ev(b"f"),
        ],
    ),
    (
        "retry: ASCII digits only, reported once, carried to the next event",
        b"retry: 1500\ndata: a\n\ndata: b\n\nretry: 1a\ndata: c\n\n"
        b"retry: \xd9\xa1\xd9\xa2\ndata: d\n\nretry:\ndata: e\n\nretry: -5\ndata: f\n\n"
        b"retry: 2000\n\ndata: g\n\nretry: 1\nretry: 007\ndata: h\n\n"
        b"retry:  15\ndata: i\n\nretry: 15 \ndata: j\n\n",
        [
            Ev(b"a", retry=1500),
            Ev(b"b"),
            Ev(b"c"),
            Ev(b"d"),
            Ev(b"e"),
            Ev(b"f"),
            Ev(b"g", retry=2000),
            Ev(b"h", retry=7),
            Ev(b"i"),
            Ev(b"j"),
        ],
    ),
    ("BOM skipped", BOM + b"data: a\n\n", [Ev(b"a")]),
    ("BOM before CRLF stream", BOM + b"event: e\r\ndata: a\r\n\r\n", [Ev(b"a", "e")]),
    ("only the first BOM is skipped", BOM + BOM + b"data: a\n\ndata: b\n\n", [Ev(b"b")]),
    ("BOM later is not skipped", b"data: a\n\n" + BOM + b"data: b\n\n", [Ev(b"a")]),
    ("partial BOM is not a BOM", b"\xef\xbbdata: a\n\ndata: b\n\n", [Ev(b"b")]),
    ("BOM alone", BOM, []),
    (
        "blank line with empty data buffer dispatches nothing and resets the event type",
        b"event: x\n\ndata: y\n\nevent: z\nid: 5\n\n\n\n\ndata: w\n\n",
        [Ev(b"y"), Ev(b"w", id="5")],
    ),
    ("empty data line dispatches empty data", b"data:\n\ndata: \n\n", [Ev(b""), Ev(b"")]),
    (
        "colon-less lines are fields with empty values",
        b"data\n\ndata\ndata\n\nevent\ndata: a\n\ncomment-ish\ndata: b\n\n",
        [Ev(b""), Ev(b"\n"), Ev(b"a"), Ev(b"b")],
    ),
    (
        "unknown and wrongly cased fields ignored",
        b"foo: bar\nDATA: x\nEvent: y\ndata : no\nevents: no\ndata: z\n\n",
        [Ev(b"z")],
    ),
    (
        "only unknown fields dispatch nothing",
        b"foo: bar\n\nevent: e\nfoo\n\n",
        [],
    ),
    (
        "UTF-8 names, undecoded data",
        b"event: caf\xc3\xa9\ndata: \xff\xfe \xc3\xa9\n\nevent: \xff\ndata: x\n\n",
        [Ev(b"\xff\xfe \xc3\xa9", "caf\u00e9"), Ev(b"x", "\ufffd")],
    ),
    (
        "mixed line endings",
        b"event: a\r\ndata: 1\r\rdata: 2\n\r\ndata: 3\r\n\ndata: 4\n\r\r",
        [Ev(b"1", "a"), Ev(b"2"), Ev(b"3"), Ev(b"4")],
    ),
    ("CR CRLF is two line ends", b"data: a\r\r\ndata: b\r\n\r\n", [Ev(b"a"), Ev(b"b")]),
    ("LF CR is two line ends", b"data: a\n\rdata: b\n\n", [Ev(b"a"), Ev(b"b")]),
    (
        "fast-path lookalikes take the general path",
        b"event: a\ndata: 1\ndata: 2\n\nevent: b\nid: 3\ndata: x\n\nevent: c\ndata:y\n\n"
        b"data: 1\nevent: d\n\nevent: e\n: c\ndata: z\n\n",
        [
            Ev(b"1\n2", "a"),
            Ev(b"x", "b", id="3"),
            Ev(b"y", "c", id="3"),
            Ev(b"1", "d", id="3"),
            Ev(b"z", "e", id="3"),
        ],
    ),
    ("NUL in data kept", b"data: a\x00b\n\n", [Ev(b"a\x00b")]),
    ("empty stream", b"", []),
]


@pytest.mark.parametrize(
    ("stream", "expected"),
    [pytest.param(s, e, id=name) for name, s, e in DECODE_CASES],
)
def test_decode(stream: bytes, expected: list[ServerSentEvent]) -> None:
    assert_decodes(stream, expected)


@pytest.mark.parametrize(
    ("stream", "expected"),
    # Fixtures that already contain CR choose their own line endings.
    [pytest.param(s, e, id=name) for name, s, e in DECODE_CASES if b"\r" not in s],
)
@pytest.mark.parametrize("ending", [b"\r\n", b"\r"], ids=["CRLF", "CR"])
def test_decode_other_line_endings(
    stream: bytes, expected: list[ServerSentEvent], ending: bytes
) -> None:
    assert_decodes(stream.replace(b"\n", ending), expected)


def test_feed_tolerates_other_buffers_and_returns_bytes_data() -> None:
    # Typed as bytes, but a bytearray or memoryview must not leak into ServerSentEvent.data.
    decoder = SSEDecoder()
    events = decoder.feed(bytearray(b"data: a\n\n"))  # type: ignore[arg-type]
    events += decoder.feed(bytearray(b"data: b\ndata"))  # type: ignore[arg-type]
    events += decoder.feed(memoryview(b"\n\n"))  # type: ignore[arg-type]
    assert events == [Ev(b"a"), Ev(b"b\n")]
    assert all(type(e.data) is bytes for e in events)


def test_events_returned_by_the_feed_that_completes_them() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"event: a\ndata: 1\n") == []
    assert decoder.feed(b"\nevent: b\ndata: 2\n\nevent: c\r") == [Ev(b"1", "a"), Ev(b"2", "b")]
    assert decoder.feed(b"\ndata: 3\r") == []
    # The CR ended the line; the blank line completes the event without waiting for more.
    assert decoder.feed(b"\r") == [Ev(b"3", "c")]
    assert decoder.feed(b"\n") == []  # a stray LF after the CR is a blank line, not CRLF
    assert decoder.close() == []


# --- close() ---------------------------------------------------------------------------------

CLOSE_CASES: list[tuple[str, bytes, list[ServerSentEvent]]] = [
    ("final blank line missing, LF", b"event: e\ndata: a\n", [Ev(b"a", "e")]),
    ("final blank line missing, CR", b"event: e\rdata: a\r", [Ev(b"a", "e")]),
    ("final blank line missing, CRLF", b"event: e\r\ndata: a\r\n", [Ev(b"a", "e")]),
    ("after a complete event", b"data: a\n\nid: 7\ndata: b\n", [Ev(b"a"), Ev(b"b", id="7")]),
    ("pending event after non-data line", b"data: a\nevent: late\n", [Ev(b"a", "late")]),
    ("partial line discarded", b"data: a\n\nevent: e\ndata: b", [Ev(b"a")]),
    ("partial line discards its event", b"data: a\ndata: b", []),
    ("partial data line", b'data: {"type":"response.comp', []),
    ("pending event without data", b"data: a\n\nevent: e\nid: 1\n", [Ev(b"a")]),
    ("pending comment", b": keepalive\n", []),
    ("partial BOM", BOM[:2], []),
]


@pytest.mark.parametrize(
    ("stream", "expected"),
    [pytest.param(s, e, id=name) for name, s, e in CLOSE_CASES],
)
def test_close(stream: bytes, expected: list[ServerSentEvent]) -> None:
    assert_decodes(stream, expected)


def test_close_is_final() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\n") == []
    assert decoder.close() == [Ev(b"a")]
    assert decoder.close() == []
    with pytest.raises(RuntimeError, match="after close"):
        decoder.feed(b"data: b\n\n")


# --- max_event_bytes -------------------------------------------------------------------------


def test_endless_line_raises_before_memory_grows() -> None:
    decoder = SSEDecoder(max_event_bytes=10_000)
    decoder.feed(b"data: ")
    fed = 6
    with pytest.raises(UpstreamProtocolError, match="max_event_bytes=10000") as info:
        while fed <= 10_000:
            decoder.feed(b"x" * 1000)
            fed += 1000
    assert fed == 9006  # raised on the chunk that crossed the limit
    assert info.value.status_code == 502
    assert info.value.code == "upstream_protocol_error"


def test_endless_line_in_one_chunk_raises() -> None:
    with pytest.raises(UpstreamProtocolError):
        SSEDecoder(max_event_bytes=100).feed(b"data: a\n\n" + b"x" * 101)


def test_endless_event_of_many_lines_raises() -> None:
    decoder = SSEDecoder(max_event_bytes=1000)
    with pytest.raises(UpstreamProtocolError):
        for _ in range(200):
            decoder.feed(b"data: x\n")


def test_many_small_events_do_not_count_together() -> None:
    stream = b"event: e\ndata: x\n\n" * 1000 + b"data: y\n\n"
    events = SSEDecoder(max_event_bytes=20).feed(stream)
    assert len(events) == 1001


# An event's size: its lines up to and including the last terminator, without the blank line.
LIMIT_CASES = [
    ("data line", b"data: a\n\ndata: 12345\n\n", 12),
    ("two lines", b"event: e\ndata: 12345\n\n", 21),
    ("comment line", b": 123456789\n\n", 12),
    ("CRLF counts as one", b"data: 1234\r\n\r\n", 11),
    ("unterminated line", b"data: a\n\ndata: 123456789", 15),
]


@pytest.mark.parametrize(
    ("stream", "size"),
    [pytest.param(s, n, id=name) for name, s, n in LIMIT_CASES],
)
def test_max_event_bytes_boundary(stream: bytes, size: int) -> None:
    assert_decodes(stream, decode([stream]), max_event_bytes=size)
    assert_too_big(stream, max_event_bytes=size - 1)


def test_max_event_bytes_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_event_bytes"):
        SSEDecoder(max_event_bytes=0)


# --- encoder ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "kwargs", "frame"),
    [
        ((b'{"a":1}',), {}, b'data: {"a":1}\n\n'),
        (("x",), {"event": "response.created"}, b"event: response.created\ndata: x\n\n"),
        (("x",), {"event": "e", "id": "7"}, b"id: 7\nevent: e\ndata: x\n\n"),
        (("x",), {"id": ""}, b"id: \ndata: x\n\n"),
        (("a\nb\r\nc\rd",), {}, b"data: a\ndata: b\ndata: c\ndata: d\n\n"),
        (("a\n",), {}, b"data: a\ndata: \n\n"),
        (("\r\n\r",), {}, b"data: \ndata: \ndata: \n\n"),
        ((b"",), {}, b"data: \n\n"),
        ((" lead",), {}, b"data:  lead\n\n"),
        (("h\u00e9",), {"event": "\u00e9"}, b"event: \xc3\xa9\ndata: h\xc3\xa9\n\n"),
    ],
)
def test_encode_event(args: tuple[bytes | str], kwargs: dict[str, str], frame: bytes) -> None:
    assert encode_event(*args, **kwargs) == frame


@pytest.mark.parametrize(
    "kwargs",
    [{"event": "a\nb"}, {"event": "a\r"}, {"id": "1\n"}, {"id": "\r1"}, {"id": "1\x002"}],
)
def test_encode_event_rejects_unencodable_names(kwargs: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="SSE"):
        encode_event("x", **kwargs)


def test_encode_comment() -> None:
    assert encode_comment() == b": \n\n"
    assert encode_comment("keepalive") == b": keepalive\n\n"
    assert encode_comment("a\nb\r\nc") == b": a\n: b\n: c\n\n"
    assert decode([encode_comment("a\nb\rc"), encode_comment()]) == []


# --- properties ------------------------------------------------------------------------------

EVENT_NAMES = st.text("abcdefghijklmnopqrstuvwxyz0123456789._-", min_size=1, max_size=30)
IDS = st.none() | st.text("abcdefghijklmnopqrstuvwxyz0123456789-_", max_size=10)
DATA = st.text(
    alphabet=st.sampled_from("\r\n :a\u00e9\ufeff\U0001f600") | st.characters(codec="utf-8"),
    max_size=40,
)
EVENT_TUPLES = st.lists(st.tuples(EVENT_NAMES, DATA, IDS), max_size=12)


def split_at(stream: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(cuts), len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(bounds)]


def expected_roundtrip(items: list[tuple[str, str, str | None]]) -> list[ServerSentEvent]:
    expected = []
    last_id = None
    for name, text, id in items:
        if id is not None:
            last_id = id or None  # the last event ID persists; an empty id resets it
        data = text.replace("\r\n", "\n").replace("\r", "\n").encode()
        expected.append(Ev(data, name, id=last_id))
    return expected


@given(items=EVENT_TUPLES, draw=st.data())
def test_encode_decode_roundtrip(
    items: list[tuple[str, str, str | None]], draw: st.DataObject
) -> None:
    stream = b"".join(encode_event(text, event=name, id=id) for name, text, id in items)
    expected = expected_roundtrip(items)
    assert decode([stream]) == expected
    cuts = draw.draw(st.lists(st.integers(0, len(stream)), max_size=20), label="cuts")
    assert decode(split_at(stream, cuts)) == expected


@given(items=EVENT_TUPLES, draw=st.data())
def test_encode_decode_roundtrip_with_comments_and_bytes(
    items: list[tuple[str, str, str | None]], draw: st.DataObject
) -> None:
    frames = []
    for name, text, id in items:
        frames.append(encode_comment(draw.draw(DATA, label="comment")))
        frames.append(encode_event(text.encode(), event=name, id=id))
    stream = b"".join(frames)
    cuts = draw.draw(st.lists(st.integers(0, len(stream)), max_size=20), label="cuts")
    assert decode(split_at(stream, cuts)) == expected_roundtrip(items)


def reference_decode(stream: bytes) -> list[ServerSentEvent]:
    """A slow, literal reading of the WHATWG algorithm plus our close() leniency."""
    if stream.startswith(BOM):
        stream = stream[3:]
    lines = []
    start = i = 0
    while i < len(stream):
        if stream[i] in b"\r\n":
            lines.append(stream[start:i])
            i += 2 if stream[i : i + 2] == b"\r\n" else 1
            start = i
        else:
            i += 1
    ended_mid_line = start < len(stream)
    events = []
    data = b""
    event_type = b""
    last_id: str | None = None
    retry: int | None = None

    def dispatch() -> None:
        nonlocal data, event_type, retry
        if data:
            name = event_type.decode("utf-8", "replace") or "message"
            events.append(Ev(data[:-1], name, id=last_id, retry=retry))
            retry = None
        data = event_type = b""

    for line in lines:
        if not line:
            dispatch()
            continue
        if line.startswith(b":"):
            continue
        field, colon, value = line.partition(b":")
        if colon and value.startswith(b" "):
            value = value[1:]
        if field == b"event":
            event_type = value
        elif field == b"data":
            data += value + b"\n"
        elif field == b"id" and b"\0" not in value:
            last_id = value.decode("utf-8", "replace") or None
        elif field == b"retry" and value and all(c in b"0123456789" for c in value):
            retry = int(value)
    if not ended_mid_line:
        dispatch()
    return events


TOKENS = st.sampled_from(
    [
        b"data",
        b"data: ",
        b"event",
        b"event: ",
        b"id",
        b"retry",
        b"retry: ",
        b":",
        b" ",
        b"\n",
        b"\n\n",
        b"\r",
        b"\r\n",
        b"x",
        b"42",
        b"\x00",
        b"\xc3\xa9",
        b"\xff",
        BOM,
    ]
)


@given(tokens=st.lists(TOKENS, max_size=60), draw=st.data())
def test_matches_reference_decoder(tokens: list[bytes], draw: st.DataObject) -> None:
    stream = b"".join(tokens)
    expected = reference_decode(stream)
    assert decode([stream]) == expected
    cuts = draw.draw(st.lists(st.integers(0, len(stream)), max_size=20), label="cuts")
    assert decode(split_at(stream, cuts)) == expected


def test_reference_decoder_agrees_on_fixtures() -> None:
    # Keeps the oracle honest: it must agree with the hand-written expectations.
    for _name, stream, expected in DECODE_CASES + CLOSE_CASES:
        assert reference_decode(stream) == expected, _name
