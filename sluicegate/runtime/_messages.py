"""What the actors of one request pass each other (DESIGN §2).

::

    supervisor ─PreparedCall─► router ─Routed─► connector ─UpstreamOpened, bytes…, UpstreamDone─►
      transformer
      ─Routed, [StreamEvent…]…─► accountant ─…─► id encoder ─…─► sink

A failure travels the same way, as a :class:`Failure` behind the data before it. Event batches
are lists: all events decoded from one network read travel together, so each hop
costs per read, not per token.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeAlias

import attrs

from .._types import StreamEvent
from ..codecs.ids import DecodedId
from ..config import Deployment
from ..errors import SluicegateError

__all__ = [
    "Delivery",
    "EventItem",
    "Failure",
    "PreparedCall",
    "RawItem",
    "Routed",
    "UpstreamDone",
    "UpstreamOpened",
]


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
    owner: str = ""


@attrs.frozen(kw_only=True)
class Routed:
    """The router's decision for one attempt."""

    call: PreparedCall
    deployment: Deployment
    attempt: int = 0


@attrs.frozen(kw_only=True)
class UpstreamOpened:
    """The upstream accepted the request; its body follows as ``bytes`` items."""

    routed: Routed
    status: int
    headers: Mapping[str, str]


@attrs.frozen
class UpstreamDone:
    """The upstream body ended cleanly (a broken one ends with the connector's exception)."""


@attrs.frozen
class Failure:
    """The request failed upstream of here. It travels behind the data that preceded it, so
    nothing already read is lost; the sink raises it once everything before it is delivered."""

    error: SluicegateError


RawItem: TypeAlias = UpstreamOpened | bytes | UpstreamDone | Failure
EventItem: TypeAlias = Routed | list[StreamEvent] | Failure
#: What a streaming caller receives: event batches, or the error that ended it before any.
Delivery: TypeAlias = list[StreamEvent] | SluicegateError
