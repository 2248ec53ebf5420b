"""Compressed request bodies: the sans-IO decoder (``sluicegate.codecs.content_encoding``) fed
in every way a network can cut a body, bombs refused without inflating them, and the proxy
answering compressed ``POST /v1/responses`` bodies."""

from __future__ import annotations

import functools
import gzip
import sys
import zlib
from collections.abc import Callable

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sluicegate.codecs.content_encoding import (
    MAX_MEMBERS,
    ZSTD_WINDOW_LOG_MAX,
    ContentDecoder,
    parse_content_encoding,
)
from sluicegate.errors import (
    InvalidRequestError,
    RequestTooLargeError,
    UnsupportedMediaTypeError,
)

from .test_proxy import running

if sys.version_info >= (3, 14):
    from compression import zstd
else:
    from backports import zstd


def raw_deflate(data: bytes) -> bytes:
    """Deflate without the zlib wrapper, as some clients send ``deflate``."""
    compressor = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


def zstd_compress(data: bytes) -> bytes:
    return zstd.compress(data)


#: Header value -> how a client encodes a body for it.
ENCODERS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.compress,
    "x-gzip": gzip.compress,
    "deflate": zlib.compress,
    "raw-deflate": raw_deflate,
    "zstd": zstd_compress,
}
#: The header a client sends for each encoder.
HEADER = {name: "deflate" if name == "raw-deflate" else name for name in ENCODERS}

BODY = orjson.dumps(
    {"model": "gpt-test", "input": [{"role": "user", "content": "compress me " * 20}]}
)


def decode(header: str, chunks: list[bytes], *, limit: int = 1 << 20) -> bytes:
    decoder = ContentDecoder(parse_content_encoding(header), limit=limit)
    out = b"".join(decoder.feed(chunk) for chunk in chunks)
    return out + decoder.close()


def layers(codings: list[str], data: bytes) -> list[bytes]:
    """``data``, then ``data`` with each coding applied in turn (as the header lists them)."""
    out = [data]
    for coding in codings:
        out.append(ENCODERS[coding](out[-1]) if coding != "identity" else out[-1])
    return out


def encode(codings: list[str], data: bytes) -> bytes:
    return layers(codings, data)[-1]


# -- the codec, fed every way ---------------------------------------------------------------------


@pytest.mark.parametrize("name", list(ENCODERS))
def test_a_body_decodes_whole_byte_by_byte_and_split_at_every_boundary(name: str) -> None:
    blob = ENCODERS[name](BODY)
    header = HEADER[name]
    assert decode(header, [blob]) == BODY
    assert decode(header, [bytes([b]) for b in blob]) == BODY
    for cut in range(len(blob) + 1):
        assert decode(header, [blob[:cut], blob[cut:]]) == BODY, cut


@pytest.mark.parametrize(
    ("header", "codings"),
    [
        ("gzip, zstd", ["gzip", "zstd"]),
        ("zstd,deflate", ["zstd", "deflate"]),
        ("deflate, gzip, zstd", ["deflate", "gzip", "zstd"]),
        ("identity, GZIP,  Identity", ["gzip"]),
    ],
)
def test_stacked_codings_come_off_last_first(header: str, codings: list[str]) -> None:
    blob = encode(codings, BODY)
    assert decode(header, [blob]) == BODY
    assert decode(header, [bytes([b]) for b in blob]) == BODY


def test_header_names_are_case_insensitive_and_identity_is_nothing() -> None:
    assert parse_content_encoding(None) == ()
    assert parse_content_encoding("identity") == ()
    assert parse_content_encoding(" GZip ") == ("gzip",)
    assert parse_content_encoding("X-GZIP, ZSTD") == ("gzip", "zstd")
    assert parse_content_encoding("Deflate,,identity") == ("deflate",)


def test_concatenated_gzip_members_and_zstd_frames_are_one_body() -> None:
    halves = BODY[:100], BODY[100:]
    assert decode("gzip", [b"".join(gzip.compress(h) for h in halves)]) == BODY
    frames = b"".join(zstd.compress(h) for h in halves)
    assert decode("zstd", [bytes([b]) for b in frames]) == BODY


def test_a_body_of_more_members_than_allowed_is_refused_before_it_costs_time() -> None:
    """Regression guard: each member's end copies the rest of its input, so a body of many
    tiny members would take time quadratic in its size."""
    piece = gzip.compress(b"{}")
    assert decode("gzip", [piece * MAX_MEMBERS]) == b"{}" * MAX_MEMBERS
    many = gzip.compress(b"") * 500_000  # 10 MB of empty members
    with pytest.raises(InvalidRequestError, match="concatenated"):
        decode("gzip", [many], limit=len(many))
    frames = zstd.compress(b"") * (MAX_MEMBERS + 1)
    with pytest.raises(InvalidRequestError, match="concatenated"):
        decode("zstd", [frames])


@settings(max_examples=150)
@given(
    data=st.binary(max_size=3000),
    codings=st.lists(
        st.sampled_from(["gzip", "deflate", "raw-deflate", "zstd", "identity"]), max_size=3
    ),
    cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=8),
)
def test_round_trip_whatever_the_codings_and_cuts(
    data: bytes, codings: list[str], cuts: list[int]
) -> None:
    every = layers(codings, data)
    blob = every[-1]
    points = sorted({min(c, len(blob)) for c in cuts})
    chunks = [blob[a:b] for a, b in zip([0, *points], [*points, len(blob)], strict=True)]
    header = ", ".join(HEADER.get(c, c) for c in codings)
    # The tightest limit that lets every layer through: each is held to it.
    assert decode(header, chunks, limit=max(map(len, every))) == data


# -- limits ---------------------------------------------------------------------------------------

LIMIT = 1 << 20


@functools.cache
def bomb(name: str) -> bytes:
    """50 MB of zeros, compressed: a few dozen kilobytes on the wire."""
    return ENCODERS[name](bytes(50_000_000))


@pytest.mark.parametrize("name", ["gzip", "deflate", "raw-deflate", "zstd"])
def test_a_bomb_is_refused_without_inflating_more_than_the_limit(name: str) -> None:
    blob = bomb(name)
    assert len(blob) < LIMIT  # small on the wire: only the decoded size gives it away
    decoder = ContentDecoder(parse_content_encoding(HEADER[name]), limit=LIMIT)
    with pytest.raises(RequestTooLargeError) as info:
        for start in range(0, len(blob), 65536):
            decoder.feed(blob[start : start + 65536])
    assert info.value.status_code == 413
    assert decoder.statistics().decoded == LIMIT + 1  # one byte over says "over"; no more


def test_a_bomb_inside_a_stacked_encoding_is_bounded_at_every_layer() -> None:
    blob = zstd.compress(bomb("gzip"))  # zstd over gzip over 50 MB of zeros
    decoder = ContentDecoder(parse_content_encoding("gzip, zstd"), limit=LIMIT)
    with pytest.raises(RequestTooLargeError):
        decoder.feed(blob)
    assert all(produced <= LIMIT + 1 for produced in decoder.statistics().produced)


@pytest.mark.parametrize("name", ["gzip", "deflate", "zstd"])
def test_a_body_exactly_at_the_limit_passes_and_one_byte_more_does_not(name: str) -> None:
    assert decode(name, [ENCODERS[name](bytes(4096))], limit=4096) == bytes(4096)
    with pytest.raises(RequestTooLargeError):
        decode(name, [ENCODERS[name](bytes(4097))], limit=4096)


def test_a_zstd_frame_asking_for_a_window_over_8_mib_is_refused() -> None:
    """RFC 9659: such a window would cost its size in memory, whatever the body."""
    options: dict[int, int] = {zstd.CompressionParameter.window_log: ZSTD_WINDOW_LOG_MAX + 1}
    compressor = zstd.ZstdCompressor(options=options)
    # Streamed (no content size in the frame header), so the window is not shrunk to fit.
    blob = compressor.compress(BODY) + compressor.flush()
    with pytest.raises(InvalidRequestError) as info:
        decode("zstd", [blob])
    assert info.value.param == "content-encoding"


# -- refusals -------------------------------------------------------------------------------------


@pytest.mark.parametrize("header", ["br", "compress", "gzip, br", "x-custom"])
def test_an_unknown_coding_is_a_415_naming_the_header(header: str) -> None:
    with pytest.raises(UnsupportedMediaTypeError) as info:
        parse_content_encoding(header)
    error = info.value
    assert (error.status_code, error.param, error.code) == (
        415,
        "content-encoding",
        "unsupported_content_encoding",
    )
    assert error.to_dict()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("header", "blob"),
    [
        ("gzip", b"not gzip at all"),
        ("gzip", gzip.compress(BODY)[:-5]),  # truncated
        ("gzip", gzip.compress(BODY) + b"trailing"),
        ("gzip", b""),
        ("deflate", b"\x78\x9cnot deflate"),
        ("deflate", zlib.compress(BODY)[:-3]),
        ("deflate", zlib.compress(BODY) + b"x"),
        ("deflate", b"x"),
        ("zstd", b"not zstd, not at all"),
        ("zstd", zstd.compress(BODY)[:-4]),
        ("zstd", b""),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_corrupt_data_is_a_400_naming_the_header(header: str, blob: bytes) -> None:
    with pytest.raises(InvalidRequestError) as info:
        decode(header, [blob])
    error = info.value
    assert (error.status_code, error.param, error.code) == (
        400,
        "content-encoding",
        "invalid_content_encoding",
    )


# -- through the proxy ----------------------------------------------------------------------------


async def test_the_proxy_answers_compressed_bodies_and_refuses_bad_ones() -> None:
    async with running(max_request_body_bytes=LIMIT) as proxy, proxy.http() as http:
        for name in ("gzip", "deflate", "raw-deflate", "zstd"):
            answer = await http.post(
                "/v1/responses",
                content=ENCODERS[name](BODY),
                headers={"content-encoding": HEADER[name], "content-type": "application/json"},
            )
            assert answer.status_code == 200, (name, answer.text)
            assert answer.json()["status"] == "completed"
            assert proxy.fake.requests[-1].json()["input"] == orjson.loads(BODY)["input"]
        streamed = await http.post(
            "/v1/responses",
            content=encode(["gzip", "zstd"], orjson.dumps({**orjson.loads(BODY), "stream": True})),
            headers={"content-encoding": "gzip, zstd"},
        )
        assert streamed.status_code == 200 and "event: response.completed" in streamed.text
        unknown = await http.post(
            "/v1/responses", content=b"....", headers={"content-encoding": "br"}
        )
        corrupt = await http.post(
            "/v1/responses", content=b"not gzip", headers={"content-encoding": "gzip"}
        )
        bombed = await http.post(
            "/v1/responses", content=bomb("gzip"), headers={"content-encoding": "gzip"}
        )
        upload = await http.post(
            "/v1/files",
            files={"file": ("a.jsonl", b"{}\n")},
            data={"purpose": "batch"},
            headers={"content-encoding": "gzip"},
        )
    assert unknown.status_code == 415
    assert unknown.json()["error"] == {
        "message": unknown.json()["error"]["message"],
        "type": "invalid_request_error",
        "param": "content-encoding",
        "code": "unsupported_content_encoding",
    }
    assert (corrupt.status_code, corrupt.json()["error"]["param"]) == (400, "content-encoding")
    assert bombed.status_code == 413
    assert bombed.json()["error"]["code"] == "request_too_large"
    # Multipart uploads are not decoded: a compressed form is refused before it is read.
    assert (upload.status_code, upload.json()["error"]["param"]) == (415, "content-encoding")
    assert len(proxy.fake.requests) == 5  # nothing refused reached the upstream


async def test_key_endpoints_read_compressed_bodies_too() -> None:
    async with running() as proxy, proxy.http() as http:
        answer = await http.post(
            "/key/generate",
            content=gzip.compress(orjson.dumps({"key_alias": "zipped"})),
            headers={"content-encoding": "gzip"},
        )
    assert answer.status_code == 200, answer.text
    assert answer.json()["key_alias"] == "zipped"
