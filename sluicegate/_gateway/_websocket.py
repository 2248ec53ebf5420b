"""Where a WebSocket-mode message the gateway does not run itself may be relayed
(docs/websocket.md): the upstream WebSocket of the deployment a stored response was made on,
when that deployment is native and offers WebSocket mode (``litellm_params.websocket``).

The gateway runs ``response.create`` itself, through the pipeline (over the client
connection's upstream socket at such a deployment: ``actors/_ws_attempt.py``); any other
message (``response.steer``…) names the response it is about by ``previous_response_id``. That
ID is the caller's own (ownership is checked as for a ``GET``), and it is translated to the
upstream's ID before the message is relayed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import attrs

from ..codecs._registry import NATIVE_PROVIDERS
from ..codecs.openai_responses import api_url
from ..config import is_in_process_fake

if TYPE_CHECKING:
    from ._pipeline import Pipeline

__all__ = ["WebSocketUpstream", "websocket_upstream"]


@attrs.frozen(kw_only=True)
class WebSocketUpstream:
    """An upstream WebSocket-mode endpoint, and the message to send it."""

    deployment_id: str
    #: ``ws://`` or ``wss://`` …``/responses``.
    url: str
    headers: tuple[tuple[str, str], ...] = attrs.field(repr=False)
    #: The client's message with its ``previous_response_id`` made the upstream's.
    message: Mapping[str, Any]


def websocket_upstream(
    pipeline: Pipeline, message: Mapping[str, Any], response_id: str
) -> WebSocketUpstream | None:
    """The upstream a message about ``response_id`` (already checked to be the caller's) is
    relayed to, or None when its deployment does not offer WebSocket mode."""
    decoded = pipeline.ids.decode(response_id, param="previous_response_id")
    deployment = pipeline.router.deployment(decoded.deployment_id)
    if (
        deployment is None
        or not deployment.websocket
        or deployment.provider not in NATIVE_PROVIDERS
        or is_in_process_fake(deployment)
    ):
        return None
    url, query = api_url(deployment, "responses")
    if query:
        url += "?" + "&".join(f"{k}={v}" for k, v in query.items())
    scheme, sep, rest = url.partition("://")
    url = ("wss" if scheme == "https" else "ws") + sep + rest
    headers: dict[str, str] = {}
    if deployment.api_key is not None:
        if deployment.provider == "azure":
            headers["api-key"] = deployment.api_key.reveal()
        else:
            headers["authorization"] = f"Bearer {deployment.api_key.reveal()}"
    headers.update(deployment.extra_headers)
    return WebSocketUpstream(
        deployment_id=deployment.id,
        url=url,
        headers=tuple(headers.items()),
        message={**message, "previous_response_id": decoded.raw_id},
    )
