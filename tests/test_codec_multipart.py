"""Tests of the sans-IO multipart/form-data codec (sluicegate.codecs.multipart).

Every parsing fixture goes through :func:`assert_parses` (or :func:`assert_rejects`), which feeds
the body whole, byte by byte, split in two at every index and in three on a grid of index pairs,
and demands the same events (adjacent data merged) or the same error each time: chunking must
never change what the parser sees. :func:`parse` also checks the event grammar on every run:
``(PartStart PartData* PartEnd)*`` with no empty ``PartData``.
"""

from __future__ import annotations

import itertools
import re
import tracemalloc
from collections.abc import Iterator, Sequence

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sluicegate.codecs.multipart import (
    FILE_PART_END,
    MultipartError,
    MultipartEvent,
    MultipartParser,
    PartData,
    PartEnd,
    PartStart,
    boundary_of,
    closing,
    field_part,
    file_part_head,
    new_boundary,
)

B = "----sgTestBoundary7MA4YWxk"
DELIM = b"\r\n--" + B.encode()


def CD(value: str) -> tuple[str, str]:
    return ("content-disposition", value)


def Field(name: str) -> PartStart:
    return PartStart(
        name=name,
        filename=None,
        content_type=None,
        headers=(CD(f'form-data; name="{name}"'),),
    )


# --- the chunking helpers --------------------------------------------------------------------


def chunkings(body: bytes) -> Iterator[tuple[str, list[bytes]]]:
    """Ways to deliver ``body``: whole, byte by byte, every 2-split, a grid of 3-splits."""
    n = len(body)
    yield "whole", [body]
    yield "byte by byte", [body[i : i + 1] for i in range(n)]
    for i in range(n + 1):
        yield f"split at {i}", [body[:i], body[i:]]
    step = max(1, n // 24)
    grid = {(i, j) for i in range(0, n + 1, step) for j in range(i, n + 1, step)}
    grid |= {(i, i + 1) for i in range(n)}  # a one-byte middle piece everywhere
    for i, j in sorted(grid):
        yield f"split at {i}, {j}", [body[:i], body[i:j], body[j:]]


def parse(chunks: Sequence[bytes], boundary: str = B, **limits: int) -> list[MultipartEvent]:
    """Feed ``chunks`` then close; check the event grammar; return the events."""
    parser = MultipartParser(boundary, **limits)
    events: list[MultipartEvent] = []
    for chunk in chunks:
        events += parser.feed(chunk)
    events += parser.close()
    in_part = False
    for event in events:
        match event:
            case PartStart():
                assert not in_part, events
                in_part = True
            case PartData(data=data):
                assert in_part, events
                assert type(data) is bytes
                assert data, "empty PartData"
            case PartEnd():
                assert in_part, events
                in_part = False
    assert not in_part, events
    return events


def merged(events: Sequence[MultipartEvent]) -> list[MultipartEvent]:
    """``events`` with adjacent PartData joined."""
    out: list[MultipartEvent] = []
    for event in events:
        if isinstance(event, PartData) and out and isinstance(out[-1], PartData):
            out[-1] = PartData(out[-1].data + event.data)
        else:
            out.append(event)
    return out


def assert_parses(
    body: bytes, expected: list[MultipartEvent], boundary: str = B, **limits: int
) -> None:
    """Parsing ``body`` gives ``expected`` (after merging data) under every chunking."""
    for label, chunks in chunkings(body):
        assert merged(parse(chunks, boundary, **limits)) == expected, f"{label}: {chunks!r}"


def assert_rejects(body: bytes, match: str, boundary: str = B, **limits: int) -> None:
    """Parsing ``body`` raises MultipartError matching ``match`` under every chunking."""
    for label, chunks in chunkings(body):
        with pytest.raises(MultipartError, match=match):
            parse(chunks, boundary, **limits)
            pytest.fail(f"did not raise: {label}")


def fields_of(events: Sequence[MultipartEvent]) -> list[tuple[str, str | None, str | None, bytes]]:
    """(name, filename, content_type, data) for each part."""
    out: list[tuple[str, str | None, str | None, bytes]] = []
    start: PartStart | None = None
    data = b""
    for event in events:
        match event:
            case PartStart():
                start, data = event, b""
            case PartData():
                data += event.data
            case PartEnd():
                assert start is not None
                out.append((start.name, start.filename, start.content_type, data))
    return out


def test_helpers_detect_wrong_expectations() -> None:
    body = field_part(B, "a", "1") + closing(B)
    with pytest.raises(AssertionError):
        assert_parses(body, [Field("a"), PartData(b"2"), PartEnd()])
    with pytest.raises(pytest.fail.Exception):
        assert_rejects(body, "anything")


def test_merging_is_the_only_liberty_taken() -> None:
    body = field_part(B, "a", "12") + closing(B)
    events = parse([body[: len(body) - 20], body[len(body) - 20 :]])
    assert events == [Field("a"), PartData(b"12"), PartEnd()]


# --- what the openai SDK and httpx send ------------------------------------------------------

JSONL = (
    b'{"custom_id": "r-1", "method": "POST", "url": "/v1/responses", '
    b'"body": {"model": "gpt-5", "input": "--' + B.encode() + b' is not a delimiter"}}\n'
    b'{"custom_id": "r-2", "method": "POST", "url": "/v1/responses", '
    b'"body": {"model": "gpt-5", "input": "line\\r\\nbreaks -- and dashes"}}\r\n'
)


def httpx_body(data: dict[str, str], files: dict[str, tuple[str, bytes, str]]) -> tuple[str, bytes]:
    request = httpx.Request("POST", "http://x/v1/files", data=data, files=files)
    return request.headers["content-type"], request.read()


def test_httpx_files_create_body_any_chunking() -> None:
    content_type, body = httpx_body(
        {"purpose": "batch"}, {"file": ("batch.jsonl", JSONL, "application/jsonl")}
    )
    boundary = boundary_of(content_type)
    assert body.startswith(b"--" + boundary.encode() + b"\r\n")
    assert_parses(
        body,
        [
            Field("purpose"),
            PartData(b"batch"),
            PartEnd(),
            PartStart(
                name="file",
                filename="batch.jsonl",
                content_type="application/jsonl",
                headers=(
                    CD('form-data; name="file"; filename="batch.jsonl"'),
                    ("content-type", "application/jsonl"),
                ),
            ),
            PartData(JSONL),
            PartEnd(),
        ],
        boundary,
    )


def test_openai_sdk_files_create_body() -> None:
    """The body exactly as the official SDK sends ``files.create``, captured off its client."""
    openai = pytest.importorskip("openai")
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        request.read()
        seen.append(request)
        return httpx.Response(
            200,
            json={
                "id": "file-1",
                "object": "file",
                "bytes": len(JSONL),
                "created_at": 1,
                "filename": "batch.jsonl",
                "purpose": "batch",
                "status": "processed",
            },
        )

    with httpx.Client(transport=httpx.MockTransport(handler)) as http_client:
        client = openai.OpenAI(api_key="sk-test", base_url="http://x/v1", http_client=http_client)
        client.files.create(
            file=("batch.jsonl", JSONL),
            purpose="batch",
            expires_after={"anchor": "created_at", "seconds": 3600},
        )
    (request,) = seen
    boundary = boundary_of(request.headers["content-type"])
    body = request.content
    expected = [
        ("purpose", None, None, b"batch"),
        ("expires_after[anchor]", None, None, b"created_at"),
        ("expires_after[seconds]", None, None, b"3600"),
        ("file", "batch.jsonl", "application/octet-stream", JSONL),
    ]
    assert fields_of(parse([body], boundary)) == expected
    for label, chunks in itertools.islice(chunkings(body), 0, None, 7):
        assert fields_of(parse(chunks, boundary)) == expected, label


def test_every_v1_files_field() -> None:
    data = {
        "purpose": "batch",
        "model": "gpt-5",
        "expires_after[anchor]": "created_at",
        "expires_after[seconds]": "86400",
        "litellm_metadata": '{"team": "a\\"b", "tags": ["x", "y"]}',
    }
    content_type, body = httpx_body(data, {"file": ("batch.jsonl", JSONL, "application/jsonl")})
    events = parse([body], boundary_of(content_type))
    assert fields_of(events) == [
        *((name, None, None, value.encode()) for name, value in data.items()),
        ("file", "batch.jsonl", "application/jsonl", JSONL),
    ]


def test_httpx_non_ascii_filename_is_raw_utf8() -> None:
    content_type, body = httpx_body({}, {"file": ("données €.jsonl", b"{}\n", "text/plain")})
    assert "données €.jsonl".encode() in body and b"filename*" not in body
    assert fields_of(parse([body], boundary_of(content_type))) == [
        ("file", "données €.jsonl", "text/plain", b"{}\n")
    ]


def test_encoder_writes_what_httpx_writes() -> None:
    data = {"purpose": "batch", "expires_after[seconds]": "3600"}
    request = httpx.Request(
        "POST",
        "http://x/v1/files",
        headers={"Content-Type": f"multipart/form-data; boundary={B}"},
        data=data,
        files={"file": ("batch.jsonl", JSONL, "application/jsonl")},
    )
    ours = (
        field_part(B, "purpose", "batch")
        + field_part(B, "expires_after[seconds]", "3600")
        + file_part_head(B, "file", "batch.jsonl", "application/jsonl")
        + JSONL
        + FILE_PART_END
        + closing(B)
    )
    assert ours == request.read()


# --- delimiters ------------------------------------------------------------------------------

NEAR_MISSES = [
    pytest.param(DELIM[:-1], id="boundary prefix"),
    pytest.param(DELIM[:-1] + b"\r\n", id="boundary prefix then CRLF"),
    pytest.param(DELIM + b"X\r\n", id="longer boundary"),
    pytest.param(DELIM + b"-\r\n", id="one dash"),
    pytest.param(DELIM + b"-x--", id="one dash then more"),
    pytest.param(DELIM + b" x\r\n", id="padding then text"),
    pytest.param(DELIM + b"\r", id="CR without LF"),
    pytest.param(DELIM + b"\rX", id="CR then text"),
    pytest.param(DELIM + b" \t\r \n", id="padding, CR, space, LF"),
    pytest.param(DELIM + b"\n", id="LF without CR"),
    pytest.param(b"--" + B.encode() + b"\r\nx", id="no CRLF before"),
    pytest.param(b"--" + B.encode() + b"--", id="close without CRLF before"),
    pytest.param(b"x\n--" + B.encode() + b"\r\n", id="LF only before"),
    pytest.param(b"x\r--" + B.encode() + b"--", id="CR only before"),
    pytest.param(b"\r\r\n--" + B.encode()[:5] + b"\r\n-\r\n--", id="CRs and dashes"),
    pytest.param(b"\r\n-" + B.encode() + b"\r\n", id="one dash before"),
    pytest.param(b"\r\n---" + B.encode() + b"\r\n", id="three dashes before"),
]


CD_FILE = 'form-data; name="file"; filename="f.bin"'


@pytest.mark.parametrize("snippet", NEAR_MISSES)
@pytest.mark.parametrize("where", ["alone", "inside", "twice"])
def test_near_miss_delimiters_are_data(snippet: bytes, where: str) -> None:
    data = {"alone": snippet, "inside": b"ab" + snippet + b"cd", "twice": snippet * 2}[where]
    body = file_part_head(B, "file", "f.bin", None) + data + FILE_PART_END + closing(B)
    start = PartStart(name="file", filename="f.bin", content_type=None, headers=(CD(CD_FILE),))
    assert_parses(body, [start, PartData(data), PartEnd()])


def test_data_is_passed_on_as_soon_as_it_cannot_be_a_delimiter() -> None:
    parser = MultipartParser("bnd")
    assert parser.feed(b"--bnd\r\nContent-Disposition: form-data; name=a\r\n\r\n") == [
        PartStart(name="a", filename=None, content_type=None, headers=(CD("form-data; name=a"),))
    ]
    assert parser.feed(b"abc\r\n--b") == [PartData(b"abc")]
    assert parser.feed(b"n") == []
    assert parser.feed(b"dX") == [PartData(b"\r\n--bnd"), PartData(b"X")]
    assert parser.feed(b"\r") == []
    assert parser.feed(b"y") == [PartData(b"\ry")]
    assert parser.feed(b"z\r\n--bnd \t ") == [PartData(b"z")]
    assert parser.feed(b"\r") == []
    assert parser.feed(b"\n") == [PartEnd()]
    assert parser.feed(b"Content-Disposition: form-data; name=b\r\n\r\n\r\n--bnd-") == [
        PartStart(name="b", filename=None, content_type=None, headers=(CD("form-data; name=b"),))
    ]
    assert parser.feed(b"-") == [PartEnd()]
    assert parser.feed(b"anything at all\r\n--bnd\r\n") == []
    assert parser.close() == []


def test_preamble_and_epilogue_are_ignored() -> None:
    preamble = (
        b"This is a preamble.\r\n--" + B.encode() + b"X\r\n--" + B.encode()[:-1] + b"\r\n"
        b"--" + B.encode() + b"-nope\r\n"
    )
    epilogue = b"\r\nepilogue " + field_part(B, "ghost", "boo") + closing(B) + b"\xff\x00"
    body = preamble + b"\r\n" + field_part(B, "a", "1") + closing(B)[:-2] + epilogue
    assert_parses(body, [Field("a"), PartData(b"1"), PartEnd()])


def test_close_delimiter_without_final_crlf() -> None:
    body = field_part(B, "a", "1") + b"--" + B.encode() + b"--"
    assert_parses(body, [Field("a"), PartData(b"1"), PartEnd()])


def test_body_of_only_a_close_delimiter_has_no_parts() -> None:
    assert_parses(closing(B), [])
    assert_parses(b"preamble\r\n" + closing(B), [])


def test_empty_part_data() -> None:
    body = field_part(B, "a", "") + file_part_head(B, "f", "", None) + FILE_PART_END + closing(B)
    assert_parses(
        body,
        [
            Field("a"),
            PartEnd(),
            PartStart(
                name="f",
                filename="",
                content_type=None,
                headers=(CD('form-data; name="f"; filename=""'),),
            ),
            PartEnd(),
        ],
    )


def test_data_that_is_only_line_breaks_and_dashes() -> None:
    data = "\r\n--\r\n\r\n-\r\r\n"
    body = field_part(B, "a", data) + closing(B)
    assert_parses(body, [Field("a"), PartData(data.encode()), PartEnd()])


def test_transport_padding_after_boundaries() -> None:
    b = B.encode()
    body = (
        b"--" + b + b" \t \r\n"
        b'Content-Disposition: form-data; name="a"\r\n\r\n1'
        b"\r\n--" + b + b"\t\r\n"
        b'Content-Disposition: form-data; name="b"\r\n\r\n2'
        b"\r\n--" + b + b"--  \r\n"
    )
    assert_parses(
        body, [Field("a"), PartData(b"1"), PartEnd(), Field("b"), PartData(b"2"), PartEnd()]
    )


def test_transport_padding_is_limited() -> None:
    def body(padding: int) -> bytes:
        return b"--bnd" + b" " * padding + b"\r\ncontent-disposition: form-data; name=a\r\n\r\n"

    tail = b"x\r\n--bnd--"
    start = PartStart(
        name="a", filename=None, content_type=None, headers=(CD("form-data; name=a"),)
    )
    assert_parses(body(64) + tail, [start, PartData(b"x"), PartEnd()], "bnd", max_header_bytes=64)
    assert_rejects(body(65) + tail, "transport padding", "bnd", max_header_bytes=64)
    # In the data too, and even where the line turns out a near miss.
    data = b"\r\n--bnd" + b" " * 65 + b"x"
    assert_rejects(body(0) + data + tail, "transport padding", "bnd", max_header_bytes=64)


# --- headers ---------------------------------------------------------------------------------


def one_part(headers: bytes, data: bytes = b"v") -> bytes:
    return b"--" + B.encode() + b"\r\n" + headers + b"\r\n" + data + b"\r\n--" + B.encode() + b"--"


DISPOSITIONS = [
    pytest.param('form-data; name="a\\"b\\\\c"', 'a"b\\c', None, id="escaped quote, backslash"),
    pytest.param('form-data; name="C:\\dir\\x"', "C:\\dir\\x", None, id="lone backslashes kept"),
    pytest.param('form-data; name="a;b=c"', "a;b=c", None, id="separators quoted"),
    pytest.param("form-data; name=purpose", "purpose", None, id="token"),
    pytest.param("form-data;name=purpose ; ", "purpose", None, id="odd spacing"),
    pytest.param('Form-Data; NAME="x"; FileName="y.txt"', "x", "y.txt", id="case"),
    pytest.param('form-data; name=""; filename=""', "", "", id="empty"),
    pytest.param(
        'form-data; name="file"; filename="f\\"1\\".jsonl"', "file", 'f"1".jsonl', id="filename"
    ),
    pytest.param(
        'form-data; name="file"; filename="C:\\Users\\me\\batch.jsonl"',
        "file",
        "C:\\Users\\me\\batch.jsonl",
        id="windows path",
    ),
    pytest.param(
        "form-data; name=file; filename=\"fallback.txt\"; filename*=UTF-8''%E2%82%AC%20rates.txt",
        "file",
        "€ rates.txt",
        id="RFC 5987 preferred",
    ),
    pytest.param(
        "form-data; filename*=utf-8'en'%C3%A9t%C3%A9.txt; name=file; filename=\"ete.txt\"",
        "file",
        "été.txt",
        id="RFC 5987 first",
    ),
    pytest.param(
        "form-data; name=file; filename*=ISO-8859-1''%E9t%E9.txt",
        "file",
        "été.txt",
        id="RFC 5987 latin-1",
    ),
    pytest.param(
        'form-data; name="données"; filename="é€.txt"', "données", "é€.txt", id="raw UTF-8"
    ),
]


@pytest.mark.parametrize(("disposition", "name", "filename"), DISPOSITIONS)
def test_content_disposition(disposition: str, name: str, filename: str | None) -> None:
    body = one_part(b"Content-Disposition: " + disposition.encode() + b"\r\n")
    assert_parses(
        body,
        [
            PartStart(
                name=name, filename=filename, content_type=None, headers=(CD(disposition.strip()),)
            ),
            PartData(b"v"),
            PartEnd(),
        ],
    )


def test_header_names_are_case_insensitive_and_lines_may_fold_or_end_in_lf() -> None:
    body = one_part(
        b'CONTENT-disposition:form-data; name="f";\r\n'
        b'\t filename="a.txt"\n'
        b"Content-TYPE:   text/plain; charset=utf-8  \r\n"
        b"X-Extra: 1\n"
    )
    assert_parses(
        body,
        [
            PartStart(
                name="f",
                filename="a.txt",
                content_type="text/plain; charset=utf-8",
                headers=(
                    CD('form-data; name="f"; filename="a.txt"'),
                    ("content-type", "text/plain; charset=utf-8"),
                    ("x-extra", "1"),
                ),
            ),
            PartData(b"v"),
            PartEnd(),
        ],
    )


def test_blank_line_may_be_a_bare_lf() -> None:
    body = (
        b"--" + B.encode() + b"\r\nContent-Disposition: form-data; name=a\n\n\r\nv"
        b"\r\n--" + B.encode() + b"--"
    )
    start = PartStart(
        name="a", filename=None, content_type=None, headers=(CD("form-data; name=a"),)
    )
    assert_parses(body, [start, PartData(b"\r\nv"), PartEnd()])


def test_header_values_that_are_not_utf8_are_latin1() -> None:
    body = one_part(b'Content-Disposition: form-data; name="f"; filename="\xe9t\xe9.txt"\r\n')
    (start, *_) = parse([body])
    assert isinstance(start, PartStart)
    assert start.filename == "été.txt"


# --- errors ----------------------------------------------------------------------------------


def test_truncated_body_fails_at_close() -> None:
    content_type, body = httpx_body(
        {"purpose": "batch"}, {"file": ("batch.jsonl", JSONL, "application/jsonl")}
    )
    boundary = boundary_of(content_type)
    close = b"\r\n--" + boundary.encode() + b"--"
    complete = body.index(close) + len(close)
    for cut in range(len(body) + 1):
        parser = MultipartParser(boundary)
        parser.feed(body[:cut])
        if cut < complete:
            with pytest.raises(MultipartError, match="ended"):
                parser.close()
        else:
            assert parser.close() == []


@pytest.mark.parametrize(
    ("prefix", "where"),
    [
        (b"", "before its first boundary"),
        (b"junk\r\n--" + B.encode(), "before its first boundary"),
        (b"--" + B.encode() + b"\r\nContent-Disp", "inside the headers of part 1"),
        (b"--" + B.encode() + b"\r\nContent-Disposition: form-data; name=a\r\n", "headers"),
        (b"--" + B.encode() + b"\r\nContent-Disposition: form-data; name=a\r\n\r\n", "part 1"),
        (field_part(B, "a", "1") + b"--" + B.encode() + b"-", "inside part 1"),
        (field_part(B, "a", "1") + field_part(B, "b", "2"), "inside part 2"),
    ],
)
def test_truncation_says_where(prefix: bytes, where: str) -> None:
    parser = MultipartParser(B)
    parser.feed(prefix)
    with pytest.raises(MultipartError, match=where):
        parser.close()


@pytest.mark.parametrize(
    ("headers", "match"),
    [
        (b"", "part 1 has no Content-Disposition"),
        (b"Content-Type: text/plain\r\n", "part 1 has no Content-Disposition"),
        (
            b"Content-Disposition: form-data; name=a\r\nContent-Disposition: form-data; name=b\r\n",
            "more than one Content-Disposition",
        ),
        (b"Content-Disposition: attachment; name=a\r\n", "'attachment', not form-data"),
        (b'Content-Disposition: form-data; filename="a.txt"\r\n', "has no name"),
        (b"Content-Disposition: form-data; name=a; name=b\r\n", "repeats the parameter 'name'"),
        (b"Content-Disposition: form-data; name\r\n", "parameter without a value"),
        (b"Content-Disposition: form-data; =a\r\n", "parameter without a name"),
        (b'Content-Disposition: form-data; name="a\r\n', "unterminated quoted string"),
        (b'Content-Disposition: form-data; name="a"b\r\n', "text after the quoted value"),
        (b"Content-Disposition: form-data; name=a; filename*=x.txt\r\n", "malformed filename"),
        (b"Content-Disposition: form-data; name=a; filename*=koi8-r''x\r\n", "unsupported"),
        (b"Content-Disposition: form-data; name=a; filename*=utf-8''%FF\r\n", "not valid utf-8"),
        (b"Content-Disposition form-data; name=a\r\n", "malformed header line"),
        (b"Content Disposition: form-data; name=a\r\n", "malformed header line"),
        (b": form-data; name=a\r\n", "malformed header line"),
        (b" Content-Disposition: form-data; name=a\r\n", "malformed header line"),
        (b"Content-Disposition: form-data;\r name=a\r\n", "bare CR"),
        (
            b"Content-Disposition: form-data; name=a\r\nContent-Type: a\r\nContent-Type: b\r\n",
            "more than one Content-Type",
        ),
    ],
)
def test_malformed_headers(headers: bytes, match: str) -> None:
    assert_rejects(one_part(headers), match)


def test_headers_over_the_limit() -> None:
    headers = b'Content-Disposition: form-data; name="a"\r\n'
    section = len(headers) + 2  # with the blank line
    body = field_part(B, "", "0") + one_part(headers)  # part 1's headers: one byte shorter
    expected: list[MultipartEvent] = [
        *(Field(""), PartData(b"0"), PartEnd()),
        *(Field("a"), PartData(b"v"), PartEnd()),
    ]
    assert_parses(body, expected, max_header_bytes=section)
    assert_rejects(body, "headers of part 2 exceed max_header_bytes", max_header_bytes=section - 1)
    # A header section that never ends is rejected as soon as it is too long.
    parser = MultipartParser(B, max_header_bytes=100)
    parser.feed(b"--" + B.encode() + b"\r\n" + b"X-A: b\r\n" * 12)
    with pytest.raises(MultipartError, match="max_header_bytes=100"):
        parser.feed(b"X-A: b\r\n")


def test_too_many_parts() -> None:
    body = b"".join(field_part(B, name, "v") for name in "abc") + closing(B)
    assert len(merged(parse([body], max_parts=3))) == 9
    assert_rejects(body, "more than max_parts=2", max_parts=2)


def test_parser_is_unusable_after_an_error_or_close() -> None:
    parser = MultipartParser(B, max_parts=1)
    parser.feed(field_part(B, "a", "1"))
    with pytest.raises(MultipartError):
        parser.feed(field_part(B, "b", "2"))
    with pytest.raises(RuntimeError, match="after it raised"):
        parser.feed(b"x")
    parser = MultipartParser(B)
    parser.feed(closing(B))
    assert parser.close() == []
    assert parser.close() == []
    with pytest.raises(RuntimeError, match="after close"):
        parser.feed(b"x")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"boundary": ""}, "invalid multipart boundary"),
        ({"boundary": "x" * 71}, "invalid multipart boundary"),
        ({"boundary": "ab "}, "invalid multipart boundary"),
        ({"boundary": "a\r\nb"}, "invalid multipart boundary"),
        ({"boundary": "é"}, "invalid multipart boundary"),
        ({"boundary": "ok", "max_header_bytes": 0}, "max_header_bytes must be at least 1"),
        ({"boundary": "ok", "max_parts": 0}, "max_parts must be at least 1"),
    ],
)
def test_parser_arguments_are_checked(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        MultipartParser(**kwargs)  # type: ignore[arg-type]


# --- boundary_of -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "boundary"),
    [
        ("multipart/form-data; boundary=----abc", "----abc"),
        ('multipart/form-data; boundary="----abc"', "----abc"),
        ('Multipart/Form-Data;BOUNDARY="a b:c?"', "a b:c?"),
        ("multipart/form-data; charset=utf-8; boundary=x ; foo=bar", "x"),
        ("multipart/form-data; boundary=" + "7" * 70, "7" * 70),
        ('multipart/form-data; boundary="\'()+_,-./:=?"', "'()+_,-./:=?"),
    ],
)
def test_boundary_of(content_type: str, boundary: str) -> None:
    assert boundary_of(content_type) == boundary


@pytest.mark.parametrize(
    ("content_type", "match"),
    [
        ("application/json", "not multipart/form-data"),
        ("multipart/mixed; boundary=x", "'multipart/mixed', not multipart/form-data"),
        ("", "not multipart/form-data"),
        ("multipart/form-data", "has no boundary"),
        ("multipart/form-data; charset=utf-8", "has no boundary"),
        ("multipart/form-data; boundary=", "invalid multipart boundary"),
        ('multipart/form-data; boundary=""', "invalid multipart boundary"),
        ("multipart/form-data; boundary=" + "7" * 71, "invalid multipart boundary"),
        ('multipart/form-data; boundary="ab "', "invalid multipart boundary"),
        ("multipart/form-data; boundary=a[b]", "invalid multipart boundary"),
        ('multipart/form-data; boundary="abc', "unterminated quoted string"),
        ("multipart/form-data; boundary=a; boundary=b", "repeats the parameter"),
    ],
)
def test_boundary_of_rejects(content_type: str, match: str) -> None:
    with pytest.raises(MultipartError, match=match):
        boundary_of(content_type)


# --- the encoder -----------------------------------------------------------------------------


def test_encoder_bytes() -> None:
    assert field_part("b", "purpose", "batch") == (
        b'--b\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
    )
    assert file_part_head("b", "file", "batch.jsonl", "application/jsonl") == (
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="batch.jsonl"\r\n'
        b"Content-Type: application/jsonl\r\n\r\n"
    )
    assert file_part_head("b", "file", "x", None) == (
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="x"\r\n\r\n'
    )
    assert FILE_PART_END == b"\r\n"
    assert closing("b") == b"--b--\r\n"


def test_encoder_quotes_names_and_filenames() -> None:
    assert field_part("b", 'a"b\\c\r\nd', "") == (
        b'--b\r\nContent-Disposition: form-data; name="a\\"b\\\\c%0D%0Ad"\r\n\r\n\r\n'
    )
    assert file_part_head("b", "file", '€ "x"\n.txt', None) == (
        b'--b\r\nContent-Disposition: form-data; name="file"; '
        b'filename="\xe2\x82\xac \\"x\\"%0A.txt"; '
        b"filename*=UTF-8''%E2%82%AC%20%22x%22%0A.txt\r\n\r\n"
    )


@pytest.mark.parametrize(
    "filename",
    ["données.jsonl", "批次.jsonl", "emoji 🚀.txt", 'q"uote\\.txt', "line\r\nbreak.txt", "%41"],
)
def test_filename_round_trip(filename: str) -> None:
    body = file_part_head(B, "file", filename, "application/jsonl") + b"x\r\n" + closing(B)
    assert fields_of(parse([body])) == [("file", filename, "application/jsonl", b"x")]


def test_names_with_line_breaks_come_back_as_a_browser_writes_them() -> None:
    body = field_part(B, "a\r\nb", "v") + closing(B)
    assert fields_of(parse([body])) == [("a%0D%0Ab", None, None, b"v")]


def test_encoder_refuses_what_it_cannot_write() -> None:
    with pytest.raises(ValueError, match="contains the multipart boundary"):
        field_part("bnd", "a", "x\r\n--bnd\r\ny")
    with pytest.raises(ValueError, match="contains the multipart boundary"):
        field_part("bnd", "a", "x\r\n--bnd--")
    with pytest.raises(ValueError, match="contains the multipart boundary"):
        field_part("bnd", "a", "x\r\n--bnd ")  # the part's own CRLF would complete it
    assert field_part("bnd", "a", "x\r\n--bndX")  # a near miss is fine
    with pytest.raises(ValueError, match="line break"):
        file_part_head("bnd", "f", "f", "text/plain\r\nX-Evil: 1")
    with pytest.raises(ValueError, match="invalid multipart boundary"):
        field_part("bad boundary ", "a", "v")
    with pytest.raises(ValueError, match="invalid multipart boundary"):
        file_part_head("", "a", "f", None)
    with pytest.raises(ValueError, match="invalid multipart boundary"):
        closing("x" * 71)


def test_new_boundary() -> None:
    boundaries = {new_boundary() for _ in range(100)}
    assert len(boundaries) == 100
    for boundary in boundaries:
        assert re.fullmatch(r"sluicegate-[0-9a-f]{32}", boundary)
        assert boundary_of(f"multipart/form-data; boundary={boundary}") == boundary


# --- properties ------------------------------------------------------------------------------

BOUNDARIES = st.one_of(
    st.sampled_from(["x", "ab", "-", "--", "a b", B]),
    st.from_regex(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]", fullmatch=True),
    st.builds(new_boundary),
)


def defuse(data: bytes, boundary: str) -> bytes:
    """``data`` with every real delimiter turned into a near miss by a ``!`` after it.

    A delimiter inside a part's data (RFC 2046 forbids it) is ``CRLF--boundary`` followed by
    ``--``, by padding and CRLF, or by padding and the end of the data (the CRLF that ends the
    part completes it). Inserting ``!`` after ``CRLF--boundary`` cannot create another one.
    """
    delimiter = b"\r\n--" + boundary.encode()
    pattern = re.compile(re.escape(delimiter) + rb"(?=--|[ \t]*\r\n|[ \t]*\Z)")
    while match := pattern.search(data):
        data = data[: match.end()] + b"!" + data[match.end() :]
    return data


@st.composite
def part_data(draw: st.DrawFn, boundary: str) -> bytes:
    """Bytes rich in CR, LF, dashes, padding and pieces of the delimiter."""
    b = boundary.encode()
    atoms = [b"\r\n", b"\r", b"\n", b"-", b"--", b" ", b"\t", b"\r\n--", b"\r\n--" + b, b]
    atoms += [b[:-1], b"\r\n--" + b[:-1], b"x", "é".encode()]
    pieces = draw(st.lists(st.one_of(st.sampled_from(atoms), st.binary(max_size=6)), max_size=10))
    return defuse(b"".join(pieces), boundary)


NAMES = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\r\n"), max_size=8)
FILENAMES = st.text(st.characters(exclude_categories=["Cs"]), max_size=8)
CONTENT_TYPES = st.sampled_from([None, "application/jsonl", "text/plain; charset=utf-8"])

Part = tuple[str, str | None, str | None, bytes]


@st.composite
def form_bodies(draw: st.DrawFn) -> tuple[str, bytes, list[Part]]:
    """A boundary, a body our encoder wrote for random parts, and those parts."""
    boundary = draw(BOUNDARIES)
    parts: list[Part] = []
    body = b""
    if draw(st.booleans()):
        body += defuse(b"\r\n" + draw(part_data(boundary)), boundary)[2:] + b"\r\n"
    for _ in range(draw(st.integers(0, 4))):
        name = draw(NAMES)
        data = draw(part_data(boundary))
        if draw(st.booleans()):
            filename = draw(FILENAMES)
            content_type = draw(CONTENT_TYPES)
            parts.append((name, filename, content_type, data))
            body += file_part_head(boundary, name, filename, content_type) + data + FILE_PART_END
        else:
            value = data.decode("utf-8", "replace")
            value = defuse(value.encode(), boundary).decode()
            parts.append((name, None, None, value.encode()))
            body += field_part(boundary, name, value)
    body += closing(boundary)
    if draw(st.booleans()):
        body += draw(part_data(boundary)) + draw(st.binary(max_size=20))
    return boundary, body, parts


def split(body: bytes, cuts: list[int]) -> list[bytes]:
    points = [0, *sorted(cut % (len(body) + 1) for cut in cuts), len(body)]
    return [body[a:b] for a, b in itertools.pairwise(points)]


@settings(max_examples=300)
@given(form=form_bodies(), cuts=st.lists(st.integers(0, 10**6), max_size=12))
def test_round_trip_any_chunking(form: tuple[str, bytes, list[Part]], cuts: list[int]) -> None:
    boundary, body, parts = form
    assert fields_of(parse(split(body, cuts), boundary)) == parts
    assert fields_of(parse([body[i : i + 1] for i in range(len(body))], boundary)) == parts


@st.composite
def rough_bodies(draw: st.DrawFn) -> tuple[str, bytes]:
    """Bodies that are often not well formed: pieces of one, in any order, among junk."""
    boundary = draw(st.sampled_from(["x", "ab", "-"]))
    b = boundary.encode()
    atoms = [
        b"\r\n",
        b"\n",
        b"\r",
        b"--",
        b"-",
        b" ",
        b"--" + b,
        b"\r\n--" + b + b"\r\n",
        b"\r\n--" + b + b"--",
        b"Content-Disposition: form-data; name=a",
        b'Content-Disposition: form-data; name="b"; filename="c"',
        b"Content-Type: text/plain",
        b"\r\n\r\n",
        b"x",
    ]
    well_formed = [
        b"\r\n--" + b + b"\r\nContent-Disposition: form-data; name=a\r\n\r\n",
        b"\r\n--" + b + b' \r\ncontent-disposition: form-data; name="b"; filename="c"\n\n',
    ]
    piece = st.one_of(st.sampled_from(atoms), st.sampled_from(well_formed), st.binary(max_size=4))
    pieces = draw(st.lists(piece, max_size=16))
    if draw(st.booleans()):
        pieces.append(b"\r\n--" + b + b"--")
    return boundary, b"".join(pieces)


def outcome(chunks: Sequence[bytes], boundary: str) -> object:
    try:
        return merged(parse(chunks, boundary, max_header_bytes=64, max_parts=3))
    except MultipartError as exc:
        return str(exc)


@settings(max_examples=500)
@given(rough=rough_bodies(), cuts=st.lists(st.integers(0, 10**6), max_size=8))
def test_chunking_never_changes_the_outcome(rough: tuple[str, bytes], cuts: list[int]) -> None:
    """Events or error, whatever the body: the same for any split of it."""
    boundary, body = rough
    whole = outcome([body], boundary)
    assert outcome(split(body, cuts), boundary) == whole
    assert outcome([body[i : i + 1] for i in range(len(body))], boundary) == whole


# --- memory ----------------------------------------------------------------------------------


def test_a_huge_part_streams_through_in_bounded_memory() -> None:
    """5 MB of file data in 64 KiB chunks: every feed passes on all but a delimiter's worth
    (minus one byte) of what it was given, and the parser never holds much more than a chunk.
    The data is thick with near-miss delimiters, so chunk ends often fall inside one."""
    boundary = new_boundary()
    delimiter = b"\r\n--" + boundary.encode()
    line = b'{"custom_id": "r", "body": {"input": "x"}}' + delimiter[:-1] + b"\r\n"
    size = 5 * 1024 * 1024
    payload = (line * (size // len(line) + 1))[:size]
    head = field_part(boundary, "purpose", "batch") + file_part_head(
        boundary, "file", "big.jsonl", "application/jsonl"
    )
    body = head + payload + FILE_PART_END + closing(boundary)
    chunk = 64 * 1024
    chunks = [body[i : i + chunk] for i in range(0, len(body), chunk)]

    parser = MultipartParser(boundary)
    fed = received = held_back_feeds = 0
    in_file = False

    def file_bytes(events: list[MultipartEvent]) -> int:
        # A function, so that no event outlives the feed that returned it.
        nonlocal in_file
        count = 0
        for event in events:
            match event:
                case PartStart(name=name):
                    in_file = name == "file"
                case PartData(data=data) if in_file:
                    count += len(data)
                case PartEnd():
                    in_file = False
        return count

    tracemalloc.start()
    try:
        for piece in chunks:
            received += file_bytes(parser.feed(piece))
            fed += len(piece)
            payload_fed = min(max(fed - len(head), 0), size)
            if payload_fed < size:
                held = payload_fed - received
                assert 0 <= held <= len(delimiter) - 1, (fed, held)
                held_back_feeds += held > 0
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert parser.close() == []
    assert received == size
    assert held_back_feeds > 10  # the seam path really was taken
    # The held-back bytes plus the next chunk, and the data copied out of them.
    assert peak < 2 * chunk + len(delimiter) + 8192, peak
