"""Serving a proxy app on loopback for a test: ``async with serving(app) as url``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from sluicegate.server import ProxyApp, serve

__all__ = ["serving"]


@asynccontextmanager
async def serving(app: ProxyApp) -> AsyncIterator[str]:
    """Serve ``app`` on 127.0.0.1 (a free port) for the body; yields its base URL. On the way
    out the server shuts down gracefully (its ``graceful_shutdown_timeout``)."""
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(
            lambda task_status: serve(
                app, host="127.0.0.1", port=0, shutdown_trigger=stop.wait, task_status=task_status
            )
        )
        try:
            yield binds[0]
        finally:
            stop.set()
