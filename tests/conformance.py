"""Shared conformance checks: every codec must decode a byte fixture identically however the
bytes are split (whole, byte by byte, at every single boundary, at sampled boundary pairs)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol


class Feedable(Protocol):
    def feed(self, data: bytes) -> list[Any]: ...
    def close(self) -> list[Any]: ...


def chunkings(data: bytes, *, pair_samples: int = 16) -> Iterator[tuple[str, Sequence[bytes]]]:
    yield "whole", [data]
    yield "byte by byte", [data[i : i + 1] for i in range(len(data))]
    for i in range(len(data) + 1):
        yield f"split at {i}", [data[:i], data[i:]]
    # Three pieces: a grid of boundary pairs (odd step, so it hits every offset class over time).
    step = max(1, len(data) // pair_samples) | 1
    for i in range(0, len(data) + 1, step):
        for j in range(i + 1, len(data) + 1, step):
            yield f"split at {i},{j}", [data[:i], data[i:j], data[j:]]


def decode_all(make: Callable[[], Feedable], chunks: Sequence[bytes]) -> list[Any]:
    decoder = make()
    out: list[Any] = []
    for chunk in chunks:
        out.extend(decoder.feed(chunk))
    out.extend(decoder.close())
    return out


def assert_split_invariant(
    make: Callable[[], Feedable], data: bytes, *, normalize: Callable[[Any], Any] = lambda e: e
) -> list[Any]:
    """Decode ``data`` under every chunking; all results must equal the whole-feed result."""
    expected = [normalize(e) for e in decode_all(make, [data])]
    assert expected, "the fixture decoded to nothing"
    for name, chunks in chunkings(data):
        got = [normalize(e) for e in decode_all(make, chunks)]
        assert got == expected, f"decoding differs when fed {name}"
    return expected
