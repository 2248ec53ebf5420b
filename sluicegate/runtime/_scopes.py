"""Nursery glue for context managers that hand their caller a body to run."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

__all__ = ["open_body_nursery"]


@asynccontextmanager
async def open_body_nursery() -> AsyncIterator[trio.Nursery]:
    """A nursery around a caller's ``async with`` body, cancelled when the body ends.

    The body's own exception comes out as itself: re-raised after the nursery closed, rather
    than inside the ExceptionGroup a strict nursery would wrap it in. So ``pytest.raises`` and
    ``except NotFoundError`` around ``open_gateway``/``stream`` see what the caller raised.
    """
    body_error: BaseException | None = None
    async with trio.open_nursery() as nursery:
        try:
            yield nursery
        except GeneratorExit:
            raise
        except BaseException as exc:  # re-raised below, outside the nursery
            body_error = exc
        nursery.cancel_scope.cancel()
    if body_error is not None:
        raise body_error
