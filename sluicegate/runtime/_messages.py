"""What the actors of one request pass each other (docs/design.md §2).

::

    supervisor ─PreparedCall─► router ─Routed─► connector ─UpstreamOpened, bytes…─► transformer
      ─Batch…─► accountant ─Batch…─► id encoder ─Batch…─► sink

Every hop costs a channel send and a task switch per item, so items are few and fat: the first
chunk rides on ``UpstreamOpened``, a ``Batch`` carries every event decoded from one network read
together with the attempt it belongs to (no separate routing message), and the end of the body
is the channel's closure. A failure travels the same way, as a :class:`Failure` behind the data
before it: a channel that closes without one ended cleanly.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

import attrs

from .._types import StreamEvent
from ..codecs.ids import DecodedId
from ..codecs.openai_responses import Decoder
from ..config import Deployment
from ..errors import SluicegateError

if TYPE_CHECKING:
    from ..net._upstream_sockets import UpstreamSockets

__all__ = [
    "AttemptHealth",
    "Batch",
    "ConversationTurn",
    "Deliver",
    "Delivery",
    "EventItem",
    "Failure",
    "Pin",
    "Plan",
    "PreparedCall",
    "RawItem",
    "RawOutbox",
    "ResumePoint",
    "Routed",
    "Settlement",
    "UpstreamTiming",
    "UpstreamOpened",
]


@attrs.define(eq=False)
class UpstreamTiming:
    """When the upstream was working on a request (``trio.current_time()``): the connector
    fills it in, so a caller can tell the gateway's own time from the upstream's (the proxy's
    ``x-sluicegate-overhead-ms``)."""

    #: The first attempt was sent.
    started: float | None = None
    #: The upstream's body ended (or failed).
    ended: float | None = None

    @property
    def elapsed(self) -> float:
        if self.started is None or self.ended is None:
            return 0.0
        return self.ended - self.started


@attrs.frozen(kw_only=True)
class Pin:
    """State in a request that only one deployment's account can use (sealed reasoning, an
    item it stored): the request must go to that deployment, or to one on the same account.
    Strict: if it cannot take the request now, the caller is told so, naming ``param``."""

    deployment_id: str
    #: Where the state is in the request (``previous_response_id``, ``input[3].id``, ...).
    param: str
    #: How the deployment came by it, for messages ("created", "issued", "stored").
    verb: str = "issued"
    #: The error code when the deployment is gone (nothing else can read the state).
    gone_code: str = "invalid_encrypted_content"


@attrs.frozen(kw_only=True)
class ConversationTurn:
    """A response made in a conversation (``conversation`` on create; docs/conversations.md)."""

    #: The conversation's ID as the caller sent it (echoed on the Response).
    id: str
    #: The gateway holds it: its items were prepended (``history``), and the new input and
    #: the output are appended when the response ends well. False: a native upstream holds
    #: it and was sent its raw ID.
    held: bool
    #: The new input as the conversation keeps it (items with IDs).
    items: list[dict[str, Any]] = attrs.Factory(list)


@attrs.frozen(kw_only=True)
class PreparedCall:
    """A validated Responses request and the library-level options that came with it."""

    model: str
    #: The Responses parameters to send, as the caller gave them (validated).
    body: Mapping[str, Any]
    stream: bool
    #: The decoded ``previous_response_id``; pins the request to its deployment.
    previous: DecodedId | None = None
    #: The ``previous_response_id`` as the caller sent it (echoed back on the Response).
    previous_response_id: str | None = None
    extra_body: Mapping[str, Any] | None = None
    extra_headers: Mapping[str, str] = attrs.Factory(dict)
    extra_query: Mapping[str, str] = attrs.Factory(dict)
    #: Total seconds for this request (the SDK's ``timeout``); None: the deployment's.
    timeout: float | None = None
    #: Who the response belongs to (get/delete/cancel by anyone else is a 404).
    owner: str = ""
    #: False for ``store: false``: only the accounting is recorded.
    store: bool = True
    #: Run by the gateway, detached from the caller (``background: true``).
    background: bool = False
    #: The caller's ``spend_logs_metadata``.
    spend_metadata: Mapping[str, Any] = attrs.Factory(dict)
    #: The input as the store keeps it (items with IDs); empty with ``store: false``.
    input_items: list[dict[str, Any]] = attrs.Factory(list)
    #: A background response's ID, minted before any upstream answered; every event carries it.
    response_id: str | None = None
    #: The deployment chosen in advance (a background response's ID names it).
    deployment: Deployment | None = None
    #: A background response the caller streams: its events are stored for resume.
    replay: bool = False
    #: Filled in by the connector (the library option ``timing``).
    timing: UpstreamTiming | None = None
    #: The stored conversation of ``previous_response_id`` (its chain's input and output
    #: items, oldest first), when a bridged provider may continue it; None otherwise.
    history: list[dict[str, Any]] | None = None
    #: The caller's session (``session=``, the ``x-sluicegate-session`` header): with
    #: ``router_settings.session_affinity``, it stays on one deployment.
    session: str | None = None
    #: Top-level body fields the gateway does not know (still in ``body``): a native upstream
    #: receives them unchanged; a bridge refuses them, or drops them with ``drop_params``.
    unknown_params: tuple[str, ...] = ()
    #: Client headers from the proxy's allowlist (``OpenAI-Beta``, ...), lower-cased: sent to
    #: native upstreams only (a bridged provider has its own headers).
    client_headers: Mapping[str, str] = attrs.Factory(dict)
    #: Replayed state that pins the request to its deployment (see :class:`Pin`).
    pins: tuple[Pin, ...] = ()
    #: A native background response taken over after a restart: its upstream's stream is
    #: followed on from here instead of creating it (docs/background.md).
    resume: ResumePoint | None = None
    #: The ``conversation`` the response belongs to (see :class:`ConversationTurn`).
    conversation: ConversationTurn | None = None
    #: The upstream WebSockets of the proxy's WebSocket-mode client connection this call came
    #: on: a deployment that offers WebSocket mode gets it over one of them (docs/websocket.md).
    sockets: UpstreamSockets | None = attrs.field(default=None, repr=False)


@attrs.frozen(kw_only=True)
class ResumePoint:
    """Where to pick up a native upstream's background response: its raw ID, and the last
    sequence number recorded of its stream (-1: none; it is streamed again from its start)."""

    upstream_id: str
    after: int = -1


@attrs.frozen(kw_only=True)
class Routed:
    """The router's decision for one attempt."""

    call: PreparedCall
    deployment: Deployment
    attempt: int = 0
    #: The request's route plan: the connector reports each attempt's outcome to it and asks
    #: it for the next attempt after a failure (None: this attempt is the only one).
    plan: Plan | None = None


class Plan(Protocol):
    """A request's route plan as the connector uses it (the router's ``RoutePlan``)."""

    def health(self, deployment: Deployment) -> AttemptHealth:
        """The health that an attempt at ``deployment`` is reported to."""
        ...

    async def next(self, error: SluicegateError) -> Routed:
        """The attempt after ``error`` ended the last one (raises it when none is left)."""
        ...


class AttemptHealth(Protocol):
    """A deployment's health as the connector reports an attempt to it (the router's
    ``Health``): when it started, and how it ended."""

    def started(self, now: float) -> None: ...
    def answered(self, now: float, *, ttfb: float | None, total: float | None) -> None: ...
    def failed(self, now: float, error: SluicegateError) -> None: ...


@attrs.frozen(kw_only=True)
class UpstreamOpened:
    """The upstream accepted the request; ``body`` is its first chunk (for a non-streaming
    request, the whole body). Further chunks follow as ``bytes`` items."""

    routed: Routed
    status: int
    headers: Mapping[str, str]
    body: bytes
    #: The attempt's decoder (the wire format of its provider), built with its request.
    decoder: Decoder


@attrs.frozen
class Batch:
    """Canonical events decoded from one network read, and the attempt they belong to."""

    routed: Routed
    events: list[StreamEvent]
    #: Set by the accountant on the batch that ends the response: normalised usage and cost.
    settlement: Settlement | None = attrs.field(default=None, kw_only=True)
    #: Set by the ID encoder on the batch where the upstream first named the response: the
    #: ID it knows the response by.
    upstream_id: str | None = attrs.field(default=None, kw_only=True)


@attrs.frozen
class Settlement:
    """What a response cost: its normalised usage (None if the upstream reported none)."""

    usage: dict[str, Any] | None
    cost: float | None
    #: The usage is the gateway's estimate: the upstream never reported it.
    estimated: bool = False


@attrs.frozen
class Failure:
    """The request failed upstream of here. It travels behind the data that preceded it, so
    nothing already read is lost; the sink raises it once everything before it is delivered."""

    error: SluicegateError


RawItem: TypeAlias = UpstreamOpened | bytes | Failure
EventItem: TypeAlias = Batch | Failure
#: What a streaming caller receives: event batches, or the error that ended it before any.
Delivery: TypeAlias = list[StreamEvent] | SluicegateError


class Deliver(Protocol):
    """Where a request's deliveries go: the caller's memory channel, or a background
    response's broadcast to its followers."""

    async def send(self, value: Delivery, /) -> None: ...


class RawOutbox(Protocol):
    """Where the connector puts what it reads: a channel to the transformer's task (the
    unfused layout), or the fused chain of actors itself (docs/design.md §2.1)."""

    async def send(self, value: RawItem, /) -> None:
        """Hand ``value`` on; ``trio.BrokenResourceError`` when downstream stopped listening."""
        ...
