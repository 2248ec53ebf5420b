"""The gateway: the library's face, and all that the layers above it may use.

Layers import downward only (``tests/test_layering.py``)::

    server, the CLI  ->  _gateway  ->  actors  ->  net, runtime  ->  config, store, fake
        ->  codecs  ->  errors, _types, pricing

What lives above the gateway (the package's public API, the HTTP server, the CLI) imports it
from here, never from its modules nor from the layers below it.
"""

from __future__ import annotations

from ..actors._health import BreakerState as BreakerState
from ..actors._health import DeploymentStatistics as DeploymentStatistics
from ..actors._router import SESSION_HEADER as SESSION_HEADER
from ..net._upstream_sockets import UpstreamSockets as UpstreamSockets
from ..net._websocket import WebSocketClient as WebSocketClient
from ..net._websocket import WebSocketClosed as WebSocketClosed
from ..net._websocket import WebSocketRefused as WebSocketRefused
from ..net._websocket import connect_websocket as connect_websocket
from ..runtime._messages import UpstreamTiming as UpstreamTiming
from ..runtime._scopes import open_body_nursery as open_body_nursery
from ._facade import Gateway as Gateway
from ._facade import GatewayStatistics as GatewayStatistics
from ._open import SECRET_ORIGIN_VARIABLE as SECRET_ORIGIN_VARIABLE
from ._open import SECRET_VARIABLE as SECRET_VARIABLE
from ._open import aresponses as aresponses
from ._open import open_gateway as open_gateway
from ._open import responses as responses
from ._open import user_prices as user_prices
from ._params import FORBIDDEN_BODY_FIELDS as FORBIDDEN_BODY_FIELDS
from ._params import MAX_SAFE_INTEGER as MAX_SAFE_INTEGER
from ._params import checked_int as checked_int
from ._params import forbidden_field as forbidden_field
from ._streams import ResponseStream as ResponseStream
from ._websocket import WebSocketUpstream as WebSocketUpstream

__all__ = [
    "BreakerState",
    "DeploymentStatistics",
    "FORBIDDEN_BODY_FIELDS",
    "Gateway",
    "GatewayStatistics",
    "MAX_SAFE_INTEGER",
    "ResponseStream",
    "SECRET_ORIGIN_VARIABLE",
    "SECRET_VARIABLE",
    "SESSION_HEADER",
    "UpstreamSockets",
    "UpstreamTiming",
    "WebSocketClient",
    "WebSocketClosed",
    "WebSocketRefused",
    "WebSocketUpstream",
    "aresponses",
    "checked_int",
    "connect_websocket",
    "forbidden_field",
    "open_body_nursery",
    "open_gateway",
    "responses",
    "user_prices",
]
