"""The aiohttp floor: the httpx floor's minimum work on aiohttp and asyncio, in a child process.

Why a second floor: the httpx floor (``_targets.py``) measures the least a client on httpx and
trio can do, and its pool's cost is httpx's; aiohttp on asyncio is the other stack Python callers
use, with a pool of its own. The work is the same: create POSTs the JSON body and parses the
answer's body; stream POSTs with ``"stream": true``, reads every line and parses each ``data:``
line; the pool is as large and expires idle connections as soon (``_cases.POOL_SIZE``,
``POOL_KEEPALIVE_EXPIRY``).

It runs as ``python -m benchmarks._aiohttp``, a child of its own, pinned like the other library
targets (it inherits the suite's pinning to the measuring CPU), and speaks ``_library.py``'s
protocol: ``aiohttp-floor UPSTREAM_URL UPSTREAM_PID PLAN`` runs every case of the plan (the same
warm-up, the same workers, the same figures as ``_runner.run_case``: the asyncio driver,
``_asyncio_driver.py``, which drives the library's asyncio face too) and prints a
:class:`~benchmarks._cases.CaseRun` line per case; the parent is ``_library.measure_library``.
``open-streams UPSTREAM_URL STREAMS`` instead holds that many slow streams open and prints the
memory they cost (:func:`open_streams`; the parent is ``_memory.measure_open_streams``). The
child never imports trio, httpx or sluicegate: its RSS is asyncio's and aiohttp's alone.

aiohttp is in the ``dev`` extra (so CI's smoke run covers it); without it the suite skips the
aiohttp rows with a note (:func:`aiohttp_available`).
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import time
from contextlib import asynccontextmanager
from functools import partial
from typing import TYPE_CHECKING, Any, Final

import attrs
import orjson

from ._asyncio_driver import child_main, hold_streams, raise_open_file_limit, rss, run_cases
from ._cases import (
    API_KEY,
    INPUT,
    POOL_KEEPALIVE_EXPIRY,
    POOL_SIZE,
    UPSTREAM_MODEL,
    Answer,
    LibraryPlan,
)
from ._report import AIOHTTP_FLOOR
from ._upstream import BenchmarkError, FakeUpstreamProcess

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence

    import aiohttp

__all__ = ["AiohttpFloor", "aiohttp_available", "open_streams", "run_floor"]

_COMPLETED: Final = "response.completed"
_DELTA: Final = "response.output_text.delta"
_FAILED: Final = frozenset({"response.failed", "error"})
#: A ``response.completed`` line carries the whole answer: aiohttp refuses a line over twice its
#: read buffer (64 KiB by default), which a long ``--tokens`` answer exceeds.
_READ_BUFFER: Final = 2**20
_HEADERS: Final = {"content-type": "application/json", "authorization": f"Bearer {API_KEY}"}
#: The body of every stream held open (``open_streams``).
_STREAM_BODY: Final = orjson.dumps({"model": UPSTREAM_MODEL, "input": INPUT, "stream": True})


def aiohttp_available() -> bool:
    return importlib.util.find_spec("aiohttp") is not None


@attrs.define(eq=False)
class AiohttpFloor:
    """What a minimal hand-written asyncio client does: aiohttp, orjson, nothing else."""

    _session: aiohttp.ClientSession
    _url: str

    @property
    def name(self) -> str:
        return AIOHTTP_FLOOR

    async def create(self) -> Answer:
        """One non-streamed request, its body parsed."""
        content = orjson.dumps({"model": UPSTREAM_MODEL, "input": INPUT})
        async with self._session.post(self._url, data=content, headers=_HEADERS) as response:
            if response.status != 200:
                raise BenchmarkError(f"aiohttp floor: HTTP {response.status}")
            body: Any = orjson.loads(await response.read())
        if body.get("status") != "completed":
            raise BenchmarkError(f"aiohttp floor: unexpected status {body.get('status')!r}")
        return Answer(1, None)

    async def stream(self) -> Answer:
        """One streamed request, every ``data:`` line parsed."""
        events = 0
        first: float | None = None
        last: Any = None
        # Built per request, as the create's body and the httpx floor's are.
        content = orjson.dumps({"model": UPSTREAM_MODEL, "input": INPUT, "stream": True})
        async with self._session.post(self._url, data=content, headers=_HEADERS) as response:
            if response.status != 200:
                raise BenchmarkError(f"aiohttp floor: HTTP {response.status}")
            async for line in response.content:
                if line.startswith(b"data:"):
                    last = orjson.loads(line[5:])
                    events += 1
                    if first is None:
                        first = time.perf_counter()
        if last is None or last.get("type") != _COMPLETED:
            raise BenchmarkError("aiohttp floor: the stream did not end with response.completed")
        return Answer(events, first)


def _session(connections: int) -> aiohttp.ClientSession:
    import aiohttp

    connector = aiohttp.TCPConnector(
        limit=connections, limit_per_host=connections, keepalive_timeout=POOL_KEEPALIVE_EXPIRY
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=None),
        read_bufsize=_READ_BUFFER,
    )


def _responses_url(base_url: str) -> str:
    return f"{base_url.rstrip('/')}/responses"


async def run_floor(upstream: FakeUpstreamProcess, plan: LibraryPlan) -> None:
    """Every case of ``plan`` on one session, a line each (``_library.case_line``'s)."""
    async with _session(POOL_SIZE) as session:
        floor = AiohttpFloor(session, _responses_url(upstream.base_url))
        await run_cases(AIOHTTP_FLOOR, floor, upstream, plan)


# --- open slow streams -----------------------------------------------------------------------


@asynccontextmanager
async def _stream_lines(
    session: aiohttp.ClientSession, url: str
) -> AsyncIterator[AsyncIterator[bytes]]:
    """One streamed request: its body's lines."""
    async with session.post(url, data=_STREAM_BODY, headers=_HEADERS) as response:
        if response.status != 200:
            raise BenchmarkError(f"aiohttp floor: HTTP {response.status}")
        yield aiter(response.content)


def _is_data(line: bytes) -> bool:
    return line.startswith(b"data:")


def _event_type(line: bytes) -> Any:
    return orjson.loads(line[5:]).get("type") if _is_data(line) else None


async def _warm_up(session: aiohttp.ClientSession, url: str) -> None:
    """One create, and one stream dropped at its first delta (as ``_memory._warm_up``)."""
    await AiohttpFloor(session, url).create()
    async with _stream_lines(session, url) as lines:
        async for line in lines:
            if _event_type(line) == _DELTA:
                return
    raise BenchmarkError("the warm-up stream ended before its first delta")


async def open_streams(
    base_url: str, *, streams: int, settle: float = 1.0, **options: Any
) -> dict[str, Any]:
    """Memory per open stream for the aiohttp floor, in this process, as
    ``_memory.open_slow_streams`` measures the proxy's: after a warm-up,
    ``_asyncio_driver.hold_streams`` with ``streams`` streams from a slow upstream (``options``
    are its own), each read a line per ``read_interval``; then, the session closed, ``settle``
    seconds later the RSS once more.

    Returns:
        ``_memory.OpenStreams``'s fields, target ``aiohttp-floor``.

    Raises:
        BenchmarkError: as ``hold_streams``; or the warm-up failed.
    """
    raise_open_file_limit(streams + 256)
    url = _responses_url(base_url)
    async with _session(streams + 64) as session:
        await _warm_up(session, url)
        held = await hold_streams(
            partial(_stream_lines, session, url),
            streams=streams,
            is_event=_is_data,
            failed=lambda line: _event_type(line) in _FAILED,
            settle=settle,
            **options,
        )
    await asyncio.sleep(settle)
    return held.result(AIOHTTP_FLOOR, rss())


# --- the child's entry -----------------------------------------------------------------------


def _main(argv: Sequence[str]) -> int:
    return child_main(
        argv,
        module="benchmarks._aiohttp",
        target=AIOHTTP_FLOOR,
        run=run_floor,
        open_streams=open_streams,
    )


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
