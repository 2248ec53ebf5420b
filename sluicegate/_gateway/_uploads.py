"""What a caller hands in as a file: the OpenAI SDK's forms of ``file``, read as a stream."""

from __future__ import annotations

import os
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any, BinaryIO

import attrs
import trio

from ..errors import InvalidRequestError

__all__ = ["Upload", "as_upload", "invalid"]

_CHUNK = 64 * 1024


@attrs.frozen
class Upload:
    """A file to upload: its name, its bytes (an async iterable is streamed), its type."""

    filename: str
    content: bytes | AsyncIterable[bytes]
    content_type: str | None = None


def as_upload(file: Any) -> Upload:
    """The SDK's forms of ``file``: bytes, a path, an open binary file, a ``(filename,
    content[, content_type])`` tuple, or an :class:`Upload`."""
    if isinstance(file, Upload):
        return file
    if isinstance(file, bytes | bytearray | memoryview):
        return Upload("upload", bytes(file))
    if isinstance(file, str | os.PathLike):
        path = os.fspath(file)
        return Upload(os.path.basename(path), _read_path(path))
    if isinstance(file, tuple) and len(file) in (2, 3):
        name, content = file[0], file[1]
        if not isinstance(name, str):
            raise invalid("file", "a filename (str) first in the (filename, content) tuple")
        kind = file[2] if len(file) == 3 else None
        return Upload(name, _content(content), kind)
    if hasattr(file, "read"):
        name = os.path.basename(str(getattr(file, "name", "upload")))
        return Upload(name, _read_file(file))
    raise invalid("file", "bytes, a path, a binary file or a (filename, content) tuple")


def _content(content: Any) -> bytes | AsyncIterable[bytes]:
    if isinstance(content, bytes | bytearray | memoryview):
        return bytes(content)
    if isinstance(content, AsyncIterable):
        return content
    if hasattr(content, "read"):
        return _read_file(content)
    raise invalid("file", "bytes, an async iterable of bytes or a binary file as content")


async def _read_path(path: str) -> AsyncIterator[bytes]:
    async with await trio.open_file(path, "rb") as f:
        while chunk := await f.read(_CHUNK):
            yield chunk


async def _read_file(file: BinaryIO) -> AsyncIterator[bytes]:
    while chunk := await trio.to_thread.run_sync(file.read, _CHUNK):
        yield chunk


def invalid(param: str, expected: str) -> InvalidRequestError:
    return InvalidRequestError(f"Invalid '{param}': expected {expected}.", param=param)
