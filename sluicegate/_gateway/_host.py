"""The library under asyncio: the trio engine as a guest on the host's event loop.

Theory of operation. The gateway is trio code, and an asyncio task cannot await trio code. So
under asyncio the engine runs as a trio *guest run* on the host's own loop
(``trio.lowlevel.start_guest_run``): trio's scheduler steps in the loop's callbacks, in the
loop's thread, and only its wait for I/O runs in a worker thread. Trio allows one run per
thread, so one guest run serves every gateway opened on a loop (:class:`GuestRun`): the first
``open_gateway`` starts it, the last one's exit ends it.

Crossing over, in both directions, stays in the one thread:

- asyncio to trio: :meth:`GuestRun.soon` queues a callback that the guest runs in its own
  context at its next step (``TrioToken.run_sync_soon``: one wake-up of the guest however many
  callbacks were queued before it steps). The callbacks only start tasks, cancel scopes and
  hand over values: they never block and never raise.
- trio to asyncio: a trio task sets the result of an asyncio future, which wakes the asyncio
  task that awaits it (a guest step is a loop callback, so this is the loop's own thread).

A call (:meth:`Host.call`) is a trio task in the gateway's calls nursery whose outcome lands
in an asyncio future. A context manager (``gw.stream(...)``, a file's content, the gateway
itself) is a *session* (:class:`HostedContext`): a trio task enters it, hands the asyncio side
what it yielded, pumps what the asyncio side reads from it (the next batch of events, the next
chunk: one ahead of the reader at most) until the asyncio side leaves, and leaves the way the
asyncio side did (its exception is raised into the trio context manager). A reader that keeps
up costs no crossing into trio per batch; one that stops holds the pump, and so the reads
behind it: backpressure is bounded as under trio (one batch more in hand).

Cancellation goes both ways. An asyncio task cancelled while it awaits a call or an entry
cancels that trio work's scope and waits for it to end, so what it recorded is recorded by
the time the cancellation reaches the caller; one cancelled while it waits for the pump
leaves the next batch in the slot, for whoever reads on, or for the block's exit (which
cancels the request). Closing the gateway cancels its calls nursery: every call and session
still running is cancelled in trio (each response is recorded with its end), and its asyncio
side gets :class:`~sluicegate.ServiceUnavailableError`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import weakref
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any, Final, Generic, ParamSpec, Protocol, TypeVar, cast

import attrs
import outcome
import sniffio
import trio

from ..errors import ServiceUnavailableError

__all__ = [
    "CrossChannel",
    "CrossReceiver",
    "CrossSender",
    "GuestRun",
    "Host",
    "HostReader",
    "HostedContext",
    "PumpedIterator",
    "Session",
    "gateway_closed",
    "hosted",
    "in_trio",
    "next_of",
]

logger = logging.getLogger("sluicegate")

T = TypeVar("T")
V = TypeVar("V")
P = ParamSpec("P")

#: The guest run of each asyncio loop that has one (weakly: a closed loop's entry goes away).
_RUNS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, GuestRun] = weakref.WeakKeyDictionary()


def in_trio() -> bool:
    """Whether the caller runs under trio (a trio task, the guest's included)."""
    try:
        return sniffio.current_async_library() == "trio"
    except sniffio.AsyncLibraryNotFoundError:
        return False


class _Closed(ServiceUnavailableError):
    """The gateway closed under a call, or before it (what its caller gets)."""


def _closed() -> ServiceUnavailableError:
    return _Closed("The gateway was closed while this call was running.")


def gateway_closed() -> ServiceUnavailableError:
    """The error of a call made on a gateway that has been closed (under trio or asyncio)."""
    return _Closed("The gateway is closed.")


def _cancellation(exc: BaseException) -> bool:
    """Whether ``exc`` is trio cancelling: ``Cancelled``, or a group of nothing else (a nursery
    whose body and children were all cancelled raises one)."""
    if isinstance(exc, trio.Cancelled):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(trio.Cancelled)[1] is None
    return False


def _deliver(future: asyncio.Future[T], result: outcome.Outcome[T]) -> None:
    """Hand ``result`` to the asyncio side, unless its awaiter has gone (cancelled)."""
    if future.done():
        return
    if isinstance(result, outcome.Error):
        future.set_exception(result.error)
    elif isinstance(result, outcome.Value):
        future.set_result(result.value)


@attrs.define(eq=False)
class GuestRun:
    """The trio guest run on one asyncio loop, shared by the gateways open on it."""

    loop: asyncio.AbstractEventLoop
    #: Set (to None or the error) once the run has started, or failed to.
    _ready: asyncio.Future[None]
    #: Set once the run has ended.
    _ended: asyncio.Future[None]
    _token: trio.lowlevel.TrioToken | None = None
    _nursery: trio.Nursery | None = None
    _last_left: trio.Event | None = None
    _users: int = 0
    #: The last user has left: the run is ending, and a new user waits for a new run.
    _ending: bool = False
    #: Callbacks queued for the guest's next step (:meth:`soon`).
    _queued: deque[Callable[[], object]] = attrs.Factory(deque)

    @classmethod
    async def join(cls) -> GuestRun:
        """The running loop's guest run, started if it has none; the caller is one of its
        users until it calls :meth:`leave`.

        Raises:
            RuntimeError: trio cannot run in this thread (it runs trio already).
        """
        loop = asyncio.get_running_loop()
        while True:
            run = _RUNS.get(loop)
            if run is None:
                run = cls(loop, loop.create_future(), loop.create_future())
                _RUNS[loop] = run
                run._start()
            elif run._ending:
                await asyncio.shield(run._ended)
                continue
            await asyncio.shield(run._ready)
            run._users += 1
            return run

    async def leave(self) -> None:
        """One user fewer. The last one ends the run, and waits until it has ended (so a new
        run, or trio's own, may start in this thread after it)."""
        self._users -= 1
        if self._users:
            return
        self._ending = True
        assert self._last_left is not None
        self.soon(self._last_left.set)
        await asyncio.shield(self._ended)

    @property
    def nursery(self) -> trio.Nursery:
        """The guest's root nursery, where the gateways' lifetimes run."""
        assert self._nursery is not None
        return self._nursery

    def soon(self, callback: Callable[[], object]) -> None:
        """Run ``callback`` in the guest's context at its next step (from the loop's thread).
        ``callback`` must neither block nor raise."""
        queued = self._queued
        queued.append(callback)
        if len(queued) == 1:
            assert self._token is not None
            self._token.run_sync_soon(self._drain)

    def _drain(self) -> None:
        queued = self._queued
        while queued:
            # Left in the queue while it runs: a callback queued meanwhile (a finalizer) sees
            # a non-empty queue and leaves the waking to this loop.
            queued[0]()
            queued.popleft()

    def check_loop(self) -> None:
        """Raises RuntimeError: the caller is not on this run's loop."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is not self.loop:
            raise RuntimeError(
                "This gateway was opened on another event loop; use it from the loop (and the "
                "thread) that opened it."
            )

    def _start(self) -> None:
        loop = self.loop
        try:
            trio.lowlevel.start_guest_run(
                self._main,
                run_sync_soon_threadsafe=loop.call_soon_threadsafe,
                run_sync_soon_not_threadsafe=loop.call_soon,
                done_callback=self._done,
                # asyncio owns the signal wake-up fd (loop.add_signal_handler): trio leaves it.
                host_uses_signal_set_wakeup_fd=True,
            )
        except RuntimeError as exc:
            del _RUNS[loop]
            self._ready.set_exception(exc)
            self._ended.set_result(None)

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._last_left = trio.Event()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._ready.set_result(None)
            await self._last_left.wait()
            # Every gateway has left: its session has ended, so the nursery is empty.

    def _done(self, result: outcome.Outcome[None]) -> None:
        if _RUNS.get(self.loop) is self:
            del _RUNS[self.loop]
        if isinstance(result, outcome.Error):
            # A bug of ours (the main task only waits): logged, as nobody awaits the run.
            logger.error("the trio guest run failed", exc_info=result.error)
            if not self._ready.done():
                self._ready.set_exception(result.error)
        self._ended.set_result(None)


@attrs.define(eq=False)
class _Call(Generic[T]):
    """One call from an asyncio awaiter, run as a trio task."""

    fn: Callable[[], Awaitable[T]]
    result: asyncio.Future[T]
    scope: trio.CancelScope | None = None
    cancelled: bool = False
    finished: bool = False
    #: Set when the trio work has ended, for an awaiter that was cancelled and waits for that.
    ended: asyncio.Future[None] | None = None

    def cancel(self) -> None:
        self.cancelled = True
        if self.scope is not None:
            self.scope.cancel()

    def end(self) -> None:
        self.finished = True
        if self.ended is not None and not self.ended.done():
            self.ended.set_result(None)

    async def run(self) -> None:
        """Run it in trio and hand its outcome over."""
        try:
            with trio.CancelScope() as scope:
                self.scope = scope
                if self.cancelled:
                    scope.cancel()
                try:
                    value = await self.fn()
                except BaseException as exc:  # raised in the asyncio task that awaits it
                    if _cancellation(exc):
                        raise
                    _deliver(self.result, outcome.Error(exc))
                else:
                    _deliver(self.result, outcome.Value(value))
        except BaseException as exc:
            if _cancellation(exc):
                # Not its own scope: the gateway is closing. The awaiter is told so.
                _deliver(self.result, outcome.Error(_closed()))
            raise
        finally:
            self.end()

    async def awaited(self, run: GuestRun) -> T:
        """Await the result from asyncio; cancelled, cancel the trio work and wait for it to
        end (a second cancellation stops the waiting, not the ending)."""
        try:
            return await self.result
        except asyncio.CancelledError:
            if not self.finished:
                self.ended = run.loop.create_future()
                run.soon(self.cancel)
                await asyncio.shield(self.ended)
            raise


@attrs.define(eq=False)
class Host:
    """A gateway opened under asyncio: its guest run, and the nursery its calls run in."""

    run: GuestRun
    _calls: trio.Nursery
    #: Set when the gateway starts closing: no new call starts.
    closing: bool = False

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Await ``fn()`` (trio code) from an asyncio task: its value, or its exception raised
        here. Cancelling the awaiting task cancels ``fn`` and waits for it to end.

        Raises:
            ServiceUnavailableError: the gateway closed before or while the call ran.
        """
        run = self.run
        run.check_loop()
        if self.closing:  # closed: its guest run may have ended too
            raise gateway_closed()
        call: _Call[T] = _Call(fn, run.loop.create_future())
        run.soon(functools.partial(self._start, call))
        return await call.awaited(run)

    def _start(self, call: _Call[Any]) -> None:
        if call.result.done():  # its awaiter was cancelled before it started
            call.end()
        elif self.closing:
            _deliver(call.result, outcome.Error(_closed()))
            call.end()
        else:
            self._calls.start_soon(call.run)

    def open(
        self,
        enter: Callable[[], AbstractAsyncContextManager[V]],
        twin: Callable[[Session[V], V], T],
        step: Callable[[V], Awaitable[Any]] | None = None,
    ) -> HostedContext[V, T]:
        """``async with`` (asyncio) over ``enter()`` (a trio context manager), held by a
        session in the calls nursery; it yields ``twin(session, value)`` for the value the
        trio one yields, which reads what ``step(value)`` gives with :meth:`Session.next`."""
        return HostedContext(self, self._calls, enter, twin, step=step)


class _HasHost(Protocol):
    @property
    def host(self) -> Host | None: ...
    @property
    def closed(self) -> bool: ...


def hosted(method: Callable[P, Awaitable[T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """A trio method of an object that may be opened under asyncio (the gateway): called
    under trio, or on an object with no host, it runs as it is; under asyncio, as a call in
    the object's host. On a closed one it raises ``ServiceUnavailableError``, under both.

    The wrapper stays a coroutine function (``inspect.iscoroutinefunction`` holds, as callers
    and frameworks check), at the price of one frame more per call under trio."""

    @functools.wraps(method)
    async def dispatch(*args: P.args, **kwargs: P.kwargs) -> T:
        owner = cast("_HasHost", args[0])
        if owner.closed:
            raise gateway_closed()
        host = owner.host
        if host is None or in_trio():
            return await method(*args, **kwargs)
        return await host.call(functools.partial(method, *args, **kwargs))

    return dispatch


@attrs.frozen
class _EndOf:
    """What a session's pump hands over at the end of its iterator: the exception to raise."""

    kind: type[trio.EndOfChannel | StopAsyncIteration]


@attrs.define(eq=False)
class _Leave:
    exc: BaseException | None


@attrs.define(eq=False)
class Session(Generic[V]):
    """A trio context manager held open for an asyncio caller.

    With a ``step`` (reading a stream, a file's content), the session's trio task pumps: it
    awaits ``step(value)`` and hands each outcome over, one ahead of the reader at most. The
    asyncio side takes it with :meth:`next`; only when the pump is waiting for room (the
    reader is slower) does taking one cross back into trio to let it go on, so a reader that
    keeps up costs no crossing per item, and one that stops holds the pump (and the reads
    behind it) still.
    """

    _run: GuestRun
    _enter: Callable[[], AbstractAsyncContextManager[V]]
    _step: Callable[[V], Awaitable[Any]] | None
    _entered: asyncio.Future[V]
    #: The outcome of leaving (or of failing to enter), always a result: never raised by
    #: awaiting it, so an asyncio CancelledError raised into the context can come back.
    _left: asyncio.Future[outcome.Outcome[None]]
    #: The pumped outcome the reader has not taken; the reader waiting for one.
    _slot: outcome.Outcome[Any] | None = None
    _reader: asyncio.Future[outcome.Outcome[Any]] | None = None
    #: The pump's last outcome (its end: an error, or the end of iteration), once handed.
    _final: outcome.Outcome[Any] | None = None
    #: Set by the reader when it takes from the slot while the pump waits for room.
    _room: trio.Event | None = None
    _leave: _Leave | None = None
    _wake: trio.Event | None = None
    _scope: trio.CancelScope | None = None
    _pumping: trio.CancelScope | None = None
    _cancelled: bool = False
    _gone: bool = False

    async def next(self) -> Any:
        """The next outcome of the pump, from asyncio: its value, or its error raised.

        Raises:
            ServiceUnavailableError: the session ended (its gateway closed) before one came.
        """
        run = self._run
        run.check_loop()
        result = self._slot
        if result is not None:
            self._slot = None
            room = self._room
            if room is not None:
                self._room = None
                run.soon(room.set)
        elif self._final is not None:
            result = self._final
        elif self._gone:
            raise _closed()
        else:
            # Cancelled, the reader leaves the pump's next outcome in the slot: nothing lost.
            reader = self._reader = run.loop.create_future()
            result = await reader
        if isinstance(result, outcome.Error):
            raise result.error
        assert isinstance(result, outcome.Value)
        if isinstance(result.value, _EndOf):
            raise result.value.kind()  # a fresh one each time, held by no frame
        return result.value

    #: A session pumping a stream is that stream's source (``_streams.stream_twin``).
    receive = next

    def _hand(self, result: outcome.Outcome[Any]) -> None:
        if not isinstance(result, outcome.Value) or isinstance(result.value, _EndOf):
            self._final = result
        reader, self._reader = self._reader, None
        if reader is not None and not reader.done():
            reader.set_result(result)
        else:
            self._slot = result

    def _post_leave(self, leave: _Leave) -> None:
        if self._gone:
            return
        self._leave = leave
        if self._pumping is not None:
            self._pumping.cancel()
        if self._wake is not None:
            self._wake.set()

    def _cancel(self) -> None:
        self._cancelled = True
        if self._scope is not None:
            self._scope.cancel()

    async def leave(self, exc: BaseException | None) -> None:
        """Leave the trio context manager (raising ``exc`` into it, if given) and wait until
        it is left.

        Raises:
            BaseException: what leaving raised, if not ``exc`` itself.
        """
        if not self._gone:
            self._run.soon(functools.partial(self._post_leave, _Leave(exc)))
        left = await asyncio.shield(self._left)
        if isinstance(left, outcome.Error) and left.error is not exc:
            if exc is not None and isinstance(left.error, _Closed):
                return  # the gateway closed under it: what the caller raised says so already
            raise left.error

    async def abandon(self) -> None:
        """Stop entering (the asyncio side was cancelled) and wait until it has stopped."""
        self._run.soon(self._cancel)
        await asyncio.shield(self._left)

    async def hold(self) -> None:
        """The session's trio task."""
        result: outcome.Outcome[None] = outcome.Value(None)
        try:
            with trio.CancelScope() as scope:
                self._scope = scope
                if self._cancelled:
                    scope.cancel()
                async with self._enter() as value:
                    _deliver(self._entered, outcome.Value(value))
                    if self._step is not None:
                        with trio.CancelScope() as self._pumping:
                            await self._pump(self._step, value)
                    while self._leave is None:
                        self._wake = trio.Event()
                        await self._wake.wait()
                    if self._leave.exc is not None:
                        raise self._leave.exc
        except BaseException as exc:
            if _cancellation(exc):  # not its own scope: the gateway is closing
                result = outcome.Error(_closed())
                raise
            result = outcome.Error(exc)  # entering or leaving failed: the asyncio side's
        finally:
            self._end(result)

    async def _pump(self, step: Callable[[V], Awaitable[Any]], value: V) -> None:
        while True:
            while self._slot is not None:
                self._room = room = trio.Event()
                await room.wait()
            try:
                result: outcome.Outcome[Any] = outcome.Value(await step(value))
            except (trio.EndOfChannel, StopAsyncIteration) as end:
                # The end as a marker: an exception kept for the reader would hold the frames
                # of its traceback, and they it, a cycle per stream for the collector.
                result = outcome.Value(_EndOf(type(end)))
            except BaseException as exc:
                if _cancellation(exc):
                    raise
                result = outcome.Error(exc)
            self._hand(result)
            if isinstance(result, outcome.Error):
                return

    def _end(self, result: outcome.Outcome[None]) -> None:
        self._gone = True
        if not self._entered.done():
            if isinstance(result, outcome.Error):
                self._entered.set_exception(result.error)
            else:  # entering was abandoned: its awaiter has gone
                self._entered.cancel()
        self._left.set_result(result)
        reader, self._reader = self._reader, None
        if reader is not None and not reader.done():
            reader.set_result(outcome.Error(_closed()))


class HostedContext(AbstractAsyncContextManager[T], Generic[V, T]):
    """``async with`` under asyncio over a trio context manager (see the module docstring)."""

    def __init__(
        self,
        host: Host | None,
        nursery: trio.Nursery,
        enter: Callable[[], AbstractAsyncContextManager[V]],
        twin: Callable[[Session[V], V], T],
        *,
        step: Callable[[V], Awaitable[Any]] | None = None,
        run: GuestRun | None = None,
    ) -> None:
        self._host = host
        self._nursery = nursery
        self._enter = enter
        self._twin = twin
        self._step = step
        self._run = run if host is None else host.run
        self._session: Session[V] | None = None

    async def __aenter__(self) -> T:
        run = self._run
        assert run is not None
        run.check_loop()
        if self._host is not None and self._host.closing:
            raise gateway_closed()
        loop = run.loop
        session = Session(run, self._enter, self._step, loop.create_future(), loop.create_future())
        self._session = session
        run.soon(functools.partial(self._start, session))
        try:
            value = await asyncio.shield(session._entered)
        except asyncio.CancelledError:
            if session._entered.done() and not session._entered.cancelled():
                if session._entered.exception() is None:  # entered: leave as cancelled
                    await session.leave(asyncio.CancelledError())
            else:
                await session.abandon()
            raise
        return self._twin(session, value)

    def _start(self, session: Session[V]) -> None:
        if self._host is not None and self._host.closing:
            session._end(outcome.Error(_closed()))
        else:
            self._nursery.start_soon(session.hold)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._session is not None
        await self._session.leave(exc)


class _End:
    """What a :class:`CrossChannel`'s closed sender hands a waiting asyncio reader."""


_END: Final = _End()


@attrs.define(eq=False)
class CrossChannel(Generic[T]):
    """A one-slot channel from a trio sender (a stream's pipeline, in the guest) to a reader on
    either side: trio (:meth:`receive`, to prime the stream) or asyncio
    (:meth:`receive_from_host`, the caller reading on). Both ends in one object, for
    ``open_response_stream``'s channel factory.

    The sender hands a batch straight to an asyncio reader that waits for one (no trio task in
    between), else leaves it in the slot, else waits for room like a memory channel's ``send``
    (and, like it, raises ``Cancelled`` having delivered nothing). Only a reader that takes
    from the slot while the sender waits for room crosses into trio, to wake it.
    """

    _run: GuestRun
    _slot: T | None = None
    _full: bool = False
    #: The asyncio reader waiting for a value (or :data:`_END`); the trio reader (priming)
    #: waiting for one.
    _reader: asyncio.Future[T | _End] | None = None
    _filled: trio.Event | None = None
    #: The sender waiting for room.
    _room: trio.Event | None = None
    _closed: bool = False
    _receiver_closed: bool = False

    # -- the sender (trio) ---------------------------------------------------------------

    async def send(self, value: T, /) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        blocked = False
        while self._full:
            if self._receiver_closed:
                raise trio.BrokenResourceError
            blocked = True
            self._room = room = trio.Event()
            await room.wait()
        if self._receiver_closed:
            raise trio.BrokenResourceError
        reader, self._reader = self._reader, None
        if reader is not None and not reader.done():
            reader.set_result(value)
        else:  # no reader, or one cancelled while it waited: the value waits for the next
            self._slot = value
            self._full = True
            if self._filled is not None:
                self._filled.set()
        if not blocked:
            await trio.lowlevel.cancel_shielded_checkpoint()

    def close_sender(self) -> None:
        if self._closed:
            return
        self._closed = True
        reader, self._reader = self._reader, None
        if reader is not None and not reader.done():
            # A marker, not an exception: an exception kept in the future would hold its
            # traceback's frames, and they the future, a cycle only the collector frees.
            reader.set_result(_END)
        if self._filled is not None:
            self._filled.set()

    def close_receiver(self) -> None:
        self._receiver_closed = True
        if self._room is not None:
            self._room.set()

    def ends(self) -> tuple[CrossSender[T], CrossReceiver[T]]:
        """Its two ends, each closed by its own ``with``: ``open_response_stream``'s channel."""
        return CrossSender(self), CrossReceiver(self)

    # -- the readers ---------------------------------------------------------------------

    async def receive(self) -> T:
        """Trio's read (the stream's priming)."""
        await trio.lowlevel.checkpoint_if_cancelled()
        while not self._full:
            if self._closed:
                raise trio.EndOfChannel
            self._filled = filled = trio.Event()
            await filled.wait()
        return self._take(self._set_room)

    def receive_nowait(self) -> T:
        if self._full:
            return self._take(self._set_room)
        if self._closed:
            raise trio.EndOfChannel
        raise trio.WouldBlock

    async def receive_from_host(self) -> T:
        """The asyncio reader's read. Cancelled, it leaves the next value in the slot."""
        if self._full:
            return self._take(self._run.soon)
        if self._closed:
            raise trio.EndOfChannel
        self._run.check_loop()
        reader: asyncio.Future[T | _End] = self._run.loop.create_future()
        self._reader = reader
        value = await reader
        if isinstance(value, _End):
            raise trio.EndOfChannel
        return value

    def _take(self, wake: Callable[[Callable[[], object]], object]) -> T:
        value = self._slot
        self._slot = None
        self._full = False
        room, self._room = self._room, None
        if room is not None:
            wake(room.set)
        return value  # type: ignore[return-value]

    @staticmethod
    def _set_room(set_: Callable[[], object]) -> None:
        set_()


@attrs.frozen
class CrossSender(Generic[T]):
    """The sending end of a :class:`CrossChannel` (a memory channel's shape)."""

    channel: CrossChannel[T]

    async def send(self, value: T, /) -> None:
        await self.channel.send(value)

    def __enter__(self) -> CrossSender[T]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.channel.close_sender()


@attrs.frozen
class CrossReceiver(Generic[T]):
    """The receiving end of a :class:`CrossChannel`, read from trio (a memory channel's shape)."""

    channel: CrossChannel[T]

    async def receive(self) -> T:
        return await self.channel.receive()

    def receive_nowait(self) -> T:
        return self.channel.receive_nowait()

    def __enter__(self) -> CrossReceiver[T]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.channel.close_receiver()


class HostReader(Generic[T]):
    """A :class:`CrossChannel` read from asyncio, in a memory channel's shape (a stream's
    source)."""

    __slots__ = ("receive",)

    def __init__(self, channel: CrossChannel[T]) -> None:
        self.receive = channel.receive_from_host


@attrs.define(eq=False)
class PumpedIterator(Generic[T]):
    """An async iterator (asyncio) over one a session holds and pumps (trio): give its
    session ``next_of`` as the step."""

    _session: Session[AsyncIterator[T]]

    def __aiter__(self) -> PumpedIterator[T]:
        return self

    async def __anext__(self) -> T:
        item: T = await self._session.next()
        return item


async def next_of(iterator: AsyncIterator[T]) -> T:
    """The step of a session that pumps an async iterator."""
    return await iterator.__anext__()
