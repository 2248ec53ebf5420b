"""The library's asyncio face: the ``sluicegate`` target's gateway, opened and driven under asyncio.

``sluicegate.open_gateway`` works under asyncio as under trio: the engine runs as a trio guest
on asyncio's loop (``sluicegate/_gateway/_host.py``), and ``await gw.responses(...)`` and
``async with gw.stream(...)`` take the same arguments and give the same results. What that
costs is this target: the very gateway of the trio face (``_targets.open_sluicegate``: the same
SQLite file store, pool and model), called the same way (``_targets.SluicegateTarget``), but
from asyncio tasks, driven exactly as the aiohttp floor is (``_asyncio_driver.py``: the same
warm-up, the same workers, the same figures). Its CPU per request ÷ the trio face's is the price
of crossing between the two loops.

It runs as ``python -m benchmarks._asyncio_face``, a child of its own, pinned like the other
library targets, speaking ``_library.py``'s protocol: ``sluicegate-asyncio UPSTREAM_URL
UPSTREAM_PID PLAN`` runs every case of the plan and prints a case line each (the parent is
``_library.measure_library``); ``open-streams UPSTREAM_URL STREAMS`` holds that many slow streams
open through ``gw.stream`` and prints the memory they cost (the parent is
``_memory.measure_open_streams``, target ``library-asyncio``). The child runs asyncio's loop
only, never trio's own (``trio.run``): trio is imported, as the gateway's guest.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import sluicegate

from ._asyncio_driver import child_main, hold_streams, raise_open_file_limit, rss, run_cases
from ._cases import GATEWAY_MODEL, INPUT, LibraryPlan
from ._memory import LIBRARY_ASYNCIO, open_streams_config, warm_up_gateway
from ._report import SLUICEGATE_ASYNCIO
from ._targets import open_sluicegate
from ._upstream import FakeUpstreamProcess

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["open_streams", "run_face"]

_FAILED: Final = frozenset({"response.failed", "error"})


async def run_face(upstream: FakeUpstreamProcess, plan: LibraryPlan) -> None:
    """Every case of ``plan`` on one gateway, a line each (``_library.case_line``'s)."""
    async with open_sluicegate(upstream.base_url, clock=time.perf_counter) as target:
        await run_cases(SLUICEGATE_ASYNCIO, target, upstream, plan)


async def open_streams(
    upstream_url: str, *, streams: int, settle: float = 1.0, **options: Any
) -> dict[str, Any]:
    """Memory per open stream for the asyncio face, in this process: ``_memory``'s
    ``library_open_streams`` under asyncio. One gateway configured as there
    (``open_streams_config``), warmed up as there; then ``_asyncio_driver.hold_streams`` with
    ``gw.stream(...)`` (``options`` are its own), each stream read an event per
    ``read_interval``; then, all closed, ``settle`` seconds later the RSS once more.

    Returns:
        ``_memory.OpenStreams``'s fields, target ``library-asyncio``.

    Raises:
        BenchmarkError: as ``hold_streams``.
        sluicegate.SluicegateError: the gateway failed.
    """
    raise_open_file_limit(streams + 256)
    with tempfile.TemporaryDirectory(prefix="sluicegate-bench-") as scratch:
        config = open_streams_config(upstream_url, str(Path(scratch) / "held.db"), streams)
        async with sluicegate.open_gateway(config) as gateway:
            await warm_up_gateway(gateway)
            held = await hold_streams(
                partial(gateway.stream, model=GATEWAY_MODEL, input=INPUT),
                streams=streams,
                is_event=lambda _: True,
                failed=lambda event: event.type in _FAILED,
                settle=settle,
                **options,
            )
            await asyncio.sleep(settle)
            return held.result(LIBRARY_ASYNCIO, rss())


# --- the child's entry -----------------------------------------------------------------------


def _main(argv: Sequence[str]) -> int:
    return child_main(
        argv,
        module="benchmarks._asyncio_face",
        target=SLUICEGATE_ASYNCIO,
        run=run_face,
        open_streams=open_streams,
    )


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
