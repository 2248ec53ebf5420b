"""Memory: what an open stream costs the proxy, and whether a slow consumer makes memory grow.

Three measurements, all of resident set size (``VmRSS`` in ``/proc/<pid>/status``):

- **Idle** (:func:`proxy_idle_rss`): the proxy server's RSS after one request of each kind (a
  create, and a stream read to its first delta then dropped), so code loaded and caches filled
  on first use count as the baseline, not as the cost of the streams measured against it.
- **Open slow streams** (:func:`open_slow_streams`): ``streams`` concurrent streaming requests
  held open against a proxy whose upstream is slow (a per-token delay), each read slowly. Once
  every one of them has received its first event, the server's RSS is sampled; **memory per
  open stream** is (RSS with all open - idle RSS) ÷ streams. This is what a gateway holding
  thousands of long generations costs per connection: buffers, tasks, channels, parser state.
  The same for the library (:func:`library_open_streams`: ``gw.stream(...)`` held open in a
  process of its own, a fresh heap), for its asyncio face (``_asyncio_face.open_streams``: the
  same under asyncio) and, as the reference, for the aiohttp floor (``_aiohttp.open_streams``):
  :func:`measure_open_streams` runs each in a child process and reads back its result; there
  RSS is the holding process's own (``/proc/self/status``).
- **Slow consumer** (:func:`slow_consumer_library`, :func:`slow_consumer_proxy`): one long
  stream from an upstream that sends as fast as it can, read at one event per ``interval``.
  Backpressure has to reach the upstream socket: if any stage buffers what its consumer has not
  taken yet, RSS climbs while the stream is read. RSS is sampled every ``sample_interval``;
  reported are the RSS before the stream, at the start (after the first 5% of events), the
  peak, the end, and the **growth** (end - start), checked against :data:`MAX_GROWTH_MIB`.
  Growth alone cannot see a stage that buffers the whole stream in its first moments (that
  happens before the start mark), so the **rise** (peak - before) is reported next to it and
  checked against the same bound. Let the upstream's stream be several times longer than the
  events read, so there is a backlog to hold back for the whole read (the read stops after
  ``events`` and hangs up, a path any gateway must handle anyway).

RSS is a coarse instrument: CPython's allocator keeps freed arenas, so RSS rarely goes down, and
it moves in pages. Per-stream figures need hundreds of streams to rise above that noise; a few
MiB of growth over one stream is the resolution of the slow-consumer check. And memory freed by
earlier work is reused before RSS grows, so a heap that has been busy hides growth: run the slow
consumers first (the library's before anything else in the measuring process, the proxy's on a
proxy that has not yet held the open streams), and the open streams last.

The measuring process opens every connection itself (httpx on trio), so its own memory never
counts against the server's; only the library variant of the slow consumer samples this process
(there the gateway runs here). Pacing and sampling use trio's clock on real time.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import resource
import subprocess
import sys
import tempfile
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeAlias, cast

import attrs
import httpx
import orjson
import trio

import sluicegate

from ._report import Check
from ._targets import GATEWAY_MODEL, INPUT, bench_model
from ._upstream import BenchmarkError

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

__all__ = [
    "LIBRARY_ASYNCIO",
    "MAX_GROWTH_MIB",
    "MIB",
    "PROXY_MASTER_KEY",
    "START_FRACTION",
    "IdleRss",
    "MemoryResult",
    "OpenStreams",
    "RssSample",
    "RunningServer",
    "Server",
    "SlowConsumerRun",
    "library_open_streams",
    "measure_open_streams",
    "memory_checks",
    "memory_json",
    "memory_table",
    "open_slow_streams",
    "open_streams_config",
    "per_stream_bytes",
    "proxy_idle_rss",
    "raise_open_file_limit",
    "rss_bytes",
    "slow_consumer",
    "slow_consumer_library",
    "slow_consumer_proxy",
    "warm_up_gateway",
]

MIB: Final = 1024 * 1024
#: The proxy's ``general_settings.master_key`` the measurements authenticate with.
PROXY_MASTER_KEY: Final = "sk-bench-master"
#: A slow consumer's RSS may grow at most this much from the start mark to the end (and rise at
#: most this much over the pre-stream baseline).
MAX_GROWTH_MIB: Final = 5.0
#: The start mark of a slow-consumer run: after this fraction of its events, once the stream's
#: own one-time allocations (connection, parser, first batches) are behind it.
START_FRACTION: Final = 0.05

_SETTLE_S: Final = 0.5
_REQUEST_TIMEOUT: Final = httpx.Timeout(30.0)
#: The warm-up's bound: two requests, one of them cut short, on loopback.
_WARM_UP_WITHIN: Final = 30.0
_FAILED: Final = frozenset({"response.failed", "error"})
_TERMINAL: Final = frozenset({"response.completed", "response.incomplete", *_FAILED})


# -- reading RSS -------------------------------------------------------------------------------


def rss_bytes(pid: int | None = None) -> int:
    """A process's resident set size in bytes (``VmRSS``); this process's when ``pid`` is None.

    Raises:
        BenchmarkError: no ``/proc`` (not Linux), or the process is gone.
    """
    path = "/proc/self/status" if pid is None else f"/proc/{pid}/status"
    try:
        with open(path, "rb") as f:
            status = f.read()
    except OSError as exc:
        raise BenchmarkError(f"cannot read {path}: {exc}") from exc
    for line in status.splitlines():
        if line.startswith(b"VmRSS:"):
            _, value, unit = line.split()
            if unit != b"kB":
                raise BenchmarkError(f"unexpected VmRSS unit in {path}: {line!r}")
            return int(value) * 1024
    raise BenchmarkError(f"no VmRSS in {path} (a zombie?)")


class Server(Protocol):
    """A running HTTP server measured from outside: the proxy (``sluicegate serve`` with one
    worker, so ``pid`` is the process that serves) or anything else speaking the same API."""

    @property
    def url(self) -> str:
        """Its root, ``http://127.0.0.1:PORT`` (requests go to ``{url}/v1/responses``)."""
        ...

    @property
    def pid(self) -> int: ...

    def rss_bytes(self) -> int:
        """Its resident set size now."""
        ...


@attrs.frozen(kw_only=True)
class RunningServer:
    """The plain :class:`Server`: a URL and the pid whose RSS to read."""

    url: str
    pid: int

    def rss_bytes(self) -> int:
        return rss_bytes(self.pid)


def raise_open_file_limit(minimum: int) -> int:
    """Raise this process's soft limit on open files to at least ``minimum`` (up to the hard
    limit); returns the new soft limit. Processes started afterwards inherit it: call it before
    starting a proxy that is to hold ``streams`` client and ``streams`` upstream connections.

    Raises:
        BenchmarkError: the hard limit is below ``minimum``.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= minimum:
        return soft
    if hard != resource.RLIM_INFINITY and hard < minimum:
        raise BenchmarkError(f"{minimum} open files needed; the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (minimum, hard))
    return minimum


# -- results -----------------------------------------------------------------------------------


def per_stream_bytes(idle: int, with_open: int, streams: int) -> float:
    """Memory per open stream: the RSS the open streams added, divided among them."""
    if streams < 1:
        raise ValueError(f"streams must be positive, not {streams}")
    return (with_open - idle) / streams


@attrs.frozen(kw_only=True)
class IdleRss:
    """A server's RSS with nothing in flight, after a warm-up."""

    target: str
    rss_bytes: int


@attrs.frozen(kw_only=True)
class OpenStreams:
    """``streams`` slow streams held open at once against one server."""

    target: str
    streams: int
    #: Seconds between two lines read from each stream.
    read_interval_s: float
    #: Seconds from the first request to every stream having its first event.
    open_s: float
    idle_rss_bytes: int
    #: The highest of a few samples taken once all streams were open.
    open_rss_bytes: int
    #: After all streams were closed and the server had a moment to clean up.
    closed_rss_bytes: int

    @property
    def per_stream_bytes(self) -> float:
        return per_stream_bytes(self.idle_rss_bytes, self.open_rss_bytes, self.streams)


@attrs.frozen(kw_only=True)
class RssSample:
    #: Seconds since the stream's first event.
    at_s: float
    rss_bytes: int
    #: Events read so far.
    events: int


@attrs.frozen(kw_only=True)
class SlowConsumerRun:
    """One stream read at a fixed pace, and the RSS of the process that relays it."""

    #: What relayed the stream ("library": this process; "proxy": the server).
    target: str
    events: int
    event_interval_s: float
    #: From the first event to the last one read.
    duration_s: float
    #: The bytes of the stream read, where it came over HTTP (the proxy); else None.
    stream_bytes: int | None
    before_rss_bytes: int
    start_rss_bytes: int
    peak_rss_bytes: int
    end_rss_bytes: int
    samples: tuple[RssSample, ...]

    @property
    def growth_bytes(self) -> int:
        """End - start: what reading the stream past its start mark cost."""
        return self.end_rss_bytes - self.start_rss_bytes

    @property
    def rise_bytes(self) -> int:
        """Peak - before: everything the stream cost, an eager buffer filled early included."""
        return self.peak_rss_bytes - self.before_rss_bytes

    @property
    def passed(self) -> bool:
        limit = MAX_GROWTH_MIB * MIB
        return self.growth_bytes < limit and self.rise_bytes < limit


MemoryResult: TypeAlias = IdleRss | OpenStreams | SlowConsumerRun


# -- HTTP plumbing -----------------------------------------------------------------------------


def _responses_url(server: Server) -> str:
    root = server.url.rstrip("/")
    return f"{root}/responses" if root.endswith("/v1") else f"{root}/v1/responses"


def _headers(api_key: str) -> dict[str, str]:
    return {"content-type": "application/json", "authorization": f"Bearer {api_key}"}


def _body(model: str, *, stream: bool) -> bytes:
    return orjson.dumps({"model": model, "input": INPUT, "stream": stream})


async def _check_status(response: httpx.Response) -> None:
    if response.status_code != 200:
        await response.aread()
        raise BenchmarkError(
            f"{response.request.method} {response.request.url}: HTTP {response.status_code}: "
            f"{response.text[:300]}"
        )


def _lines(response: httpx.Response) -> AsyncGenerator[str, None]:
    # httpx types it as an iterator; it is a generator, closed here so that a stream left early
    # does not leave it to the garbage collector (trio's finalizer warns about those).
    return cast("AsyncGenerator[str, None]", response.aiter_lines())


async def _sse_types(response: httpx.Response) -> AsyncGenerator[str, None]:
    """The ``type`` of every SSE event (a ``data:`` line, parsed as a real client would)."""
    async with contextlib.aclosing(_lines(response)) as lines:
        async for line in lines:
            if line.startswith("data:"):
                event: Any = orjson.loads(line[5:])
                kind = event.get("type")
                if kind in _FAILED:
                    raise BenchmarkError(f"the stream failed: {line[:300]}")
                yield str(kind)


async def _warm_up(client: httpx.AsyncClient, server: Server, *, model: str, api_key: str) -> None:
    """One create and one stream, the stream dropped at its first delta (so this is quick on a
    slow upstream too, and the hang-up path is warm as well)."""
    url, headers = _responses_url(server), _headers(api_key)
    response = await client.post(url, content=_body(model, stream=False), headers=headers)
    await _check_status(response)
    async with client.stream(
        "POST", url, content=_body(model, stream=True), headers=headers
    ) as response:
        await _check_status(response)
        async with contextlib.aclosing(_sse_types(response)) as types:
            async for kind in types:
                if kind == "response.output_text.delta":
                    break
                if kind in _TERMINAL:
                    raise BenchmarkError("the warm-up stream ended before its first delta")


async def _idle_rss(
    client: httpx.AsyncClient, server: Server, *, model: str, api_key: str, settle: float
) -> int:
    """Warm up, let the dropped stream's cancellation and recording finish, sample the RSS."""
    with trio.move_on_after(_WARM_UP_WITHIN) as scope:
        try:
            await _warm_up(client, server, model=model, api_key=api_key)
        except httpx.HTTPError as exc:
            raise BenchmarkError(f"warm-up against {server.url}: {exc!r}") from exc
    if scope.cancelled_caught:
        raise BenchmarkError(f"the warm-up against {server.url} took over {_WARM_UP_WITHIN} s")
    await trio.sleep(settle)
    return server.rss_bytes()


def _client(connections: int) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncClient(limits=limits, timeout=_REQUEST_TIMEOUT)


# -- idle --------------------------------------------------------------------------------------


async def proxy_idle_rss(
    server: Server,
    *,
    model: str = GATEWAY_MODEL,
    api_key: str = PROXY_MASTER_KEY,
    target: str = "proxy",
    settle: float = _SETTLE_S,
) -> IdleRss:
    """The server's RSS when idle: after a warm-up create and stream, and ``settle`` seconds.

    Raises:
        BenchmarkError: a request failed, or the warm-up took over 30 s.
    """
    async with _client(2) as client:
        rss = await _idle_rss(client, server, model=model, api_key=api_key, settle=settle)
    return IdleRss(target=target, rss_bytes=rss)


# -- open slow streams -------------------------------------------------------------------------


@attrs.define(eq=False)
class _Holders:
    """The shared state of the stream holders: how many are open, and the first failure."""

    streams: int
    opened: int = 0
    all_open: trio.Event = attrs.Factory(trio.Event)
    close: trio.Event = attrs.Factory(trio.Event)
    failure: BenchmarkError | None = None

    def fail(self, error: BenchmarkError, scope: trio.CancelScope) -> None:
        if self.failure is None:
            self.failure = error
        scope.cancel()


async def _sample_held(
    state: _Holders,
    scope: trio.CancelScope,
    *,
    began: float,
    open_within: float,
    settle: float,
    samples: int,
    rss: Callable[[], int],
    what: str,
) -> tuple[float, int]:
    """Once every stream is open (or ``open_within`` passed: then the holders fail): ``settle``
    seconds, then ``samples`` RSS samples ``settle / 2`` apart. The seconds the opening took,
    and the highest sample."""
    with trio.move_on_after(open_within) as opening_scope:
        await state.all_open.wait()
    if opening_scope.cancelled_caught:
        state.fail(BenchmarkError(f"{state.opened} of {what} open after {open_within} s"), scope)
    open_s = trio.current_time() - began
    peak = 0
    await trio.sleep(settle)
    for i in range(samples):
        if i:
            await trio.sleep(settle / 2)
        peak = max(peak, rss())
    return open_s, peak


async def _hold_stream(
    n: int,
    client: httpx.AsyncClient,
    server: Server,
    state: _Holders,
    gate: trio.Semaphore,
    scope: trio.CancelScope,
    *,
    model: str,
    api_key: str,
    read_interval: float,
) -> None:
    """Open one stream, wait for its first event, then read a line every ``read_interval``
    until told to close. Only the opening holds ``gate``: it spaces out the connection attempts
    (a burst of hundreds overflows the listen backlog and costs SYN retries of a second)."""
    opening = True
    await gate.acquire()
    try:
        async with client.stream(
            "POST",
            _responses_url(server),
            content=_body(model, stream=True),
            headers=_headers(api_key),
        ) as response:
            await _check_status(response)
            async with contextlib.aclosing(_lines(response)) as lines:
                async for line in lines:
                    if line.startswith("data:"):
                        break
                else:
                    raise BenchmarkError("a stream ended before its first event")
                opening = False
                gate.release()
                state.opened += 1
                if state.opened == state.streams:
                    state.all_open.set()
                while not state.close.is_set():
                    await trio.sleep(read_interval)
                    try:
                        line = await anext(lines)
                    except StopAsyncIteration:
                        raise BenchmarkError(
                            "a stream ended while it was to be held open: start the slow "
                            "upstream with more tokens or a longer --token-delay"
                        ) from None
                    if line.startswith("data:") and orjson.loads(line[5:]).get("type") in _FAILED:
                        raise BenchmarkError(f"a held stream failed: {line[:300]}")
    except BenchmarkError as exc:
        state.fail(BenchmarkError(f"stream {n}: {exc}"), scope)
    except httpx.HTTPError as exc:
        state.fail(BenchmarkError(f"stream {n}: {exc!r}"), scope)
    finally:
        if opening:
            gate.release()


async def open_slow_streams(
    server: Server,
    *,
    streams: int = 500,
    model: str = GATEWAY_MODEL,
    api_key: str = PROXY_MASTER_KEY,
    target: str = "proxy",
    read_interval: float = 0.1,
    opening: int = 32,
    settle: float = 1.0,
    samples: int = 3,
    open_within: float | None = None,
) -> OpenStreams:
    """Memory per open stream: hold ``streams`` slow streams open at once and sample the RSS.

    The server's upstream must be slow enough that no stream ends while held (``sluicegate.fake
    --token-delay``): the streams are closed by this side, after sampling. Each stream is read a
    line per ``read_interval`` (a slow client, not a stalled one); at most ``opening`` requests
    are waiting for their first event at a time. Once all are open: ``settle`` seconds, then
    ``samples`` RSS samples ``settle / 2`` apart, the highest kept. Then every stream is closed
    and, ``settle`` seconds later, the RSS sampled once more.

    Takes the warm-up (~1 s), the opening (a few seconds for 500 on loopback), then
    ``3.5 * settle`` (``samples`` = 3) and up to ``read_interval`` to close.

    Raises:
        BenchmarkError: a request failed or a stream ended early (the first such error), the
            warm-up took over 30 s, or the streams were not all open within ``open_within``
            seconds (default: 30 s + 0.1 s per stream).
    """
    if streams < 1:
        raise ValueError(f"streams must be positive, not {streams}")
    raise_open_file_limit(streams + 256)
    state = _Holders(streams=streams)
    gate = trio.Semaphore(opening)
    if open_within is None:
        open_within = 30.0 + 0.1 * streams
    open_s = math.nan
    peak = 0
    async with _client(streams + 1) as client:
        idle = await _idle_rss(client, server, model=model, api_key=api_key, settle=_SETTLE_S)
        began = trio.current_time()
        async with trio.open_nursery() as nursery:
            for n in range(streams):
                nursery.start_soon(
                    functools.partial(
                        _hold_stream,
                        n,
                        client,
                        server,
                        state,
                        gate,
                        nursery.cancel_scope,
                        model=model,
                        api_key=api_key,
                        read_interval=read_interval,
                    )
                )
            open_s, peak = await _sample_held(
                state,
                nursery.cancel_scope,
                began=began,
                open_within=open_within,
                settle=settle,
                samples=samples,
                rss=server.rss_bytes,
                what=f"{streams} streams against {server.url}",
            )
            state.close.set()
    if state.failure is not None:
        raise state.failure
    await trio.sleep(settle)
    return OpenStreams(
        target=target,
        streams=streams,
        read_interval_s=read_interval,
        open_s=open_s,
        idle_rss_bytes=idle,
        open_rss_bytes=peak,
        closed_rss_bytes=server.rss_bytes(),
    )


async def library_open_streams(
    upstream_url: str,
    *,
    streams: int = 500,
    read_interval: float = 0.1,
    opening: int = 32,
    settle: float = 1.0,
    samples: int = 3,
    open_within: float | None = None,
    target: str = "library",
) -> OpenStreams:
    """Memory per open stream for the library, in this process: :func:`open_slow_streams` with
    ``gw.stream(...)`` in place of HTTP requests to a server.

    One gateway on ``upstream_url`` (a slow fake upstream, ``--token-delay``), recording in a
    SQLite file and with a pool of one connection per stream (the pool must not be what queues
    them). After a warm-up (a create, and a stream dropped at its first delta) and half a
    second, this process's RSS; then ``streams`` streams opened at once (at most ``opening``
    waiting for their first event), each reading an event per ``read_interval``; ``settle``
    seconds after all have their first event, the highest of ``samples`` RSS samples; then all
    closed (cancelled: each upstream request is cancelled too), and ``settle`` seconds later the
    RSS once more. Run it in a process of its own (:func:`measure_open_streams`): a heap that
    has been busy hides growth.

    Raises:
        BenchmarkError: the gateway failed, a stream ended while held, or the streams were not
            all open within ``open_within`` seconds (default: 30 s + 0.1 s per stream).
    """
    if streams < 1:
        raise ValueError(f"streams must be positive, not {streams}")
    raise_open_file_limit(streams + 256)
    if open_within is None:
        open_within = 30.0 + 0.1 * streams
    state = _Holders(streams=streams)
    gate = trio.Semaphore(opening)
    peak = 0
    with tempfile.TemporaryDirectory(prefix="sluicegate-bench-") as scratch:
        config = open_streams_config(upstream_url, str(Path(scratch) / "held.db"), streams)
        try:
            async with sluicegate.open_gateway(config) as gateway:
                await warm_up_gateway(gateway)
                await trio.sleep(_SETTLE_S)
                idle = rss_bytes()
                began = trio.current_time()
                async with trio.open_nursery() as nursery:
                    for n in range(streams):
                        nursery.start_soon(
                            functools.partial(
                                _hold_library_stream,
                                n,
                                gateway,
                                state,
                                gate,
                                nursery.cancel_scope,
                                read_interval=read_interval,
                            )
                        )
                    open_s, peak = await _sample_held(
                        state,
                        nursery.cancel_scope,
                        began=began,
                        open_within=open_within,
                        settle=settle,
                        samples=samples,
                        rss=rss_bytes,
                        what=f"{streams} library streams",
                    )
                    # The holders end only by failing or by this: every stream left early.
                    nursery.cancel_scope.cancel()
                if state.failure is not None:
                    raise state.failure
                await trio.sleep(settle)
                closed = rss_bytes()
        except sluicegate.SluicegateError as exc:
            raise BenchmarkError(f"library: {exc}") from exc
    return OpenStreams(
        target=target,
        streams=streams,
        read_interval_s=read_interval,
        open_s=open_s,
        idle_rss_bytes=idle,
        open_rss_bytes=peak,
        closed_rss_bytes=closed,
    )


async def _hold_library_stream(
    n: int,
    gateway: sluicegate.Gateway,
    state: _Holders,
    gate: trio.Semaphore,
    scope: trio.CancelScope,
    *,
    read_interval: float,
) -> None:
    """:func:`_hold_stream` for the library: open one stream, take its first event, then an
    event every ``read_interval`` until cancelled."""
    opening = True
    await gate.acquire()
    try:
        async with gateway.stream(model=GATEWAY_MODEL, input=INPUT) as stream:
            try:
                await anext(stream)
            except StopAsyncIteration:
                raise BenchmarkError("a stream ended before its first event") from None
            opening = False
            gate.release()
            state.opened += 1
            if state.opened == state.streams:
                state.all_open.set()
            while True:
                await trio.sleep(read_interval)
                try:
                    event = await anext(stream)
                except StopAsyncIteration:
                    raise BenchmarkError(
                        "a stream ended while it was to be held open: start the slow upstream "
                        "with more tokens or a longer --token-delay"
                    ) from None
                if event.type in _FAILED:
                    raise BenchmarkError(f"a held stream failed: {event.data!r:.300}")
    except BenchmarkError as exc:
        state.fail(BenchmarkError(f"library stream {n}: {exc}"), scope)
    except sluicegate.SluicegateError as exc:
        state.fail(BenchmarkError(f"library stream {n}: {exc}"), scope)
    finally:
        if opening:
            gate.release()


def open_streams_config(upstream_url: str, store_path: str, streams: int) -> dict[str, Any]:
    """The library's config for holding ``streams`` open streams (either face's): recording in
    a SQLite file, with a pool of one connection per stream (the pool must not be what queues
    them)."""
    config = _library_config(upstream_url, store_path)
    config["general_settings"] |= {
        "max_connections": streams + 64,
        "max_keepalive_connections": streams + 64,
    }
    return config


async def warm_up_gateway(gateway: sluicegate.Gateway) -> None:
    """A create, and a stream dropped at its first delta: what loads and allocates what every
    later request reuses. Only the gateway's calls: it runs on either face."""
    await gateway.responses(model=GATEWAY_MODEL, input=INPUT)
    async with gateway.stream(model=GATEWAY_MODEL, input=INPUT) as warm:
        async for event in warm:
            if event.type == "response.output_text.delta":
                break


#: The library's asyncio face holding open streams (``_asyncio_face.open_streams``).
LIBRARY_ASYNCIO: Final = "library-asyncio"
#: The child each holder of open streams runs in: ``python -m <module> <command> URL STREAMS``.
_OPEN_STREAMS_CHILDREN: Final = {
    "library": ("benchmarks._memory", "library-open-streams"),
    LIBRARY_ASYNCIO: ("benchmarks._asyncio_face", "open-streams"),
    "aiohttp-floor": ("benchmarks._aiohttp", "open-streams"),
}
_ROOT: Final = Path(__file__).resolve().parent.parent


def measure_open_streams(
    target: str, upstream_url: str, *, streams: int, timeout: float | None = None
) -> OpenStreams:
    """Memory per open stream for ``target`` (``library``, ``library-asyncio`` or
    ``aiohttp-floor``) in a child process of its own (a fresh heap; it inherits this process's
    CPU affinity), holding ``streams`` streams from ``upstream_url``, a slow fake upstream.

    Raises:
        BenchmarkError: the child failed or took over ``timeout`` seconds (default: 2 minutes
            + 0.2 s per stream), with the tail of its stderr.
    """
    if target not in _OPEN_STREAMS_CHILDREN:
        raise ValueError(f"unknown open-streams target {target!r}")
    module, command = _OPEN_STREAMS_CHILDREN[target]
    argv = [sys.executable, "-m", module, command, upstream_url, str(streams)]
    if timeout is None:
        timeout = 120.0 + 0.2 * streams
    try:
        done = subprocess.run(argv, cwd=_ROOT, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise BenchmarkError(f"{target}: {streams} open streams took over {timeout} s") from exc
    if done.returncode != 0:
        tail = done.stderr.decode("utf-8", "replace")[-3000:]
        raise BenchmarkError(f"{target}: the open-streams child failed ({done.returncode}): {tail}")
    try:
        data: Any = json.loads(done.stdout.decode().strip().splitlines()[-1])
        return OpenStreams(**data)
    except (IndexError, TypeError, ValueError) as exc:
        raise BenchmarkError(f"{target}: not an open-streams result: {done.stdout!r:.500}") from exc


# -- slow consumer -----------------------------------------------------------------------------


async def _paced_read(
    events: AsyncGenerator[str, None],
    *,
    target: str,
    count: int,
    interval: float,
    sample_interval: float,
    rss: Callable[[], int],
    before: int,
    stream_bytes: Callable[[], int] | None,
) -> SlowConsumerRun:
    """Read ``count`` events of ``events``, the i-th no sooner than ``(i - 1) * interval`` after
    the first, sampling ``rss`` every ``sample_interval`` meanwhile."""
    start_mark = max(1, math.ceil(count * START_FRACTION))
    samples: list[RssSample] = []
    received = 0
    first = math.nan
    start: int | None = None
    end: int | None = None
    duration = math.nan

    def sample() -> int:
        value = rss()
        samples.append(
            RssSample(at_s=trio.current_time() - first, rss_bytes=value, events=received)
        )
        return value

    async def sampler() -> None:
        while True:
            await trio.sleep(sample_interval)
            sample()

    failure: Exception | None = None
    async with trio.open_nursery() as nursery:
        # Failures are raised after the nursery, as themselves rather than in a group.
        try:
            async with contextlib.aclosing(events) as stream:
                async for kind in stream:
                    received += 1
                    if received == 1:
                        first = trio.current_time()
                        sample()
                        nursery.start_soon(sampler)
                    if received == start_mark:
                        start = sample()
                    if received == count:
                        end = sample()
                        duration = trio.current_time() - first
                        break
                    if kind in _TERMINAL:
                        raise BenchmarkError(
                            f"{target}: the stream ended after {received} of {count} events; "
                            f"start the upstream with more tokens (--tokens > {count})"
                        )
                    await trio.sleep_until(first + received * interval)
        except Exception as exc:
            failure = exc
        nursery.cancel_scope.cancel()
    if failure is not None:
        raise failure
    if start is None or end is None:
        raise BenchmarkError(f"{target}: the stream ended after {received} of {count} events")
    samples.sort(key=lambda s: s.at_s)
    return SlowConsumerRun(
        target=target,
        events=count,
        event_interval_s=interval,
        duration_s=duration,
        stream_bytes=None if stream_bytes is None else stream_bytes(),
        before_rss_bytes=before,
        start_rss_bytes=start,
        peak_rss_bytes=max(s.rss_bytes for s in samples),
        end_rss_bytes=end,
        samples=tuple(samples),
    )


def _pace_timeout(events: int, interval: float) -> float:
    return 2 * events * interval + 30.0


def _library_config(upstream_url: str, store_path: str) -> dict[str, Any]:
    """The library's config for the slow consumer: one model group on the fake upstream,
    recording in a SQLite file (as in the throughput benchmark)."""
    return {
        "model_list": [bench_model(upstream_url)],
        "general_settings": {"store": {"path": store_path}},
    }


async def _library_types(stream: sluicegate.ResponseStream) -> AsyncGenerator[str, None]:
    async for event in stream:
        if event.type in _FAILED:
            raise BenchmarkError(f"library: the stream failed: {event.data!r:.300}")
        yield event.type


async def slow_consumer_library(
    upstream_url: str,
    *,
    events: int = 3000,
    interval: float = 0.01,
    sample_interval: float = 0.5,
    target: str = "library",
) -> SlowConsumerRun:
    """A slow consumer of the library, in this process: ``sluicegate.open_gateway`` on
    ``upstream_url`` (a fake upstream with more than ``events`` tokens and no delay), one stream
    read at one event per ``interval`` for ``events`` events, this process's RSS sampled.

    Takes about ``events * interval`` seconds plus a second of warm-up.

    Raises:
        BenchmarkError: the gateway failed, the stream was shorter than ``events``, or the
            read took over twice its planned time (plus 30 s).
    """
    with (
        tempfile.TemporaryDirectory(prefix="sluicegate-bench-") as scratch,
        trio.move_on_after(_pace_timeout(events, interval)) as deadline,
    ):
        config = _library_config(upstream_url, str(Path(scratch) / "memory.db"))
        try:
            async with sluicegate.open_gateway(config) as gateway:
                # Warm-up: the first stream loads and allocates what every later one reuses.
                async with gateway.stream(model=GATEWAY_MODEL, input=INPUT) as warm:
                    async for event in warm:
                        if event.type == "response.output_text.delta":
                            break
                await trio.sleep(_SETTLE_S)
                before = rss_bytes()
                async with gateway.stream(model=GATEWAY_MODEL, input=INPUT) as stream:
                    run = await _paced_read(
                        _library_types(stream),
                        target=target,
                        count=events,
                        interval=interval,
                        sample_interval=sample_interval,
                        rss=rss_bytes,
                        before=before,
                        stream_bytes=None,
                    )
        except sluicegate.SluicegateError as exc:
            raise BenchmarkError(f"library: {exc}") from exc
    if deadline.cancelled_caught:
        raise BenchmarkError(f"library: {events} events not read within the time allowed")
    return run


async def slow_consumer_proxy(
    server: Server,
    *,
    events: int = 3000,
    interval: float = 0.01,
    sample_interval: float = 0.5,
    model: str = GATEWAY_MODEL,
    api_key: str = PROXY_MASTER_KEY,
    target: str = "proxy",
) -> SlowConsumerRun:
    """A slow client of the proxy: one stream (``server``'s ``model`` on a fake upstream with
    more than ``events`` tokens and no delay) read over HTTP at one event per ``interval`` for
    ``events`` events, the server's RSS sampled. This process is only the client.

    Takes about ``events * interval`` seconds plus a second of warm-up.

    Raises:
        BenchmarkError: a request failed, the stream was shorter than ``events``, or the read
            took over twice its planned time (plus 30 s).
    """
    with trio.move_on_after(_pace_timeout(events, interval)) as deadline:
        try:
            async with _client(2) as client:
                before = await _idle_rss(
                    client, server, model=model, api_key=api_key, settle=_SETTLE_S
                )
                async with client.stream(
                    "POST",
                    _responses_url(server),
                    content=_body(model, stream=True),
                    headers=_headers(api_key),
                ) as response:
                    await _check_status(response)
                    run = await _paced_read(
                        _sse_types(response),
                        target=target,
                        count=events,
                        interval=interval,
                        sample_interval=sample_interval,
                        rss=server.rss_bytes,
                        before=before,
                        stream_bytes=lambda: response.num_bytes_downloaded,
                    )
        except httpx.HTTPError as exc:
            raise BenchmarkError(f"{target}: {exc!r}") from exc
    if deadline.cancelled_caught:
        raise BenchmarkError(f"{target}: {events} events not read within the time allowed")
    return run


async def slow_consumer(
    *,
    upstream_url: str | None = None,
    proxy: Server | None = None,
    events: int = 3000,
    interval: float = 0.01,
    sample_interval: float = 0.5,
    model: str = GATEWAY_MODEL,
) -> list[SlowConsumerRun]:
    """Both slow consumers, one after the other (never together: the library's is measured in
    this process, where the proxy's client also runs): the library's if ``upstream_url`` is
    given, the proxy's (its model group ``model``) if ``proxy`` is. About ``events * interval``
    seconds each, plus a second of warm-up.

    Run it before the other measurements of the process and of the proxy: memory freed by
    earlier work is reused before RSS grows, so a heap that has been busy hides growth."""
    runs = []
    if upstream_url is not None:
        runs.append(
            await slow_consumer_library(
                upstream_url, events=events, interval=interval, sample_interval=sample_interval
            )
        )
    if proxy is not None:
        runs.append(
            await slow_consumer_proxy(
                proxy,
                events=events,
                interval=interval,
                sample_interval=sample_interval,
                model=model,
            )
        )
    return runs


# -- output ------------------------------------------------------------------------------------


def _mib(value: float) -> str:
    return f"{value / MIB:.1f}"


def _delta_mib(value: float) -> str:
    # Rounded first, so that a few KiB down reads +0.00 and not -0.00.
    return f"{round(value / MIB, 2) + 0.0:+.2f}"


def _verdict(passed: bool) -> str:
    return "PASS" if passed else "MISS"


def memory_checks(results: Sequence[MemoryResult]) -> list[Check]:
    """One check per slow-consumer run: growth and rise both under :data:`MAX_GROWTH_MIB`."""
    return [
        Check(
            name=f"{r.target}: RSS flat under a slow consumer (growth and rise < "
            f"{MAX_GROWTH_MIB:g} MiB)",
            passed=r.passed,
            detail=f"growth {_delta_mib(r.growth_bytes)} MiB (start {_mib(r.start_rss_bytes)} -> "
            f"end {_mib(r.end_rss_bytes)}), rise {_delta_mib(r.rise_bytes)} MiB over "
            f"{_mib(r.before_rss_bytes)} (peak {_mib(r.peak_rss_bytes)}), {r.events} events "
            f"in {r.duration_s:.1f} s",
        )
        for r in results
        if isinstance(r, SlowConsumerRun)
    ]


def _render(header: list[str], rows: list[list[str]], *, left: int, markdown: bool) -> str:
    """A table; the first ``left`` columns are left-aligned."""
    if markdown:
        align = ["---" if i < left else "---:" for i in range(len(header))]
        return "\n".join("| " + " | ".join(r) + " |" for r in [header, align, *rows])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i < left else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *map(line, rows)])


def memory_table(results: Sequence[MemoryResult], *, markdown: bool = False) -> str:
    """The results as up to three tables (idle, open streams, slow consumer), sizes in MiB."""
    parts: list[str] = []
    idle = [r for r in results if isinstance(r, IdleRss)]
    if idle:
        rows = [[r.target, _mib(r.rss_bytes)] for r in idle]
        parts.append("idle RSS (after a warm-up)")
        parts.append(_render(["target", "RSS MiB"], rows, left=1, markdown=markdown))
    held = [r for r in results if isinstance(r, OpenStreams)]
    if held:
        rows = [
            [
                r.target,
                str(r.streams),
                f"{r.read_interval_s * 1e3:.0f}",
                f"{r.open_s:.1f}",
                _mib(r.idle_rss_bytes),
                _mib(r.open_rss_bytes),
                _mib(r.closed_rss_bytes),
                f"{r.per_stream_bytes / 1024:.1f}",
            ]
            for r in held
        ]
        header = [
            "target",
            "streams",
            "line every ms",
            "open s",
            "idle MiB",
            "open MiB",
            "closed MiB",
            "KiB/stream",
        ]
        parts.append(
            "open slow streams (RSS of the process holding them: the proxy server, the "
            "library's (trio or asyncio face) or the aiohttp floor's own; per stream = "
            "(open - idle) / streams)"
        )
        parts.append(_render(header, rows, left=1, markdown=markdown))
    slow = [r for r in results if isinstance(r, SlowConsumerRun)]
    if slow:
        rows = [
            [
                r.target,
                str(r.events),
                f"{r.event_interval_s * 1e3:g}",
                "-" if r.stream_bytes is None else f"{r.stream_bytes / MIB:.2f}",
                _mib(r.before_rss_bytes),
                _mib(r.start_rss_bytes),
                _mib(r.peak_rss_bytes),
                _mib(r.end_rss_bytes),
                _delta_mib(r.growth_bytes),
                _delta_mib(r.rise_bytes),
                f"{r.duration_s:.1f}",
                _verdict(r.passed),
            ]
            for r in slow
        ]
        header = [
            "target",
            "events",
            "ms/event",
            "stream MiB",
            "before MiB",
            "start MiB",
            "peak MiB",
            "end MiB",
            "growth MiB",
            "rise MiB",
            "s",
            "check",
        ]
        parts.append(
            f"slow consumer (one stream; start after {START_FRACTION:.0%} of the events; "
            f"growth = end - start, rise = peak - before; both < {MAX_GROWTH_MIB:g} MiB)"
        )
        parts.append(_render(header, rows, left=1, markdown=markdown))
    # Markdown needs a blank line between a caption and its table; text reads better without.
    titled = [
        (f"**{caption}**\n\n{table}" if markdown else f"{caption}:\n{table}")
        for caption, table in zip(parts[::2], parts[1::2], strict=True)
    ]
    return "\n\n".join(titled)


def memory_json(results: Sequence[MemoryResult]) -> dict[str, Any]:
    """The results for the results file: sizes in bytes, derived figures included."""
    return {
        "idle": [
            {"target": r.target, "rss_bytes": r.rss_bytes}
            for r in results
            if isinstance(r, IdleRss)
        ],
        "open_streams": [
            {
                "target": r.target,
                "streams": r.streams,
                "read_interval_s": r.read_interval_s,
                "open_s": r.open_s,
                "idle_rss_bytes": r.idle_rss_bytes,
                "open_rss_bytes": r.open_rss_bytes,
                "closed_rss_bytes": r.closed_rss_bytes,
                "per_stream_bytes": r.per_stream_bytes,
                "per_stream_kib": r.per_stream_bytes / 1024,
            }
            for r in results
            if isinstance(r, OpenStreams)
        ],
        "slow_consumer": [
            {
                "target": r.target,
                "events": r.events,
                "event_interval_s": r.event_interval_s,
                "duration_s": r.duration_s,
                "stream_bytes": r.stream_bytes,
                "before_rss_bytes": r.before_rss_bytes,
                "start_rss_bytes": r.start_rss_bytes,
                "peak_rss_bytes": r.peak_rss_bytes,
                "end_rss_bytes": r.end_rss_bytes,
                "growth_bytes": r.growth_bytes,
                "rise_bytes": r.rise_bytes,
                "max_growth_bytes": int(MAX_GROWTH_MIB * MIB),
                "verdict": _verdict(r.passed),
                "passed": r.passed,
                "samples": [
                    {"at_s": s.at_s, "rss_bytes": s.rss_bytes, "events": s.events}
                    for s in r.samples
                ],
            }
            for r in results
            if isinstance(r, SlowConsumerRun)
        ],
    }


def _main(argv: Sequence[str]) -> int:
    """The library's open-streams child: ``library-open-streams UPSTREAM_URL STREAMS``; prints
    its :class:`OpenStreams` as one JSON line."""
    if len(argv) != 3 or argv[0] != "library-open-streams":
        print(
            "usage: python -m benchmarks._memory library-open-streams UPSTREAM_URL STREAMS",
            file=sys.stderr,
        )
        return 2
    result = trio.run(functools.partial(library_open_streams, argv[1], streams=int(argv[2])))
    print(json.dumps(attrs.asdict(result)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
