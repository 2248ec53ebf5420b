"""The one boundary between sluicegate and Redis (coredis): the only module that imports it.

Every call runs under a deadline, and every way Redis can fail it (refused, reset, timed out,
an error reply) becomes :class:`RedisUnreachable` here, so nothing above sees a coredis
exception. The link also knows whether Redis is up: the first failure marks it down (one
warning), calls fail fast while it is down, and :meth:`RedisLink.probe_forever` pings it with
a bounded backoff until it answers again (one info line).
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final
from urllib.parse import urlsplit

import anyio
import attrs
import coredis
import coredis.commands
import coredis.connection
import coredis.exceptions
import coredis.retry
import trio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ._interface import RedisUnreachable

__all__ = ["RedisLink", "open_link"]

logger = logging.getLogger("sluicegate")

#: The first probe of a Redis that went down waits this long (seconds); each failed probe
#: doubles it, up to PROBE_MAX.
PROBE_FIRST: Final = 0.1
PROBE_MAX: Final = 5.0

#: What a failing Redis raises through coredis (it wraps most transport errors in its
#: ConnectionError; the rest can surface from a connection torn down mid-call).
_FAILURES: Final = (
    coredis.exceptions.RedisError,
    OSError,
    TimeoutError,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    anyio.EndOfStream,
)


@attrs.define(eq=False)
class RedisLink:
    """A Redis client that fails fast and knows whether Redis is up.

    Args:
        client: an entered coredis client.
        where: Redis's address for log lines (no password).
        timeout: seconds a call may take before Redis counts as down.
    """

    _client: coredis.Redis[bytes]
    _where: str
    _timeout: float
    _up: bool = attrs.field(default=False, init=False)
    _outages: int = attrs.field(default=0, init=False)
    #: Set while Redis is down (the prober waits on it); replaced when it comes back.
    _down: trio.Event = attrs.field(factory=trio.Event, init=False)
    #: Set while Redis is up (the queue's flusher waits on it); replaced when it goes down.
    _back: trio.Event = attrs.field(factory=trio.Event, init=False)
    _scripts: dict[str, coredis.commands.Script[bytes]] = attrs.field(
        factory=dict, init=False, repr=False
    )

    @property
    def up(self) -> bool:
        return self._up

    @property
    def outages(self) -> int:
        return self._outages

    async def run(self, script: str, keys: Sequence[str], args: Sequence[str | int]) -> Any:
        """Run a Lua script (``EVALSHA``; loaded on first use and after a Redis restart).

        Raises:
            RedisUnreachable: Redis is down, or failed or timed out this call (it is marked
                down).
        """
        if not self._up:
            await trio.lowlevel.checkpoint()
            raise RedisUnreachable(f"Redis at {self._where} is down")
        registered = self._scripts.get(script)
        if registered is None:
            registered = self._scripts[script] = self._client.register_script(script)
        try:
            with trio.move_on_after(self._timeout):
                return await registered(keys=list(keys), args=list(args))
        except _FAILURES as exc:
            self._mark_down(_reason(exc))
            raise RedisUnreachable(_reason(exc)) from exc
        failure = f"no answer within {self._timeout:g}s"
        self._mark_down(failure)
        raise RedisUnreachable(failure)

    async def ping(self) -> str | None:
        """Why Redis does not answer a ``PING`` within the deadline; None: it does. The state
        is left as it was."""
        try:
            with trio.move_on_after(self._timeout):
                await self._client.ping()
                return None
        except _FAILURES as exc:
            return _reason(exc)
        return f"no answer within {self._timeout:g}s"

    async def check(self) -> None:
        """Up or down as one ``PING`` finds Redis (at open)."""
        failure = await self.ping()
        if failure is None:
            self._mark_up()
        else:
            self._mark_down(failure)

    def _mark_down(self, reason: str) -> None:
        if not self._up and self._outages:
            return
        self._up = False
        self._outages += 1
        self._back = trio.Event()
        self._down.set()
        logger.warning(
            "Redis at %s is unreachable; limits are counted per instance until it returns (%s)",
            self._where,
            reason,
        )

    def _mark_up(self) -> None:
        if self._up:
            return
        self._up = True
        self._down = trio.Event()
        self._back.set()
        if self._outages:
            logger.info("Redis at %s answers again; limits are shared again", self._where)

    async def wait_up(self) -> None:
        await self._back.wait()

    async def probe_forever(self) -> None:
        """The service task that brings the link back: while Redis is down, ping it (first
        after PROBE_FIRST seconds, then doubling, at most PROBE_MAX apart) until it answers."""
        while True:
            await self._down.wait()
            delay = PROBE_FIRST
            while not self._up:
                await trio.sleep(delay)
                if await self.ping() is None:
                    self._mark_up()
                else:
                    delay = min(delay * 2, PROBE_MAX)


def _closing_streams(
    base: type[coredis.connection.BaseConnection],
) -> type[coredis.connection.BaseConnection]:
    """``base``, closing its memory streams when it ends: a coredis connection makes them
    when it is created and closes them only once connected, so every failed attempt (each
    probe of a Redis that is down) would leave them to the garbage collector's
    ResourceWarning."""

    class ClosingStreams(base):  # type: ignore[valid-type,misc]
        async def run(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
            try:
                await super().run(task_status=task_status)
            finally:
                for value in vars(self).values():
                    if isinstance(value, MemoryObjectSendStream | MemoryObjectReceiveStream):
                        value.close()

    return ClosingStreams


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _redacted(url: str) -> str:
    """The URL without its credentials or query (what log lines show)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"


@asynccontextmanager
async def open_link(
    url: str, *, password: str | None, call_timeout: float
) -> AsyncIterator[RedisLink]:
    """A link to the Redis at ``url``, up if it answers a first ``PING``, else down (and
    logged once); opening never fails because Redis is unreachable."""
    options: dict[str, Any] = {}
    if password is not None:
        options["password"] = password
    client: coredis.Redis[bytes] = coredis.Redis.from_url(
        url,
        decode_responses=False,
        # One attempt: a failure falls back at once, and the prober retries.
        retry_policy=coredis.retry.NoRetryPolicy(),
        connect_timeout=call_timeout if math.isfinite(call_timeout) else None,
        **options,
    )
    pool = client.connection_pool
    pool.connection_class = _closing_streams(pool.connection_class)
    async with client:
        link = RedisLink(client, _redacted(url), call_timeout)
        await link.check()
        yield link
