"""The targets under test: the floor (raw httpx + orjson) and the sluicegate library.

Every target answers one request per call and reports what the runner cannot see from outside:
how many events it received and when the first one arrived. Each also checks that the answer is
a completed response, cheaply, so a broken run fails loudly instead of measuring errors.

The library's target serves both faces: opened under trio (``_library.py``) it is the trio
face; opened under asyncio (``_asyncio_face.py``, the engine a trio guest on asyncio's loop) it
is the asyncio face, the same gateway and the same calls, timed on asyncio's clock.

This module does not import sluicegate until :func:`open_sluicegate` runs: the floor's child
process (``_library.py``) imports it too, and its RSS must be the floor's alone.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import attrs
import httpx
import orjson
import trio

# The settings every target shares live in _cases.py, which the aiohttp floor's child imports
# without trio or httpx.
from ._cases import API_KEY as API_KEY
from ._cases import GATEWAY_MODEL as GATEWAY_MODEL
from ._cases import INPUT as INPUT
from ._cases import POOL_KEEPALIVE_EXPIRY as POOL_KEEPALIVE_EXPIRY
from ._cases import POOL_SIZE as POOL_SIZE
from ._cases import UPSTREAM_MODEL as UPSTREAM_MODEL
from ._cases import Answer as Answer
from ._cases import Target as Target
from ._upstream import BenchmarkError

if TYPE_CHECKING:
    from collections.abc import Callable

    import sluicegate

__all__ = [
    "GATEWAY_MODEL",
    "INPUT",
    "POOL_KEEPALIVE_EXPIRY",
    "POOL_SIZE",
    "UPSTREAM_MODEL",
    "bench_model",
    "Answer",
    "FloorTarget",
    "SluicegateTarget",
    "Target",
    "open_floor",
    "open_sluicegate",
]

_COMPLETED: Final = "response.completed"


@attrs.define(eq=False)
class FloorTarget:
    """What a minimal hand-written client does: httpx, orjson, nothing else."""

    _client: httpx.AsyncClient
    _url: str
    _headers: dict[str, str]

    @property
    def name(self) -> str:
        return "floor"

    async def create(self) -> Answer:
        content = orjson.dumps({"model": UPSTREAM_MODEL, "input": INPUT})
        response = await self._client.post(self._url, content=content, headers=self._headers)
        response.raise_for_status()
        body: Any = orjson.loads(response.content)
        if body.get("status") != "completed":
            raise BenchmarkError(f"floor: unexpected response status {body.get('status')!r}")
        return Answer(1, None)

    async def stream(self) -> Answer:
        content = orjson.dumps({"model": UPSTREAM_MODEL, "input": INPUT, "stream": True})
        events = 0
        first: float | None = None
        last: Any = None
        async with self._client.stream(
            "POST", self._url, content=content, headers=self._headers
        ) as response:
            response.raise_for_status()
            async for line in response.aiter_lines():
                if line.startswith("data:"):
                    last = orjson.loads(line[5:])
                    events += 1
                    if first is None:
                        first = trio.current_time()
        if last is None or last.get("type") != _COMPLETED:
            raise BenchmarkError("floor: the stream did not end with response.completed")
        return Answer(events, first)


@attrs.define(eq=False)
class SluicegateTarget:
    """The library, as a caller uses it (on trio or on asyncio: the calls are the same)."""

    _gateway: sluicegate.Gateway
    #: ``sluicegate.ResponseStatus.COMPLETED``, handed in by :func:`open_sluicegate`: this module
    #: does not import sluicegate (see the module docstring).
    _completed: sluicegate.ResponseStatus
    #: The driver's clock, for the first event's arrival (trio's, or asyncio's driver's).
    _clock: Callable[[], float] = trio.current_time

    @property
    def name(self) -> str:
        return "sluicegate"

    async def create(self) -> Answer:
        response = await self._gateway.responses(model=GATEWAY_MODEL, input=INPUT)
        if response.status is not self._completed:
            raise BenchmarkError(f"sluicegate: unexpected response status {response.status!r}")
        return Answer(1, None)

    async def stream(self) -> Answer:
        events = 0
        first: float | None = None
        last: sluicegate.StreamEvent | None = None
        async with self._gateway.stream(model=GATEWAY_MODEL, input=INPUT) as stream:
            async for event in stream:
                last = event
                events += 1
                if first is None:
                    first = self._clock()
        if last is None or last.type != _COMPLETED:
            raise BenchmarkError("sluicegate: the stream did not end with response.completed")
        return Answer(events, first)


def _limits() -> httpx.Limits:
    return httpx.Limits(
        max_connections=POOL_SIZE,
        max_keepalive_connections=POOL_SIZE,
        keepalive_expiry=POOL_KEEPALIVE_EXPIRY,
    )


@asynccontextmanager
async def open_floor(base_url: str) -> AsyncIterator[FloorTarget]:
    """One raw client for the whole run, pool sized like the gateway's."""
    headers = {"content-type": "application/json", "authorization": f"Bearer {API_KEY}"}
    async with httpx.AsyncClient(limits=_limits(), timeout=None) as client:
        yield FloorTarget(client, f"{base_url}/responses", headers)


def bench_model(
    upstream_url: str, *, name: str = GATEWAY_MODEL, deployment_id: str = "bench-1"
) -> dict[str, Any]:
    """A ``model_list`` entry: the group ``name`` on the fake upstream (every benchmark config
    routes this way: the library's, the proxy's, the memory scenarios')."""
    return {
        "model_name": name,
        "litellm_params": {
            "model": f"openai/{UPSTREAM_MODEL}",
            "api_base": upstream_url,
            "api_key": API_KEY,
        },
        "model_info": {"id": deployment_id},
    }


@asynccontextmanager
async def open_sluicegate(
    base_url: str,
    *,
    stateless: bool = False,
    clock: Callable[[], float] = trio.current_time,
) -> AsyncIterator[SluicegateTarget]:
    """One gateway for the whole child process, routing one model group to the fake upstream.
    It records every response in a SQLite file, as a deployed gateway does (a temporary one
    here); ``stateless``: in the bounded in-memory store instead (``store.backend: memory``).
    Under trio or asyncio, whichever runs it; ``clock`` is the driver's (``time.perf_counter``
    for asyncio's)."""
    import sluicegate

    scratch = tempfile.TemporaryDirectory(prefix="sluicegate-bench-")
    store: dict[str, object] = {"path": str(Path(scratch.name) / "bench.db")}
    if stateless:
        store = {"backend": "memory"}
    config = {
        "model_list": [bench_model(base_url)],
        "general_settings": {
            "max_connections": POOL_SIZE,
            "max_keepalive_connections": POOL_SIZE,
            "keepalive_expiry": POOL_KEEPALIVE_EXPIRY,
            "store": store,
        },
    }
    with scratch:
        async with sluicegate.open_gateway(config) as gateway:
            yield SluicegateTarget(gateway, sluicegate.ResponseStatus.COMPLETED, clock)
